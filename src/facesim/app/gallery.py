"""Pictures from files and folders, and the gallery's embedding cache.

Gallery embeddings are cached in `<repo>/.facesim-cache/`, keyed by the sha256
of each file's bytes and of the model file (.onnx or .pt), so a second search over
the same gallery embeds nothing and a changed file is embedded again.
"""

from __future__ import annotations

import os
import uuid
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from facesim.app.repo import find_root
from facesim.core.images import ImageError
from facesim.core.inference import FaceModel, face_pixels, file_digest
from facesim.core.paths import natural_key, show_path

CACHE_DIR = ".facesim-cache"

ImageInput = str | os.PathLike | Image.Image


class SkippedFilesWarning(UserWarning):
    """Files in a folder that are not images were left out."""


def list_files(folder: str | os.PathLike) -> list[Path]:
    """Every file under `folder` (recursively, hidden ones left out), in natural order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: folder not found; check the path")
    files = [p for p in folder.rglob("*")
             if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)]
    return sorted(files, key=lambda p: natural_key(p.relative_to(folder).as_posix()))


def load_face(image: ImageInput, detect: bool = True) -> Image.Image:
    """A picture as the models take faces: 8-bit grey and, where the face is a small part of the
    photo, cropped around it with ORL's loose framing (`detect=False`: the whole picture, for
    pictures already framed like ORL that the detector misses). Errors name the file."""
    if not isinstance(image, Image.Image) and not Path(image).exists():
        raise ImageError(f"{image}: image file not found; check the path")
    return Image.fromarray(face_pixels(image, face_label(image), detect))


def face_label(image: ImageInput) -> str:
    return "<image>" if isinstance(image, Image.Image) else show_path(image)


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


def cache_for(model: FaceModel, root: str | os.PathLike | None, cache: bool) -> EmbeddingCache | None:
    if not cache:
        return None
    try:
        return EmbeddingCache(find_root(root) / CACHE_DIR, model.digest)
    except FileNotFoundError:
        return None  # outside the repository: nowhere agreed to keep it
