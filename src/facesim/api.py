"""Use the trained models: verify two faces, search a gallery, embed images.

The same three functions back the `facesim` command line, a notebook or a
service. A model is named by what the pipeline trained ('contrastive',
'triplet': `models/<name>.pt` with the threshold from
`reports/metrics/<name>.json`), by the path of a checkpoint, or by an MLflow
model URI (`models:/facesim-contrastive@champion`); `load_model` once and pass
the `FaceModel` to repeated calls to load it only once.

Every picture is decoded by `facesim.images`, framed like the ORL faces when the
face is only part of the photo (`facesim.detect`: "no face found" otherwise),
and prepared by `prepare_images`, the
functions training and evaluation use. Gallery embeddings are cached in
`<repo>/.facesim-cache/`, keyed by the sha256 of each file's bytes and of the
checkpoint, so a second search over the same gallery embeds nothing and a
changed file is embedded again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import re
import uuid
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch
from PIL import Image

from facesim.data import Preprocess, prepare_images
from facesim.detect import framed_face
from facesim.images import ImageError, grey_pixels, load_image, load_pixels
from facesim.models import MODELS, ModelError, embed_all, load_checkpoint, read_threshold

CACHE_DIR = ".facesim-cache"
DEFAULT_GALLERY = Path("data", "raw", "faces", "testing")  # the held-out test faces, under the repo root

ImageInput = str | os.PathLike | Image.Image


class SkippedFilesWarning(UserWarning):
    """Files in a folder that are not images were left out."""


# ---- models ------------------------------------------------------------------------------------


@dataclass
class FaceModel:
    """A trained embedding network ready to use, with the distance threshold calibrated by the evaluate stage."""

    name: str  # what was asked for: a model name, a checkpoint path or an MLflow URI
    checkpoint: str  # the checkpoint file it was loaded from
    network: torch.nn.Module
    preprocess: Preprocess
    digest: str  # sha256 of the checkpoint's bytes: the cache key of its embeddings
    threshold: float | None  # same person when distance <= threshold; None when unknown
    threshold_source: str  # where the threshold came from, or why there is none
    # the error when a threshold is needed and there is none, where more is known than threshold_source
    # says (the pipeline's metrics file is missing: how to get it back); None: the generic one
    missing_threshold: str | None = None

    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        """(N, D) float32 embeddings of pictures, prepared exactly as in training."""
        return embed_all(self.network, prepare_images(images, self.preprocess)).numpy()

    def distances(self, first: Sequence[Image.Image], second: Sequence[Image.Image]) -> np.ndarray:
        """Euclidean distance between the embeddings of first[i] and second[i]."""
        if len(first) != len(second):
            raise ValueError(f"need pairs: {len(first)} first images but {len(second)} second images; "
                             "pass as many of each")
        embeddings = self.embed([*first, *second])
        return np.linalg.norm(embeddings[: len(first)] - embeddings[len(first) :], axis=1)

    def require_threshold(self) -> float:
        if self.threshold is None:
            if self.missing_threshold is not None:
                raise ModelError(self.missing_threshold)
            raise ModelError(f"{self.name}: no distance threshold ({self.threshold_source}); "
                             "pass one with --threshold (threshold= in Python)")
        return self.threshold


def find_root(root: str | os.PathLike | None = None) -> Path:
    """The facesim repository: `root` when given, else the first folder from the cwd upward with a dvc.yaml."""
    if root is not None:
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: repository root not found; pass --root (root= in Python) the "
                                    "facesim repository, the folder that holds dvc.yaml")
        return root
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / "dvc.yaml").is_file():
            return folder
    raise FileNotFoundError(f"{here}: no dvc.yaml here or in any folder above it; run facesim inside the facesim "
                            "repository or pass --root (root= in Python)")


def dvc_lock_output(root: str | os.PathLike, path: str) -> tuple[str, str] | None:
    """(stage, output) of `<root>/dvc.lock` whose output is `path` (relative to root, POSIX) or a folder
    holding it; None when none is, or there is no readable dvc.lock."""
    import yaml  # imported here: needed only to explain a missing file

    try:
        lock = yaml.safe_load((Path(root) / "dvc.lock").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    stages = lock.get("stages") if isinstance(lock, dict) else None
    target = PurePosixPath(path)
    for stage, entry in (stages.items() if isinstance(stages, dict) else ()):
        outs = entry.get("outs") if isinstance(entry, dict) else None
        for out in outs if isinstance(outs, list) else ():
            listed = out.get("path") if isinstance(out, dict) else None
            if isinstance(listed, str) and (PurePosixPath(listed) == target or PurePosixPath(listed) in target.parents):
                return str(stage), listed
    return None


def missing_output(root: Path, path: str, kind: str, make: str) -> tuple[str, str, str]:
    """(what, problem, what to do) for a missing pipeline output `path` (relative to root), as dvc.lock
    explains it: restore it from DVC's cache when a stage records it, else run the pipeline to `make` it."""
    where = "" if Path.cwd().resolve() == root.resolve() else f" (in {show_path(root)})"
    recorded = dvc_lock_output(root, path)
    if recorded is None:
        return show_path(root / path), f"{kind} not found", f"run `dvc repro`{where} to {make} it"
    stage, output = recorded
    return (show_path(root / path), f"missing, though dvc.lock records it (stage {stage})",
            f"`dvc checkout {output}`{where} brings it back from the DVC cache "
            "(or `dvc pull` from a remote, `dvc repro` rebuilds it)")


