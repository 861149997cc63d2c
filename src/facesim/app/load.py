"""Which model a name means, and loading it: 'best' (of the models the pipeline trained, the lowest committed
cross-validation EER: `best_model`), '<backbone>-<loss>' (`models/<name>.onnx`, else `models/<name>.pt` with the
threshold from `reports/metrics/<name>.json`), 'contrastive' and 'triplet' (the compact ones), a model file (.onnx
or .pt) or an MLflow model URI (`load_model`). `facesim.app.api` uses them and lists them.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from pathlib import Path

from facesim.app.repo import find_root, missing_output
from facesim.core.inference import FaceModel, calibrated_source, from_checkpoint, from_onnx
from facesim.core.model_files import MODELS, ModelError
from facesim.core.paths import show_path


BEST = "best"  # the model name that picks the most accurate model the pipeline trained (`best_model`)


PIPELINE_MODEL = re.compile(rf"[A-Za-z0-9_]+-({'|'.join(MODELS)})")  # <backbone>-<loss>, as dvc.yaml names them


MODEL_SUFFIXES = (".onnx", ".pt")  # the model files: the evaluate stage's (onnxruntime), the train stage's (torch)


def is_mlflow_uri(spec: str) -> bool:
    return spec.startswith(("models:/", "runs:/")) or "://" in spec


def best_model(root: str | os.PathLike | None = None) -> tuple[str, float]:
    """(name, CV EER) of the most accurate model the pipeline trained: of the `models/<backbone>-<loss>.onnx`
    or `.pt` present, the one whose committed cross-validation summary (`reports/cv/<backbone>/<loss>.json`)
    has the lowest mean EER on people never seen in training."""
    base = find_root(root)
    scored = []
    for stem in sorted({path.stem for suffix in MODEL_SUFFIXES for path in (base / "models").glob(f"*{suffix}")}):
        if not PIPELINE_MODEL.fullmatch(stem):
            continue
        backbone, loss = stem.rsplit("-", 1)
        summary = base / "reports" / "cv" / backbone / f"{loss}.json"
        try:
            eer = float(json.loads(summary.read_text(encoding="utf-8"))["eer"])
        except (OSError, ValueError, KeyError, TypeError):
            continue  # a model without a cross-validation summary is not ranked
        if math.isfinite(eer):
            scored.append((eer, stem))
    if not scored:
        raise ModelError(f"{show_path(base)}: no trained model with a cross-validation summary (models/<backbone>-"
                         "<loss>.onnx or .pt and reports/cv/<backbone>/<loss>.json) to pick the most accurate from; run "
                         "`dvc repro` (and `dvc repro cv/dvc.yaml`), or name one with --model, e.g. --model "
                         "compact-triplet")
    eer, name = min(scored)
    return name, eer


def load_model(
    model: str | os.PathLike | FaceModel = BEST,
    *,
    root: str | os.PathLike | None = None,
    threshold: float | None = None,
) -> FaceModel:
    """Load a model by name ('best', '<backbone>-<loss>', 'contrastive', 'triplet'), model file path (.onnx or .pt)
    or MLflow model URI.

    A name reads `<root>/models/<name>.onnx` (on onnxruntime, threshold from its metadata) where the export
    stage wrote it, else `<root>/models/<name>.pt` (on torch) and the threshold from
    `<root>/reports/metrics/<name>.json` ('best': the name `best_model` picks; 'contrastive' and 'triplet':
    'compact-contrastive', 'compact-triplet'); a .onnx path carries its threshold, a .pt path reads it from a
    `.json` of the same stem beside it; an MLflow URI loads the pyfunc that the evaluate stage registered.
    `threshold` overrides the saved one.
    """
    if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, (int, float))
                                  or not math.isfinite(threshold) or threshold <= 0):
        raise ModelError(f"--threshold (threshold=): must be a finite distance above 0, got {threshold!r}; "
                         "pass e.g. --threshold 0.9, or leave it out for the calibrated one")
    if isinstance(model, FaceModel):
        if threshold is None:
            return model
        return dataclasses.replace(model, threshold=float(threshold), threshold_source="given")
    spec = os.fspath(model)
    if spec == BEST:
        name, eer = best_model(root)
        chosen = _pipeline_model(name, find_root(root), threshold)
        return dataclasses.replace(chosen, name=f"{name} (the most accurate by cross-validation EER, {eer:.2%})")
    if spec in MODELS:
        spec = f"compact-{spec}"
    if PIPELINE_MODEL.fullmatch(spec):
        return _pipeline_model(spec, find_root(root), threshold)
    if is_mlflow_uri(spec):
        return _from_mlflow(spec, root, threshold)
    path = Path(spec)
    if not path.exists() and path.suffix not in MODEL_SUFFIXES:
        raise ModelError(f"{spec}: not a model name (best, <backbone>-<loss> such as dlib-triplet, {', '.join(MODELS)}), "
                         "model file (.onnx, .pt) or MLflow model URI; pass one of those, e.g. --model compact-triplet, "
                         "--model my.onnx or --model models:/facesim-dlib-triplet@champion")
    if not path.is_file():
        kind = "ONNX model" if path.suffix == ".onnx" else "checkpoint"
        raise FileNotFoundError(f"{spec}: {kind} not found; check the path, or name a model the pipeline "
                                "trained (best, or <backbone>-<loss> such as dlib-triplet)")
    if path.suffix == ".onnx":
        return from_onnx(path, threshold, name=spec)
    return from_checkpoint(path, path.with_suffix(".json"), threshold, name=spec)


def _pipeline_model(name: str, base: Path, threshold: float | None) -> FaceModel:
    """The model the pipeline trained: models/<name>.onnx where the evaluate stage wrote it (its threshold in it),
    else models/<name>.pt with the threshold from reports/metrics/<name>.json; a missing file is explained by
    what dvc.lock records of it."""
    exported = base / "models" / f"{name}.onnx"
    if exported.is_file():
        return from_onnx(exported, threshold, name=name)
    checkpoint, metrics = f"models/{name}.pt", f"reports/metrics/{name}.json"
    if not (base / checkpoint).is_file():
        what, problem, todo = missing_output(base, checkpoint, "checkpoint", "train")
        raise FileNotFoundError(f"{what}: {problem}; {todo}")
    model = from_checkpoint(base / checkpoint, base / metrics, threshold, name=name)
    if model.threshold is None and not (base / metrics).is_file():
        what, problem, todo = missing_output(base, metrics, "metrics file", "evaluate")
        model.missing_threshold = (f"{what}: {problem}, so {name} has no distance threshold; {todo}, "
                                   "or pass one with --threshold (threshold= in Python)")
    return model


def _from_mlflow(uri: str, root: str | os.PathLike | None, threshold: float | None) -> FaceModel:
    import mlflow  # imported here: slow, and needed only for MLflow URIs

    from facesim.mlops.pyfunc import FaceVerifier
    from facesim.mlops.tracking import tracking_uri

    if not mlflow.is_tracking_uri_set():
        try:
            mlflow.set_tracking_uri(tracking_uri(find_root(root)))  # the repository's own store
        except FileNotFoundError:
            pass  # outside the repository: MLflow's defaults
    try:
        loaded = mlflow.pyfunc.load_model(uri).unwrap_python_model()
    except Exception as exc:  # MLflow raises many types; all mean the model is not there
        raise ModelError(f"{uri}: cannot load the MLflow model ({exc}); check the registered name and its alias "
                         "or version, and the store it is in (MLFLOW_TRACKING_URI, else the repository's "
                         "mlflow.db)") from None
    if not isinstance(loaded, FaceVerifier):
        raise ModelError(f"{uri}: not a facesim model (a {type(loaded).__name__}); pass one the evaluate stage "
                         "registered, e.g. models:/facesim-dlib-triplet@champion")
    source = calibrated_source(f"logged with {uri}")
    return load_model(dataclasses.replace(loaded.model, name=uri, threshold_source=source), threshold=threshold)
