"""Faces in memory: decode every image once, prepare it once, index batches by row.

The ORL set is 400 images of 92x112 grey pixels (4 MB): decoding them once
into one tensor and building every pair, triplet or P x K batch by indexing
is far faster than opening files per item. `prepare_images` is the one
function that turns any picture into model input, in training, evaluation
and evaluation alike: it stacks the 8-bit grey pixels of same-sized pictures
and resizes each stack in one torch call (bilinear, antialiased, in integer
arithmetic rounded to whole grey levels), then normalises. The ONNX models
take the same input from `facesim.core.preprocess`, its numpy twin without
torch. Files are read by `facesim.core.images`.

Faces that would take more than `FACES_IN_MEMORY_MB` as model input (about
100,000 faces at 40x32) are not held in memory: their resized 8-bit pixels are
written once to a memory-mapped file in the cache folder (`$FACESIM_CACHE/faces/`,
keyed by the files' paths, sizes and times and the preprocessing), and a batch
is normalised when it is read (`FacePixels`), giving the same numbers bit for bit.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image

from facesim.core.array_cache import cache_root, cached_array
from facesim.core.images import ImageError, grey_pixels, load_pixels
from facesim.core.preprocess import Preprocess, trim_uniform_borders

# Faces whose prepared float32 pixels would take more than this many MiB are read from the uint8
# memory-mapped cache instead (FACESIM_FACES_IN_MEMORY_MB overrides it; the numbers are the same either
# way, only memory and speed differ). ORL's 400 faces take 2 MiB.
FACES_IN_MEMORY_MB = 512
FACES_IN_MEMORY_ENV = "FACESIM_FACES_IN_MEMORY_MB"
_CACHE_VERSION = 1  # bump when the cached pixels of the same files and preprocessing would change


def prepare_images(images: Iterable[Image.Image], preprocess: Preprocess) -> torch.Tensor:
    """Grey, resize (antialiased bilinear) and normalise: (N, 1, height, width) float32 (features "dlib":
    dlib's descriptors, (N, 128) float32)."""
    return prepare_pixels([grey_pixels(image) for image in images], preprocess)


def prepare_pixels(pixels: Sequence[np.ndarray], preprocess: Preprocess) -> torch.Tensor:
    """`prepare_images` of (height, width) uint8 grey arrays (`facesim.core.images.load_pixels`), in their order."""
    if preprocess.features == "dlib":  # the frozen dlib network finds, aligns and describes the face itself
        from facesim.core.dlib_face import describe

        return torch.from_numpy(describe(pixels).vectors)
    if preprocess.features != "pixels":
        raise ValueError(f"preprocess.features must be 'pixels' or 'dlib', got {preprocess.features!r}")
    return normalise(resize_pixels(pixels, preprocess).float(), preprocess)


def resize_pixels(pixels: Sequence[np.ndarray], preprocess: Preprocess) -> torch.Tensor:
    """(height, width) uint8 grey arrays, borders trimmed if asked and resized: (N, 1, height, width) uint8."""
    if preprocess.trim_borders:
        pixels = [trim_uniform_borders(array) for array in pixels]
    size = (preprocess.height, preprocess.width)
    rows_by_shape: dict[tuple[int, ...], list[int]] = {}
    for row, array in enumerate(pixels):
        rows_by_shape.setdefault(array.shape, []).append(row)
    batch = torch.empty(len(pixels), 1, *size, dtype=torch.uint8)
    for rows in rows_by_shape.values():
        stack = torch.from_numpy(np.stack([pixels[row] for row in rows])).unsqueeze(1)
        # on uint8 torch resizes in integer arithmetic (`facesim.core.preprocess.resize_grey`, bit for bit), and
        # 2-3x faster than on floats
        batch[rows] = F.interpolate(stack, size=size, mode="bilinear", antialias=True, align_corners=False)
    return batch


def normalise(batch: torch.Tensor, preprocess: Preprocess) -> torch.Tensor:
    """Resized grey levels (N, 1, H, W) float32 as model input, in place; each face on its own, so that
    a face gives the same numbers whichever batch it comes in."""
    if preprocess.normalization == "per_image":
        flat = batch.view(len(batch), -1)
        # a uniform picture has no contrast to scale: it stays all zeros rather than dividing by zero
        std = flat.std(dim=1, unbiased=False, keepdim=True).clamp_min(1.0)
        return flat.sub_(flat.mean(dim=1, keepdim=True)).div_(std).view_as(batch)
    return batch.div_(255.0).sub_(preprocess.mean).div_(preprocess.std)


class FacePixels:
    """Resized 8-bit faces (N, 1, H, W), e.g. memory-mapped, read like the tensor of model input they
    stand for: indexing (rows as a long tensor, a slice) returns those faces normalised, float32."""

    def __init__(self, pixels: np.ndarray, preprocess: Preprocess):
        self.pixels, self.preprocess = pixels, preprocess

    def __len__(self) -> int:
        return len(self.pixels)

    @property
    def shape(self) -> torch.Size:
        return torch.Size(self.pixels.shape)

    def __getitem__(self, index: torch.Tensor | slice) -> torch.Tensor:
        if isinstance(index, torch.Tensor):
            index = index.numpy()
        # np.array copies: a slice of a read-only memory map is no tensor torch may own
        return normalise(torch.from_numpy(np.array(self.pixels[index])).float(), self.preprocess)

    def subset(self, rows: torch.Tensor) -> "FacePixels":
        """The faces of `rows`, copied into memory as 8-bit pixels."""
        return FacePixels(np.ascontiguousarray(self.pixels[rows.numpy()]), self.preprocess)


def faces_in_memory_mb() -> float:
    """The limit above which faces are read from the disk cache: $FACESIM_FACES_IN_MEMORY_MB or 512."""
    value = os.environ.get(FACES_IN_MEMORY_ENV)
    try:
        return float(value) if value else FACES_IN_MEMORY_MB
    except ValueError:
        raise ValueError(f"{FACES_IN_MEMORY_ENV} must be a number of MiB, got {value!r}") from None


def fits_in_memory(faces: int, preprocess: Preprocess, limit_mb: float) -> bool:
    """Whether `faces` prepared as model input (float32) take at most `limit_mb` MiB."""
    return faces * preprocess.height * preprocess.width * 4 <= limit_mb * 2**20


def pixel_cache_key(root: str | os.PathLike, paths: Sequence[str], preprocess: Preprocess) -> str:
    """What the cached pixels of `paths` depend on: each file's path, size and modification time, and
    the preprocessing that comes before normalisation (which is applied when reading)."""
    digest = hashlib.sha256(repr((_CACHE_VERSION, preprocess.height, preprocess.width,
                                  preprocess.trim_borders)).encode())
    root = Path(root)
    for path in paths:
        stat = (root / path).stat()
        digest.update(f"{len(path)}:{path}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:32]


def cached_face_pixels(root: str | os.PathLike, paths: Sequence[str], preprocess: Preprocess,
                       cache_dir: str | os.PathLike | None = None) -> FacePixels:
    """The faces of `paths` (relative to `root`) from the memory-mapped cache under `cache_dir`
    (default $FACESIM_CACHE/faces), decoded and resized the first time only, a chunk at a time."""
    root = Path(root)
    try:
        key = pixel_cache_key(root, paths, preprocess)
    except FileNotFoundError as exc:
        raise ImageError(f"{exc.filename}: image file not found") from None

    def fill(start: int, stop: int) -> np.ndarray:
        return resize_pixels([load_pixels(root / p) for p in paths[start:stop]], preprocess).numpy()

    pixels = cached_array(Path(cache_dir) if cache_dir is not None else cache_root() / "faces", key,
                          (len(paths), 1, preprocess.height, preprocess.width), np.uint8, fill)
    return FacePixels(pixels, preprocess)


@dataclass
class FaceSet:
    """Images by relative path, decoded and prepared once: `tensor[index[path]]`."""

    paths: list[str]
    subjects: list[str]
    # (N, 1, H, W) prepared images (or (N, 128) dlib descriptors), in `paths` order; `FacePixels` (read
    # the same way) for faces beyond the in-memory limit
    tensor: torch.Tensor | FacePixels

    @classmethod
    def load(cls, root: str | os.PathLike, paths: Iterable[str], preprocess: Preprocess, *,
             memory_limit_mb: float | None = None, cache_dir: str | os.PathLike | None = None) -> "FaceSet":
        """The faces of `paths`, all prepared in memory, or, when they would take more than
        `memory_limit_mb` (default `faces_in_memory_mb()`), read from the disk cache in `cache_dir`."""
        unique = sorted(set(paths))
        root = Path(root)
        limit = faces_in_memory_mb() if memory_limit_mb is None else memory_limit_mb
        if preprocess.features != "pixels" or fits_in_memory(len(unique), preprocess, limit):
            tensor = prepare_pixels([load_pixels(root / p) for p in unique], preprocess)
        else:
            tensor = cached_face_pixels(root, unique, preprocess, cache_dir)
        return cls(paths=unique, subjects=[Path(p).parent.name for p in unique], tensor=tensor)

    def __post_init__(self) -> None:
        self.index = {path: i for i, path in enumerate(self.paths)}

    def rows(self, paths: Sequence[str]) -> torch.Tensor:
        """Row numbers of `paths` in `tensor`, as a long tensor."""
        try:
            return torch.tensor([self.index[p] for p in paths], dtype=torch.long)
        except KeyError as exc:
            raise ImageError(f"{exc.args[0]}: not among the loaded faces") from None

    def table_rows(self, table: pd.DataFrame, columns: Sequence[str]) -> torch.Tensor:
        """Row numbers of the faces a sample table names in `columns`: (len(table), len(columns)), long."""
        return torch.stack([self.rows(table[column]) for column in columns], dim=1)

    def subset(self, paths: Sequence[str]) -> "FaceSet":
        """The rows of `paths`, in that order, without decoding anything again."""
        rows = self.rows(paths)
        tensor = self.tensor.subset(rows) if isinstance(self.tensor, FacePixels) else self.tensor[rows]
        return FaceSet(paths=list(paths), subjects=[self.subjects[i] for i in rows.tolist()], tensor=tensor)

    def subject_ids(self) -> torch.Tensor:
        """An integer id per row, equal for the same subject."""
        names = {s: i for i, s in enumerate(sorted(set(self.subjects)))}
        return torch.tensor([names[s] for s in self.subjects], dtype=torch.long)


@dataclass(frozen=True)
class Augment:
    """Label-preserving changes applied to whole training batches at once (the params' train.augmentation)."""

    max_shift: float  # translation, as a fraction of the image size
    max_rotation_deg: float
    max_scale: float  # zoom in or out by up to this fraction
    flip: bool  # mirror half of the faces left-right
    max_brightness: float  # added, in normalised units
    max_contrast: float  # multiplicative, fraction
    max_blur: float  # Gaussian blur of up to this sigma, in model-input pixels (0: none)

    def validate(self) -> None:
        for name in ("max_shift", "max_rotation_deg", "max_scale", "max_brightness", "max_contrast", "max_blur"):
            if getattr(self, name) < 0:
                raise ValueError(f"train.augmentation.{name} must be >= 0, got {getattr(self, name)}")
        if self.max_scale >= 1:
            raise ValueError(f"train.augmentation.max_scale must be below 1, got {self.max_scale}")

    def __call__(self, batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n = batch.shape[0]

        def uniform(limit: float) -> torch.Tensor:
            return (torch.rand(n, generator=generator) * 2 - 1) * limit

        angle = uniform(math.radians(self.max_rotation_deg))
        scale = 1 + uniform(self.max_scale)
        mirror = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0) if self.flip else torch.ones(n)
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        theta = torch.stack(
            [
                torch.stack([cos * mirror, -sin, uniform(2 * self.max_shift)], dim=1),
                torch.stack([sin * mirror, cos, uniform(2 * self.max_shift)], dim=1),
            ],
            dim=1,
        ).to(batch)
        grid = F.affine_grid(theta, list(batch.shape), align_corners=False)
        out = F.grid_sample(batch, grid, mode="bilinear", padding_mode="border", align_corners=False)
        contrast = (1 + uniform(self.max_contrast)).to(batch).view(n, 1, 1, 1)
        brightness = uniform(self.max_brightness).to(batch).view(n, 1, 1, 1)
        out = out * contrast + brightness
        if self.max_blur > 0:  # drawn only when asked for, so other settings keep their random stream
            out = gaussian_blur(out, torch.rand(n, generator=generator) * self.max_blur)
        return out


def gaussian_blur(batch: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """Each (1, H, W) image of `batch` blurred by a Gaussian of its own sigma (pixels; 0 leaves it)."""
    n = batch.shape[0]
    radius = max(1, math.ceil(3 * float(sigmas.max())))
    offsets = torch.arange(-radius, radius + 1, dtype=batch.dtype)
    spread = sigmas.to(batch.dtype).clamp_min(1e-3).view(n, 1)
    weights = torch.exp(-(offsets.view(1, -1) ** 2) / (2 * spread**2))
    weights = (weights / weights.sum(dim=1, keepdim=True)).to(batch.device)
    # the batch as channels of one image, each blurred by its own kernel: rows, then columns
    x = F.pad(batch.reshape(1, n, *batch.shape[2:]), (radius, radius, radius, radius), mode="replicate")
    x = F.conv2d(x, weights.view(n, 1, -1, 1), groups=n)
    x = F.conv2d(x, weights.view(n, 1, 1, -1), groups=n)
    return x.reshape(batch.shape)
