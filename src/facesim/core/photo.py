"""Ordinary photo changes on 8-bit grey pictures: exposure, contrast, framing, rotation, mirroring, scale,
blur and JPEG compression, as a camera or a photo app makes them.

The evaluate stage measures every model under a fixed set of them
(`facesim.pipeline.robustness.CHANGES`).
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageFilter

from facesim.core.images import decode_pixels

Change = Callable[[np.ndarray], np.ndarray]


def exposure(factor: float) -> Change:
    """Every grey level times `factor` (a darker or brighter shot), clipped to 0..255."""
    return lambda pixels: np.clip(np.rint(pixels * factor), 0, 255).astype(np.uint8)


def contrast(factor: float) -> Change:
    """Grey levels stretched (factor > 1) or flattened (< 1) about the picture's mean."""
    def change(pixels: np.ndarray) -> np.ndarray:
        mean = pixels.mean()
        return np.clip(np.rint(mean + (pixels - mean) * factor), 0, 255).astype(np.uint8)
    return change


def looser(fraction: float, fill: int = 0) -> Change:
    """A looser crop: the picture inside a uniform frame `fraction` of its size wide on every side
    (ORL has no pixels beyond its crop; a dark mat stands for the background a looser shot shows)."""
    def change(pixels: np.ndarray) -> np.ndarray:
        height, width = pixels.shape
        dy, dx = round(height * fraction), round(width * fraction)
        return np.pad(pixels, ((dy, dy), (dx, dx)), constant_values=fill)
    return change


def tighter(fraction: float) -> Change:
    """A tighter crop: `fraction` of the height and width cut away on every side."""
    def change(pixels: np.ndarray) -> np.ndarray:
        height, width = pixels.shape
        dy, dx = round(height * fraction), round(width * fraction)
        return pixels[dy : height - dy, dx : width - dx]
    return change


def shifted(fraction: float) -> Change:
    """The face off centre: a crop `fraction` narrower and shorter, against one corner
    (positive: the top-left corner; negative: the bottom-right one)."""
    def change(pixels: np.ndarray) -> np.ndarray:
        height, width = pixels.shape
        dy, dx = round(height * abs(fraction)), round(width * abs(fraction))
        return pixels[: height - dy, : width - dx] if fraction > 0 else pixels[dy:, dx:]
    return change


def rotation(degrees: float) -> Change:
    """Turned by `degrees` (counter-clockwise) about the centre; the corners take the picture's edge grey."""
    def change(pixels: np.ndarray) -> np.ndarray:
        edge = int(np.median(np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])))
        return np.asarray(Image.fromarray(pixels).rotate(degrees, resample=Image.Resampling.BILINEAR,
                                                         fillcolor=edge))
    return change


def mirror() -> Change:
    return lambda pixels: np.ascontiguousarray(pixels[:, ::-1])


def scale(factor: float) -> Change:
    """The whole photo taken at `factor` times the resolution (antialiased)."""
    def change(pixels: np.ndarray) -> np.ndarray:
        height, width = pixels.shape
        size = (max(1, round(width * factor)), max(1, round(height * factor)))
        return np.asarray(Image.fromarray(pixels).resize(size, Image.Resampling.BICUBIC))
    return change


def blur(radius: float) -> Change:
    return lambda pixels: np.asarray(Image.fromarray(pixels).filter(ImageFilter.GaussianBlur(radius)))


def jpeg(quality: int) -> Change:
    """Saved as a JPEG of this quality and read back as any photo is."""
    def change(pixels: np.ndarray) -> np.ndarray:
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
        return decode_pixels(buffer.getvalue(), f"JPEG quality {quality}")
    return change