def file_digest(path: str | os.PathLike) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def from_checkpoint(
    checkpoint: str | os.PathLike,
    metrics: str | os.PathLike | None = None,
    threshold: float | None = None,
    name: str | None = None,
) -> FaceModel:
    """A FaceModel from a checkpoint; the threshold is `threshold` when given, else the metrics file's."""
    network, saved = load_checkpoint(checkpoint)
    if threshold is not None:
        source = "given"
    elif metrics is not None and Path(metrics).is_file():
        threshold, source = read_threshold(metrics), f"calibrated on people unseen in training, {show_path(metrics)}"
    else:
        source = f"{show_path(metrics)} not found" if metrics is not None else "no metrics file"
    return FaceModel(name=name or str(checkpoint), checkpoint=str(checkpoint), network=network,
                     preprocess=Preprocess(**saved["preprocess"]), digest=file_digest(checkpoint),
                     threshold=None if threshold is None else float(threshold), threshold_source=source)


def is_mlflow_uri(spec: str) -> bool:
    return spec.startswith(("models:/", "runs:/")) or "://" in spec


def load_model(
    model: str | os.PathLike | FaceModel = "triplet",
    *,
    root: str | os.PathLike | None = None,
    threshold: float | None = None,
) -> FaceModel:
    """Load a model by name ('contrastive', 'triplet'), checkpoint path (.pt) or MLflow model URI.

    A name reads `<root>/models/<name>.pt` and the threshold from `<root>/reports/metrics/<name>.json`;
    a path reads the threshold from a `.json` of the same stem beside it; an MLflow URI loads the
    pyfunc that the evaluate stage registered. `threshold` overrides the saved one.
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
    if spec in MODELS:
        return _pipeline_model(spec, find_root(root), threshold)
    if is_mlflow_uri(spec):
        return _from_mlflow(spec, root, threshold)
    path = Path(spec)
    if not path.exists() and path.suffix != ".pt":
        raise ModelError(f"{spec}: not a model name ({', '.join(MODELS)}), checkpoint file or MLflow model URI; "
                         "pass one of those, e.g. --model triplet, --model my.pt or "
                         "--model models:/facesim-triplet@champion")
    if not path.is_file():
        raise FileNotFoundError(f"{spec}: checkpoint not found; check the path, or name a model the pipeline "
                                f"trained ({', '.join(MODELS)})")
    return from_checkpoint(path, path.with_suffix(".json"), threshold, name=spec)


def _pipeline_model(name: str, base: Path, threshold: float | None) -> FaceModel:
    """The model the pipeline trained: models/<name>.pt, threshold from reports/metrics/<name>.json; a
    missing file is explained by what dvc.lock records of it."""
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

    from facesim.serving import FaceVerifier
    from facesim.tracking import tracking_uri

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
                         "registered, e.g. models:/facesim-contrastive@champion")
    source = f"calibrated on people unseen in training, logged with {uri}"
    return load_model(dataclasses.replace(loaded.model, name=uri, threshold_source=source), threshold=threshold)


# ---- images and the embedding cache ------------------------------------------------------------------


def _natural_key(path: Path) -> list:
    """s2/10.pgm after s2/9.pgm, s10 after s9."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.as_posix())]


