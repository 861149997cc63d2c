"""Faces in memory: decode every image once, prepare it once, index batches by row.

The ORL set is 400 images of 92x112 grey pixels (4 MB): decoding them once
into one tensor and building every pair, triplet or P x K batch by indexing
is far faster than opening files per item. `prepare_images` is the one
function that turns any picture into model input, in training, evaluation
and the command line alike: it stacks the 8-bit grey pixels of same-sized
pictures and resizes each stack in one torch call (bilinear, antialiased like
Pillow's resize, and like it rounded to whole grey levels), then normalises.
Files are read by `facesim.images`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from facesim.images import ImageError, load_pixels


@dataclass(frozen=True)
class Preprocess:
    """How a picture becomes model input; saved in every checkpoint."""

    height: int = 56  # model input height in pixels (ORL originals are 112)
    width: int = 46  # model input width (ORL originals are 92)
    mean: float = 0.5  # subtracted after scaling grey levels to [0, 1]
    std: float = 0.25  # divided by after subtracting the mean

    def to_dict(self) -> dict:
        return asdict(self)


def prepare_images(images: Iterable[Image.Image], preprocess: Preprocess) -> torch.Tensor:
    """Grey, resize (antialiased bilinear) and normalise: (N, 1, height, width) float32."""
    return _prepare_pixels([np.asarray(image if image.mode == "L" else image.convert("L")) for image in images],
                           preprocess)


def _prepare_pixels(pixels: Sequence[np.ndarray], preprocess: Preprocess) -> torch.Tensor:
    """`prepare_images` of (height, width) uint8 grey arrays, in their order."""
    size = (preprocess.height, preprocess.width)
    rows_by_shape: dict[tuple[int, ...], list[int]] = {}
    for row, array in enumerate(pixels):
        rows_by_shape.setdefault(array.shape, []).append(row)
    batch = torch.empty(len(pixels), 1, *size)
    for rows in rows_by_shape.values():
        stack = torch.from_numpy(np.stack([pixels[row] for row in rows])).unsqueeze(1)
        # on uint8 torch resizes in integer arithmetic like Pillow, and 2-3x faster than on floats
        batch[rows] = F.interpolate(stack, size=size, mode="bilinear", antialias=True, align_corners=False).float()
    return batch.div_(255.0).sub_(preprocess.mean).div_(preprocess.std)


@dataclass
class FaceSet:
    """Images by relative path, decoded and prepared once: `tensor[index[path]]`."""

    paths: list[str]
    subjects: list[str]
    tensor: torch.Tensor  # (N, 1, H, W) prepared images, in `paths` order

    @classmethod
    def load(cls, root: str | os.PathLike, paths: Iterable[str], preprocess: Preprocess) -> "FaceSet":
        unique = sorted(set(paths))
        root = Path(root)
        tensor = _prepare_pixels([load_pixels(root / p) for p in unique], preprocess)
        return cls(paths=unique, subjects=[Path(p).parent.name for p in unique], tensor=tensor)

    def __post_init__(self) -> None:
        self.index = {path: i for i, path in enumerate(self.paths)}

    def rows(self, paths: Sequence[str]) -> torch.Tensor:
        """Row numbers of `paths` in `tensor`, as a long tensor."""
        try:
            return torch.tensor([self.index[p] for p in paths], dtype=torch.long)
        except KeyError as exc:
            raise ImageError(f"{exc.args[0]}: not among the loaded faces") from None

    def subject_ids(self) -> torch.Tensor:
        """An integer id per row, equal for the same subject."""
        names = {s: i for i, s in enumerate(sorted(set(self.subjects)))}
        return torch.tensor([names[s] for s in self.subjects], dtype=torch.long)


@dataclass(frozen=True)
class Augment:
    """Light, label-preserving changes applied to whole training batches at once."""

    max_shift: float = 0.06  # translation, as a fraction of the image size
    max_rotation_deg: float = 8.0
    max_scale: float = 0.08  # zoom in or out by up to this fraction
    flip: bool = True  # mirror half of the faces left-right
    max_brightness: float = 0.15  # added, in normalised units
    max_contrast: float = 0.15  # multiplicative, fraction

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
        return out * contrast + brightness
