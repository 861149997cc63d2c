"""dlib's face-trained ResNet as a frozen feature extractor: 128 numbers per face.

The optional `dlib` backbone (`pip install -e .[dlib]`: `dlib-bin`, a prebuilt
dlib, and `face_recognition_models`, whose wheel carries the weights) turns
each face into dlib's 128-d descriptor, and the pipeline trains only a small
head on top (`facesim.core.models.DescriptorHead`). dlib's network was
trained on millions of faces of thousands of people, which no training on 32
ORL people can match. Each face goes through dlib as its authors use it:

1. the face box: dlib's HOG frontal-face detector, on the picture as it is,
   then upsampled once and twice for small faces (ORL's 92x112 faces are found
   as they are); the largest box wins. Where HOG finds none (3 of ORL's 400
   faces, 16 of them blurred by a radius of 2), the picture is taken for a face
   crop and the box is where HOG puts the face in one (`CROP_BOX`);
   `Descriptors.found` is False and the pipeline reports how often;
2. five landmarks in the box (dlib's 5-point shape predictor);
3. the 150x150 face chip aligned on them, through the ResNet: 128 numbers
   whose Euclidean distance below about 0.6 means the same person.

Grey pictures (all the pipeline has) are given to dlib as RGB with three equal
channels. A face's descriptor depends only on its pixels and the model files,
so it is computed once and kept in a cache on disk (`cache_dir`), keyed by the
digests of both: the CV pipeline's 10 dlib fold stages and the pipeline's dlib
train and evaluate stages pay dlib's ~0.075 s per face (one core) once, not in
each stage. A cache entry is written atomically; deleting
the cache is always safe.

dlib describes a face on one core and holds Python's lock while it does, so threads
do not help: on Linux, more than `PARALLEL_FROM` faces missing from the cache are
described by worker processes, one per core this process may use (2 on the
project's machines: the evaluate stage's 660 changed faces in half the time). A
descriptor does not depend on which process computes it. The workers are forked
from a fresh server process that does nothing else (multiprocessing's forkserver),
not from the stage's process: its other threads (MLflow's, an allocator's) may hold a lock at
the moment of a fork, and a worker forked from it once hung on one for good, with
the stage's SIGTERM handler (`facesim.mlops.tracking`) keeping it alive through
the pool's terminate.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import multiprocessing
import multiprocessing.pool
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facesim.core.array_cache import cache_root
from facesim.core.atomic import whole_file

DESCRIPTOR_SIZE = 128
# dlib's HOG detector on the picture, upsampled 0, 1, then 2 times: the first that finds a face wins
UPSAMPLES = (0, 1, 2)
# Where HOG finds no face: the box, as fractions of the picture (left, top, right, bottom), where it puts the face
# in a face crop (the median of its boxes on ORL's 400 faces). Blurred by a radius of 2, same-person pairs of raw
# descriptors at distance <= 0.6 on ORL: 96.8% with the whole picture as this box, 97.7% with this one.
CROP_BOX = (0.065, 0.259, 0.924, 0.973)
_MODEL_FILES = ("shape_predictor_5_face_landmarks.dat", "dlib_face_recognition_resnet_model_v1.dat")
# faces missing from the cache above which several processes describe them (each costs ~0.06 s, a fork ~0.01 s)
PARALLEL_FROM = 16
INSTALL_HINT = "pip install -e '.[dlib]' (dlib-bin and face_recognition_models)"


class DlibUnavailable(ImportError):
    """The dlib extra is not installed."""


def model_dir() -> Path:
    """The folder of dlib's model files inside the installed face_recognition_models package.

    Found without importing the package: its __init__ needs setuptools' pkg_resources,
    which setuptools 81 and later no longer ship."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise DlibUnavailable(f"train.backbone 'dlib' needs the face_recognition_models package: {INSTALL_HINT}")
    folder = Path(list(spec.submodule_search_locations)[0]) / "models"
    missing = [name for name in _MODEL_FILES if not (folder / name).is_file()]
    if missing:
        raise DlibUnavailable(f"{folder}: missing {', '.join(missing)}; reinstall face_recognition_models: {INSTALL_HINT}")
    return folder


def cache_dir() -> Path:
    """Where descriptors are kept: the `dlib` folder of the facesim cache (`array_cache.cache_root`)."""
    return cache_root() / "dlib"


@dataclass(frozen=True)
class Descriptors:
    """128 numbers per face, and whether HOG found the face (False: the box was `CROP_BOX`)."""

    vectors: np.ndarray  # (N, 128) float32
    found: np.ndarray  # (N,) bool


