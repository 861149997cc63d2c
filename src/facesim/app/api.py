"""Use the trained models: verify two faces, search a gallery, embed images.

The same three functions back the `facesim` command line, a notebook or a
service. A model is named by what the pipeline trained (`<backbone>-<loss>`, e.g.
'dlib-triplet': `models/<name>.onnx`, the export stage's, with its threshold in its
metadata, else the checkpoint `models/<name>.pt` with the threshold from
`reports/metrics/<name>.json`; 'contrastive' and 'triplet' name the compact
ones), 'best' (the default: of the models the pipeline trained, the one with
the lowest committed cross-validation EER), by the path of an ONNX model (.onnx)
or a checkpoint (.pt), or by an MLflow model URI
(`models:/facesim-dlib-triplet@champion`); `load_model` once and pass the
`FaceModel` to repeated calls to load it only once. ONNX models run on
onnxruntime: that path imports neither torch nor MLflow; a checkpoint or an
MLflow URI runs on torch.

Every picture is decoded by `facesim.core.images`, framed like the ORL faces when the
face is only part of the photo (`facesim.core.detect`: "no face found" otherwise),
and prepared as in training and evaluation (`facesim.core.inference`: torch's own
preparation for a checkpoint, its numpy twin `facesim.core.preprocess` for an ONNX
model). Gallery embeddings are cached (`facesim.app.gallery`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from facesim.app.gallery import ImageInput, SkippedFilesWarning, cache_for, embed_files, face_label, load_face
from facesim.app.repo import find_root, missing_output
from facesim.core.images import ImageError, load_image
from facesim.core.inference import FaceModel, from_checkpoint, from_onnx
from facesim.core.metrics import top_k_neighbours
from facesim.core.model_files import MODELS, ModelError
from facesim.core.paths import show_path

DEFAULT_GALLERY = Path("data", "raw", "faces", "testing")  # the held-out test faces, under the repo root
BEST = "best"  # the model name that picks the most accurate model the pipeline trained (`best_model`)
PIPELINE_MODEL = re.compile(rf"[A-Za-z0-9_]+-({'|'.join(MODELS)})")  # <backbone>-<loss>, as dvc.yaml names them
MODEL_SUFFIXES = (".onnx", ".pt")  # the model files: the export stage's (onnxruntime), the train stage's (torch)

__all__ = ["Embeddings", "FaceModel", "ImageError", "Match", "ModelError", "SearchResult", "SkippedFilesWarning",
           "Verification", "best_model", "embed", "load_model", "search", "search_figure", "verify"]


# ---- models ------------------------------------------------------------------------------------


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
    """The model the pipeline trained: models/<name>.onnx where the export stage wrote it (its threshold in it),
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
    source = f"calibrated on people unseen in training, logged with {uri}"
    return load_model(dataclasses.replace(loaded.model, name=uri, threshold_source=source), threshold=threshold)


# ---- the three uses ------------------------------------------------------------------------------------


@dataclass
class Verification:
    image_a: str
    image_b: str
    model: str
    distance: float
    threshold: float
    threshold_source: str
    same_person: bool  # distance <= threshold
    margin: float  # |distance - threshold|: how far the verdict is from flipping
    relative_margin: float  # margin / threshold

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def verify(
    image_a: ImageInput,
    image_b: ImageInput,
    model: str | os.PathLike | FaceModel = BEST,
    *,
    root: str | os.PathLike | None = None,
    threshold: float | None = None,
    detect: bool = True,
) -> Verification:
    """Are two faces the same person? Their distance against the calibrated threshold."""
    first, second = load_face(image_a, detect), load_face(image_b, detect)
    face_model = load_model(model, root=root, threshold=threshold)
    cut = face_model.require_threshold()
    distance = float(face_model.distances([first], [second])[0])
    margin = abs(distance - cut)
    return Verification(image_a=face_label(image_a), image_b=face_label(image_b), model=face_model.name,
                        distance=distance, threshold=cut, threshold_source=face_model.threshold_source,
                        same_person=distance <= cut, margin=margin,
                        relative_margin=margin / cut if cut > 0 else float("inf"))


@dataclass
class Match:
    rank: int
    path: str
    person: str  # the folder the face is in
    distance: float
    same_person: bool | None  # distance <= threshold; None when the model has no threshold


