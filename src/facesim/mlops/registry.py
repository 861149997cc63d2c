"""The model registry: each evaluated model as a served pair verifier, and the champion rule.

The evaluate stage calls `register_model` with its run, once with the checkpoint and once with the
ONNX export: the pair-verifying pyfunc
(`facesim.mlops.pyfunc.FaceVerifier`) is logged into the run and the model goes
into the registry as `facesim-<model>` (torch) or `facesim-<model>-onnx`
(onnxruntime, no torch) with the threshold and the metrics as version tags, and the alias `champion` moves to the new version
only when its validation metrics are at least as good as the champion's:
higher validation ROC AUC wins, validation accuracy breaks a tie, and a full
tie goes to the newer version.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import mlflow.pyfunc
import pandas as pd

from facesim.mlops.pyfunc import FaceVerifier, encode_image
from facesim.mlops.runs import Run

REGISTERED_PREFIX = "facesim-"
ONNX_SUFFIX = "-onnx"  # the registered name of a model's ONNX export: facesim-<model>-onnx
CHAMPION = "champion"
# The champion rule compares these validation metrics in order; higher is better for each.
CHAMPION_METRICS = ("validation.roc_auc", "validation.accuracy")
# Registry tags of a version: the threshold and these metrics of each pair set.
TAGGED_SETS = ("validation", "test", "all_pairs")
TAGGED_METRICS = ("accuracy", "far", "frr", "precision", "recall", "f1", "roc_auc", "eer", "tar_at_far_1e-2",
                  "tar_at_far_1e-3")


def registered_name(model_name: str, onnx: bool = False) -> str:
    return f"{REGISTERED_PREFIX}{model_name}{ONNX_SUFFIX if onnx else ''}"


# ---- registry ---------------------------------------------------------------------------------------


def _nested(metrics: Mapping[str, Any], dotted: str) -> Any:
    value: Any = metrics
    for part in dotted.split("."):
        value = value[part]
    return value


def version_tags(metrics: Mapping[str, Any]) -> dict[str, str]:
    """Registry tags of a version: threshold, kept epoch (keep: best or last) and the pair metrics, numbers as exact text."""
    tags = {"threshold": repr(float(metrics["threshold"]))}
    if "kept_epoch" in metrics:
        tags["kept_epoch"] = str(metrics["kept_epoch"])
    for pair_set in TAGGED_SETS:
        for name in TAGGED_METRICS:
            if name in metrics.get(pair_set, {}):
                tags[f"{pair_set}.{name}"] = repr(float(metrics[pair_set][name]))
    for name, value in metrics.get("retrieval", {}).items():
        tags[f"retrieval.{name}"] = repr(float(value))
    return tags


def champion_key(tags: Mapping[str, str]) -> tuple[float, ...] | None:
    """The champion rule's metrics from version tags, in order; None when any is missing."""
    try:
        return tuple(float(tags[name]) for name in CHAMPION_METRICS)
    except (KeyError, ValueError):
        return None


def should_promote(candidate: Mapping[str, str], champion: Mapping[str, str] | None) -> bool:
    """The champion rule: the candidate takes the alias when its validation metrics are at least as good.

    Higher validation ROC AUC wins; on equal AUC higher validation accuracy wins; a full tie
    goes to the candidate (the newer version). A champion without these tags is replaced.
    """
    new = champion_key(candidate)
    if new is None:
        raise ValueError(f"a candidate version needs the tags {', '.join(CHAMPION_METRICS)}")
    old = None if champion is None else champion_key(champion)
    return old is None or new >= old


@dataclass(frozen=True)
class Registered:
    name: str  # registered model name, e.g. facesim-contrastive
    version: str
    champion: bool  # whether the alias moved to this version
    previous_champion: str | None  # the version that held the alias before, if any


def promote_if_better(client, name: str, version: str) -> Registered:
    """Move `champion` to `version` when the champion rule says so."""
    from mlflow.exceptions import MlflowException

    candidate = client.get_model_version(name, version)
    try:
        current = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        current = None  # no champion yet
    promote = should_promote(candidate.tags, None if current is None else current.tags)
    if promote:
        client.set_registered_model_alias(name, CHAMPION, version)
    return Registered(name=name, version=str(version), champion=promote,
                      previous_champion=None if current is None else str(current.version))


def log_and_register(
    model_name: str,
    model_file: str | os.PathLike,
    metrics: Mapping[str, Any],
    example_pair: tuple[str | os.PathLike, str | os.PathLike] | None = None,
) -> Registered:
    """Log a FaceVerifier of `model_file` (a .pt checkpoint, run by torch, or a .onnx export, run by onnxruntime)
    into the active run, register it as `facesim-<model_name>` (`-onnx` after an export), apply the champion rule."""
    import numpy
    import PIL
    from mlflow.models import infer_signature
    from mlflow.tracking import MlflowClient

    onnx = Path(model_file).suffix == ".onnx"
    name = registered_name(model_name, onnx)
    example = pd.DataFrame({"image1": [encode_image(example_pair[0]) if example_pair else ""],
                            "image2": [encode_image(example_pair[1]) if example_pair else ""]})
    signature = infer_signature(example, pd.DataFrame({"distance": [0.0], "same_person": [True]}))
    with tempfile.TemporaryDirectory() as folder:
        if onnx:  # the export's metadata carry the threshold
            import onnxruntime

            artifacts = {"onnx": str(model_file)}
            runtime = [f"onnxruntime=={onnxruntime.__version__}"]
        else:
            import torch

            metrics_file = Path(folder) / "metrics.json"
            metrics_file.write_text(json.dumps(dict(metrics), indent=2) + "\n", encoding="utf-8")
            artifacts = {"checkpoint": str(model_file), "metrics": str(metrics_file)}
            runtime = [f"torch=={torch.__version__.split('+')[0]}"]
        info = mlflow.pyfunc.log_model(
            name="verifier",
            python_model=FaceVerifier(),
            artifacts=artifacts,
            signature=signature,
            input_example=example if example_pair else None,
            # Pinned rather than inferred (inference imports every package: slow). The model also
            # needs facesim itself: serve it with --env-manager local from the project's environment.
            pip_requirements=[f"mlflow=={mlflow.__version__}", *runtime, f"pillow=={PIL.__version__}",
                              f"numpy=={numpy.__version__}", f"pandas=={pd.__version__}"],
        )
    version = mlflow.register_model(info.model_uri, name, tags=version_tags(metrics))
    return promote_if_better(MlflowClient(), name, version.version)


def register_model(
    run: Run,
    model_name: str,
    model_file: str | os.PathLike,
    metrics: Mapping[str, Any],
    example_pair: tuple[str | os.PathLike, str | os.PathLike] | None = None,
) -> Registered | None:
    """What the evaluate stage does with its checkpoint and with its ONNX export:
    `log_and_register` into `run`, and say where the champion alias went. Nothing for a run that does not
    log to MLflow (`NullRun`)."""
    if run.run_id is None:
        return None
    registered = log_and_register(model_name, model_file, metrics, example_pair)
    previous = f"version {registered.previous_champion}" if registered.previous_champion else "none"
    print(f"registered {registered.name} version {registered.version}; champion: "
          f"{'moved to it' if registered.champion else 'kept'} (before: {previous})", file=sys.stderr)
    return registered
