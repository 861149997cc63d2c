"""Reading pictures as 8-bit grey pixels, without torch: the render stage and the CLI need only this.

Binary PGM files, the format of ORL, are decoded with numpy directly, about
four times faster than through Pillow; every other file goes through Pillow,
with its EXIF orientation applied (phone photos are stored sideways with a tag
saying so) and 16-bit or floating-point grey scaled to 8 bits rather than
clipped. A large JPEG is decoded at a fraction of its size, as large as the
face detector and the models need (`JPEG_MIN_SIDE`). Training, evaluation, the
command line and the served model all read pictures through `decode_pixels`.
Errors name the file.
"""

from __future__ import annotations

import io
import os
import re
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError


class ImageError(ValueError):
    """An image file is missing or cannot be decoded."""


# "P5", then width, height and maxval as decimal tokens apart by whitespace or
# "#" comments running to the end of the line, then exactly one whitespace byte
# before the pixels: the header as netpbm writes it and Pillow reads it.
_GAP = rb"\s(?:\s|#[^\r\n]*[\r\n])*"
_PGM_HEADER = re.compile(rb"P5" + _GAP + rb"(\d{1,10})" + _GAP + rb"(\d{1,10})" + _GAP + rb"(\d{1,10})\s")


def read_binary_pgm(data: bytes) -> np.ndarray | None:
    """Pixels (height, width) uint8 of a binary PGM file's bytes; 8-bit exactly as Pillow decodes them.

    A 16-bit file (maxval above 255, big-endian samples) is scaled to 0..255 by
    level / maxval, rounded. None for anything else (other formats, odd headers,
    truncated files), which then goes to Pillow and its error messages.
    """
    header = _PGM_HEADER.match(data)
    if header is None:
        return None
    width, height, maxval = (int(token) for token in header.groups())
    wide = maxval > 255
    if not (width > 0 and height > 0 and 0 < maxval < 65536) or \
            len(data) - header.end() < width * height * (2 if wide else 1):
        return None
    if wide:
        levels = np.frombuffer(data, dtype=">u2", count=width * height, offset=header.end()).reshape(height, width)
        return np.rint(np.minimum(levels, maxval) * (255.0 / maxval)).astype(np.uint8)
    pixels = np.frombuffer(data, dtype=np.uint8, count=width * height, offset=header.end()).reshape(height, width)
    if maxval < 255:
        # Pillow stretches levels 0..maxval to 0..255 with Python's round (half to even)
        stretch = np.array([min(255, round(level / maxval * 255)) for level in range(256)], dtype=np.uint8)
        pixels = stretch[pixels]
    return pixels


def _read_bytes(path: Path) -> bytes:
    try:
        # unbuffered: one read of the whole file, 1.4x faster than Path.read_bytes for small files
        with open(path, "rb", buffering=0) as file:
            return file.read()
    except FileNotFoundError:
        raise ImageError(f"{path}: image file not found") from None
    except OSError as exc:
        raise ImageError(f"{path}: not a readable image ({exc}); give a file Pillow opens (PGM, PNG, JPEG, ...)") from None


def grey_pixels(image: Image.Image) -> np.ndarray:
    """8-bit grey pixels (height, width) of a Pillow image of any mode.

    Pillow's own convert("L") clips 16-bit and 32-bit grey at 255, which turns
    a 16-bit PNG or TIFF white: those are scaled instead (16-bit by 257, the
    ratio of the two full scales; floating point from 0..1 when it lies there).
    Transparent pixels are laid on white, as a viewer shows them.
    """
    if image.mode.startswith("I;16"):
        levels = np.asarray(image.convert("I"), dtype=np.float64)
        return np.rint(np.clip(levels, 0, 65535) / 257.0).astype(np.uint8)
    if image.mode in ("I", "F"):
        levels = np.asarray(image, dtype=np.float64)
        finite = levels[np.isfinite(levels)]
        top = float(finite.max()) if finite.size else 0.0
        if image.mode == "F" and top <= 1.0:
            scale = 255.0
        elif top > 255:
            scale = 255.0 / 65535.0  # 16-bit samples widened to 32 bits, as Pillow opens most 16-bit PNGs
        else:
            scale = 1.0
        return np.rint(np.clip(np.nan_to_num(levels) * scale, 0, 255)).astype(np.uint8)
    if image.mode in ("LA", "PA", "RGBA", "RGBa", "La") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return np.asarray(image if image.mode == "L" else image.convert("L"))


# A JPEG is decoded at 1/2, 1/4 or 1/8 of its size (libjpeg scales while decoding: Pillow's draft mode) as
# far as its shorter side keeps this many pixels. The face detector looks for faces down to 1/8 of the
# shorter side (`facesim.core.detect`), which then still span 112 pixels, ORL's face height: all any model
# takes (compact: 40x32; dlib's HOG finds ORL's 92x112 faces as they are). A 100-megapixel photo is decoded
# at 1.5 megapixels: 5 MB of RGB, not 300.
JPEG_MIN_SIDE = 8 * 112


def _draft_jpeg(image: Image.Image) -> bool:
    """Have an opened, not yet loaded JPEG decoded at the smallest scale that keeps JPEG_MIN_SIDE on its shorter
    side; True when that is smaller than the picture."""
    if image.format not in ("JPEG", "MPO"):
        return False
    scale = next((s for s in (8, 4, 2) if min(image.size) // s >= JPEG_MIN_SIDE), 1)
    if scale == 1:
        return False
    # libjpeg's scale is the largest of 8, 4, 2 that the size asked for divides the picture by
    image.draft(image.mode, (image.width // scale, image.height // scale))
    return True


def _decode_with_pillow(name: str, data: bytes) -> np.ndarray:
    """Pillow's 8-bit grey pixels of a file's bytes, upright as its EXIF orientation says."""
    try:
        # Pillow warns of a picture above 89 megapixels when it opens it (and refuses one above 179): a JPEG
        # decoded at a fraction of its size is no such risk, so its warning is dropped; any other keeps it
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", Image.DecompressionBombWarning)
            opened = Image.open(io.BytesIO(data))
        with opened as image:
            drafted = _draft_jpeg(image)
            for warning in caught:
                if not (drafted and issubclass(warning.category, Image.DecompressionBombWarning)):
                    warnings.warn(warning.message, warning.category, stacklevel=2)
            image.load()
            return grey_pixels(ImageOps.exif_transpose(image))
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{name}: refused, too many pixels to decode safely ({exc}); scale the photo down first") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        # Pillow names the in-memory buffer (<_io.BytesIO object at 0x...>), which tells a user nothing
        detail = "not an image format Pillow knows" if isinstance(exc, UnidentifiedImageError) else str(exc)
        raise ImageError(f"{name}: not a readable image ({detail}); give a file Pillow opens (PGM, PNG, JPEG, ...)") from None


def decode_pixels(data: bytes, name: str) -> np.ndarray:
    """8-bit grey pixels (height, width) of an image file's bytes; `name` (its path, or where it
    came from) is what errors say."""
    pixels = read_binary_pgm(data)
    return pixels if pixels is not None else _decode_with_pillow(name, data)


def load_pixels(path: str | os.PathLike) -> np.ndarray:
    """8-bit grey pixels (height, width) of any image Pillow reads; errors name the file."""
    path = Path(path)
    return decode_pixels(_read_bytes(path), str(path))


def load_image(path: str | os.PathLike) -> Image.Image:
    """Open any image Pillow reads, as 8-bit grey; errors name the file."""
    return Image.fromarray(load_pixels(path))