@dataclass
class SearchResult:
    query: str
    query_person: str | None  # the query's folder when a gallery person has that name
    model: str
    threshold: float | None
    gallery: str
    gallery_size: int  # readable images in the gallery
    query_in_gallery: bool  # the query is one of them, and left out of the matches
    embedded: int  # gallery faces run through the network now
    cached: int  # gallery faces whose embeddings came from the cache
    skipped: list[str]  # gallery files that are not readable images
    matches: list[Match] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def search(
    query: str | os.PathLike,
    gallery: str | os.PathLike | None = None,
    k: int = 5,
    model: str | os.PathLike | FaceModel = BEST,
    *,
    root: str | os.PathLike | None = None,
    threshold: float | None = None,
    cache: bool = True,
    detect: bool = True,
) -> SearchResult:
    """The k gallery faces closest to `query`; the gallery defaults to the held-out test faces.

    A face's person is the name of its folder. The query itself is left out when it lies in the gallery.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k={k!r}: not an integer >= 1; pass e.g. -k 5 (k=5 in Python)")
    query_image = load_face(query, detect)
    if gallery is not None:
        gallery_dir = Path(gallery)
        if not gallery_dir.is_dir():
            raise FileNotFoundError(f"{gallery_dir}: gallery folder not found; pass a folder of faces, one "
                                    "sub-folder per person, with --gallery (gallery= in Python)")
    else:
        base = find_root(root)
        gallery_dir = base / DEFAULT_GALLERY
        if not gallery_dir.is_dir():  # the fetch stage's faces are not in the workspace
            what, problem, todo = missing_output(base, DEFAULT_GALLERY.as_posix(), "gallery folder", "fetch")
            raise FileNotFoundError(f"{what}: {problem}; {todo}, or pass a folder of faces with --gallery")
    face_model = load_model(model, root=root, threshold=threshold)
    found = embed_files([gallery_dir], face_model, cache_for(face_model, root, cache), detect)
    keep = [i for i, p in enumerate(found.paths) if p.resolve() != Path(query).resolve()]
    paths, vectors = [found.paths[i] for i in keep], found.vectors[keep]
    if not paths:
        raise ValueError(f"{gallery_dir}: no images to search in; pass a folder of face images with --gallery")
    if k > len(paths):
        raise ValueError(f"k={k}: more than the {len(paths)} faces of the gallery {show_path(gallery_dir)}; "
                         f"pass -k {len(paths)} or less")
    persons = [p.parent.name for p in paths]
    order, distances = top_k_neighbours(face_model.embed([query_image]), vectors, k, exclude_self=False)
    cut = face_model.threshold
    matches = [Match(rank=rank, path=show_path(paths[i]), person=persons[i], distance=float(d),
                     same_person=None if cut is None else bool(d <= cut))
               for rank, (i, d) in enumerate(zip(order[0], distances[0]), start=1)]
    query_folder = Path(query).resolve().parent.name
    return SearchResult(query=show_path(query), query_person=query_folder if query_folder in persons else None,
                        model=face_model.name, threshold=cut, gallery=show_path(gallery_dir),
                        gallery_size=len(found.paths), query_in_gallery=len(paths) < len(found.paths),
                        embedded=found.embedded, cached=len(found.paths) - found.embedded,
                        skipped=[show_path(p) for p in found.skipped], matches=matches)


def search_figure(result: SearchResult, k: int | None = None):
    """The query and its matches as one row of the render stage's top-k figure."""
    from facesim.pipeline.render import neighbours_figure  # imported here: matplotlib is slow to import

    matches = [(load_image(m.path), m.person, m.distance) for m in result.matches]
    title = f"{result.model}: {len(matches)} closest faces in {result.gallery}"
    if result.query_person is not None:
        title += " (green: same person, red: another)"
    return neighbours_figure([(load_image(result.query), result.query_person, matches)], k or len(matches), title)


@dataclass
class Embeddings:
    model: str
    paths: list[str]
    persons: list[str]  # the folder of each image
    vectors: np.ndarray  # (N, D) float32, in `paths` order
    skipped: list[str]  # files in the folders that are not readable images

    def to_frame(self):
        """A table: path, person, e0 .. e{D-1} (the layout of the evaluate stage's embeddings.csv)."""
        import pandas as pd

        table = pd.DataFrame(self.vectors, columns=[f"e{i}" for i in range(self.vectors.shape[1])])
        table.insert(0, "person", self.persons)
        table.insert(0, "path", self.paths)
        return table

    def save(self, out: str | os.PathLike) -> Path:
        """Write `.csv` (the table of `to_frame`) or `.npy` (the (N, D) matrix only, in `paths` order)."""
        out = Path(out)
        if out.suffix.lower() not in (".csv", ".npy"):
            raise ValueError(f"{out}: the output must end in .csv or .npy; e.g. --out embeddings.csv")
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.suffix.lower() == ".npy":
            np.save(out, self.vectors)
        else:
            self.to_frame().to_csv(out, index=False, lineterminator="\n", float_format="%.7g")
        return out


def embed(
    paths: Sequence[str | os.PathLike],
    model: str | os.PathLike | FaceModel = BEST,
    *,
    root: str | os.PathLike | None = None,
    cache: bool = True,
    detect: bool = True,
) -> Embeddings:
    """Embeddings of image files and of every image in folders (their other files are skipped)."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    if not paths:
        raise ValueError("no images given; pass image files or folders")
    for path in paths:
        if not Path(path).exists():
            raise ImageError(f"{path}: image file or folder not found; check the path")
    face_model = load_model(model, root=root)
    found = embed_files(paths, face_model, cache_for(face_model, root, cache), detect)
    if not found.paths:
        raise ValueError(f"{', '.join(str(p) for p in paths)}: no images found; pass image files, or folders "
                         "that hold some (any format Pillow opens)")
    return Embeddings(model=face_model.name, paths=[show_path(p) for p in found.paths],
                      persons=[p.parent.name for p in found.paths], vectors=found.vectors,
                      skipped=[show_path(p) for p in found.skipped])