class DlibFaces:
    """dlib's detector, landmark model and face ResNet, loaded once per process."""

    def __init__(self) -> None:
        try:
            import dlib
        except ImportError:
            raise DlibUnavailable(f"train.backbone 'dlib' needs dlib: {INSTALL_HINT}") from None
        folder = model_dir()
        self._dlib = dlib
        self.detector = dlib.get_frontal_face_detector()
        self.landmarks = dlib.shape_predictor(str(folder / _MODEL_FILES[0]))
        self.network = dlib.face_recognition_model_v1(str(folder / _MODEL_FILES[1]))
        digest = hashlib.sha256(dlib.__version__.encode())
        for name in _MODEL_FILES:
            digest.update((folder / name).read_bytes())
        digest.update(repr((UPSAMPLES, CROP_BOX)).encode())  # how the face box is found
        self.digest = digest.hexdigest()  # what a descriptor depends on besides the pixels

    def face_box(self, rgb: np.ndarray):
        """(box, found): the largest HOG face box, else `CROP_BOX` of the picture."""
        for upsample in UPSAMPLES:
            boxes = self.detector(rgb, upsample)
            if len(boxes):
                return max(boxes, key=lambda box: box.area()), True
        height, width = rgb.shape[:2]
        left, top, right, bottom = crop_box(width, height)
        return self._dlib.rectangle(left, top, right, bottom), False

    def describe_one(self, pixels: np.ndarray) -> tuple[np.ndarray, bool]:
        """One (H, W) uint8 grey face -> (128 float32, found)."""
        rgb = np.ascontiguousarray(np.repeat(pixels[:, :, None], 3, axis=2))
        box, found = self.face_box(rgb)
        vector = self.network.compute_face_descriptor(rgb, self.landmarks(rgb, box))
        return np.asarray(vector, dtype=np.float32), found


def crop_box(width: int, height: int) -> tuple[int, int, int, int]:
    """`CROP_BOX` in pixels of a `width` x `height` picture: (left, top, right, bottom), inclusive."""
    left, top, right, bottom = CROP_BOX
    return (round(left * (width - 1)), round(top * (height - 1)), round(right * (width - 1)),
            round(bottom * (height - 1)))


@functools.lru_cache(maxsize=1)
def dlib_faces() -> DlibFaces:
    return DlibFaces()


def pixels_key(pixels: np.ndarray) -> str:
    """Digest of a grey picture: its shape and bytes."""
    array = np.ascontiguousarray(pixels, dtype=np.uint8)
    return hashlib.sha256(f"{array.shape}".encode() + array.tobytes()).hexdigest()


def describe(pixels: Sequence[np.ndarray], cache: Path | None = None, processes: int | None = None) -> Descriptors:
    """Descriptors of (H, W) uint8 grey faces, in their order; read from `cache` (default `cache_dir()`)
    where computed before, computed by dlib and added to it otherwise: by `processes` processes (None: one per
    usable core when more than PARALLEL_FROM faces are missing, see the module's docstring)."""
    faces = dlib_faces()
    folder = (cache or cache_dir()) / faces.digest[:16]
    entries = [folder / f"{pixels_key(array)}.npy" for array in pixels]
    saved = [_read_entry(entry) for entry in entries]
    missing = [row for row, values in enumerate(saved) if values is None]
    for row, values in zip(missing, _describe_all([pixels[row] for row in missing], processes)):
        _write_entry(entries[row], values)
        saved[row] = values
    vectors = np.empty((len(pixels), DESCRIPTOR_SIZE), dtype=np.float32)
    found = np.empty(len(pixels), dtype=bool)
    for row, values in enumerate(saved):
        vectors[row], found[row] = values[:DESCRIPTOR_SIZE], bool(values[DESCRIPTOR_SIZE])
    if len(pixels) and not found.all():
        print(f"dlib: no face found by HOG in {int((~found).sum())} of {len(pixels)} pictures; "
              "their face box is where HOG puts a face in a face crop", file=sys.stderr, flush=True)
    return Descriptors(vectors=vectors, found=found)


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS tells it)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _describe_all(pixels: list[np.ndarray], processes: int | None) -> list[np.ndarray]:
    """Each face's cache entry (its 128 numbers and `found` as a 129th), in order."""
    if processes is None:
        parallel = sys.platform.startswith("linux") and len(pixels) > PARALLEL_FROM
        processes = min(usable_cores(), len(pixels)) if parallel else 1
    if processes < 1:
        raise ValueError(f"expected processes >= 1, got {processes}")
    if processes == 1 or len(pixels) < 2:
        return [_entry(array) for array in pixels]
    return worker_pool(processes).map(_entry, pixels, chunksize=max(1, len(pixels) // (4 * processes)))


@functools.lru_cache(maxsize=None)
def worker_pool(processes: int) -> multiprocessing.pool.Pool:
    """`processes` workers forked from multiprocessing's forkserver (this module preloaded there), each with
    dlib's models loaded (the module's docstring says why not forked from this process). Kept for the life of
    the process: the evaluate stage's robustness part describes its faces in 23 batches, and workers that load
    dlib's models for each cost it more than the faces do; multiprocessing terminates them at exit."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])  # only until the server first starts; it then serves every pool
    return context.Pool(processes, initializer=dlib_faces)


def _entry(pixels: np.ndarray) -> np.ndarray:
    vector, found = dlib_faces().describe_one(pixels)
    return np.append(vector, np.float32(found))


def _read_entry(path: Path) -> np.ndarray | None:
    try:
        saved = np.load(path, allow_pickle=False)
    except (OSError, ValueError):  # absent, or unreadable: computed again and rewritten
        return None
    if saved.shape != (DESCRIPTOR_SIZE + 1,) or saved.dtype != np.float32:
        return None
    return saved


def _write_entry(path: Path, values: np.ndarray) -> None:
    """Write one cache entry atomically; a cache that cannot be written only costs time."""
    try:
        with whole_file(path) as temporary, open(temporary, "wb") as file:
            np.save(file, values)
    except OSError:
        pass
