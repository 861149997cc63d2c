"""Use the trained models: verify two faces, search a gallery, embed images.

The same three functions back the `facesim` command line, a notebook or a
service. A model is named by what the pipeline trained (`<backbone>-<loss>`, e.g.
'dlib-triplet': `models/<name>.onnx`, the evaluate stage's, with its threshold in its
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

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from facesim.app.gallery import ImageInput, SkippedFilesWarning, cache_for, embed_files, face_label, load_face
from facesim.app.load import BEST, best_model, load_model
from facesim.app.repo import find_root, missing_output
from facesim.core.images import ImageError, load_image
from facesim.core.inference import FaceModel
from facesim.core.model_files import ModelError
from facesim.core.paths import show_path
from facesim.core.retrieval import top_k_neighbours

DEFAULT_GALLERY = Path("data", "raw", "faces", "testing")  # the held-out test faces, under the repo root

__all__ = ["Embeddings", "FaceModel", "ImageError", "Match", "ModelError", "SearchResult", "SkippedFilesWarning",
           "Verification", "best_model", "embed", "load_model", "search", "search_figure", "verify"]


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