def list_files(folder: str | os.PathLike) -> list[Path]:
    """Every file under `folder` (recursively, hidden ones left out), in natural order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: folder not found; check the path")
    files = [p for p in folder.rglob("*")
             if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)]
    return sorted(files, key=lambda p: _natural_key(p.relative_to(folder)))


def load_face(image: ImageInput, detect: bool = True) -> Image.Image:
    """A picture as the models take faces: 8-bit grey and, where the face is a small part of the
    photo, cropped around it with ORL's loose framing (`detect=False`: the whole picture, for
    pictures already framed like ORL that the detector misses). Errors name the file."""
    if not isinstance(image, Image.Image) and not Path(image).exists():
        raise ImageError(f"{image}: image file not found; check the path")
    pixels = grey_pixels(image) if isinstance(image, Image.Image) else load_pixels(image)
    return Image.fromarray(framed_face(pixels, _label(image)) if detect else pixels)


def _label(image: ImageInput) -> str:
    return "<image>" if isinstance(image, Image.Image) else show_path(image)


def show_path(path: str | os.PathLike) -> str:
    """Relative to the working directory when below it, as given otherwise."""
    try:
        return Path(path).resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return str(path)


class EmbeddingCache:
    """Embeddings of one model by image content: `<folder>/<model digest>.npz`, keys = sha256 of file bytes."""

    def __init__(self, folder: str | os.PathLike, model_digest: str):
        self.path = Path(folder) / f"{model_digest}.npz"
        self._vectors: dict[str, np.ndarray] = {}
        if self.path.is_file():
            try:
                with np.load(self.path, allow_pickle=False) as saved:
                    self._vectors = dict(zip(saved["keys"].tolist(), saved["vectors"]))
            except Exception:  # a damaged cache is only a slower search
                self._vectors = {}

    def get(self, key: str) -> np.ndarray | None:
        return self._vectors.get(key)

    def update(self, vectors: dict[str, np.ndarray]) -> None:
        """Add vectors and write the file (atomically: a concurrent reader sees the old or the new one)."""
        if not vectors:
            return
        self._vectors.update(vectors)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        staged = self.path.with_name(f".tmp-{os.getpid()}-{uuid.uuid4().hex}.npz")
        try:
            np.savez(staged, keys=np.array(list(self._vectors), dtype="U64"),
                     vectors=np.stack(list(self._vectors.values())))
            os.replace(staged, self.path)
        finally:
            staged.unlink(missing_ok=True)


@dataclass
class EmbeddedFiles:
    paths: list[Path]  # the files embedded, in order
    vectors: np.ndarray  # (N, D)
    skipped: list[Path]  # files in the folders that are not readable images
    embedded: int  # how many were run through the network (the others came from the cache)


def embed_files(
    paths: Sequence[str | os.PathLike],
    model: FaceModel,
    cache: EmbeddingCache | None,
    detect: bool = True,
) -> EmbeddedFiles:
    """Embed image files (each must be a readable image) and every image in folders (other files skipped)."""
    candidates: list[tuple[Path, bool]] = []  # (file, must be an image)
    for path in map(Path, paths):
        if path.is_dir():
            candidates.extend((p, False) for p in list_files(path))
        else:
            candidates.append((path, True))
    kept: list[Path] = []
    vectors: list[np.ndarray | None] = []
    skipped: list[Path] = []
    missing: list[tuple[int, str, Image.Image]] = []
    for path, required in candidates:
        try:
            key = file_digest(path) + ("" if detect else ":whole")  # the picture the model saw
        except FileNotFoundError:
            raise ImageError(f"{path}: image file not found; check the path") from None
        except OSError as exc:
            raise ImageError(f"{path}: cannot read it ({exc}); check that you may read it") from None
        vector = cache.get(key) if cache is not None else None
        if vector is None:
            try:
                image = load_face(path, detect)
            except ImageError:
                if required:
                    raise
                skipped.append(path)
                continue
            missing.append((len(kept), key, image))
        kept.append(path)
        vectors.append(vector)
    if missing:
        fresh = model.embed([image for _, _, image in missing])
        for (row, _, _), vector in zip(missing, fresh):
            vectors[row] = vector
        if cache is not None:
            cache.update({key: vector for (_, key, _), vector in zip(missing, fresh)})
    dim = vectors[0].shape[0] if vectors else 0
    matrix = np.stack(vectors).astype(np.float32) if vectors else np.empty((0, dim), dtype=np.float32)
    if skipped:
        names = ", ".join(show_path(p) for p in skipped[:5]) + (", ..." if len(skipped) > 5 else "")
        warnings.warn(f"skipped {len(skipped)} file(s) that are not readable images or show no face: {names}",
                      SkippedFilesWarning, stacklevel=3)
    return EmbeddedFiles(paths=kept, vectors=matrix, skipped=skipped, embedded=len(missing))


def _cache_for(model: FaceModel, root: str | os.PathLike | None, cache: bool) -> EmbeddingCache | None:
    if not cache:
        return None
    try:
        return EmbeddingCache(find_root(root) / CACHE_DIR, model.digest)
    except FileNotFoundError:
        return None  # outside the repository: nowhere agreed to keep it


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
    model: str | os.PathLike | FaceModel = "contrastive",
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
    return Verification(image_a=_label(image_a), image_b=_label(image_b), model=face_model.name,
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
    model: str | os.PathLike | FaceModel = "triplet",
    *,
    root: str | os.PathLike | None = None,
    threshold: float | None = None,
    cache: bool = True,
    detect: bool = True,
) -> SearchResult:
    """The k gallery faces closest to `query`; the gallery defaults to the held-out test faces.

    A face's person is the name of its folder. The query itself is left out when it lies in the gallery.
    """
    from facesim.metrics import top_k_neighbours  # imported here: scipy and scikit-learn are slow to import

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
    found = embed_files([gallery_dir], face_model, _cache_for(face_model, root, cache), detect)
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
    from facesim.render import neighbours_figure  # imported here: matplotlib is slow to import

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
    model: str | os.PathLike | FaceModel = "triplet",
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
    found = embed_files(paths, face_model, _cache_for(face_model, root, cache), detect)
    if not found.paths:
        raise ValueError(f"{', '.join(str(p) for p in paths)}: no images found; pass image files, or folders "
                         "that hold some (any format Pillow opens)")
    return Embeddings(model=face_model.name, paths=[show_path(p) for p in found.paths],
                      persons=[p.parent.name for p in found.paths], vectors=found.vectors,
                      skipped=[show_path(p) for p in found.skipped])
