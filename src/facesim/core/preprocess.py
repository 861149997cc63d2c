"""How a picture becomes model input, in numpy alone: the ONNX path (`facesim.core.onnx_model`) needs no torch.

`Preprocess` is what every checkpoint and every exported ONNX model records of it. Training prepares whole
batches with torch (`facesim.core.data.prepare_pixels`, which takes `Preprocess` and `trim_uniform_borders`
from here); `prepare_grey` gives the same model input for pictures one at a time without torch:

- the resize is torch's antialiased bilinear resize of 8-bit pixels, `F.interpolate(uint8, mode="bilinear",
  antialias=True)`, ported to integer numpy (`resize_grey`), the same grey levels to the bit. Pillow's
  `Image.resize(BILINEAR)` is not: it differs by one grey level in some pixels of all 400 ORL faces at
  40x32 (torch rounds its filter weights to 16-bit integers with as many fraction bits as the largest weight
  allows, as Pillow-SIMD does; Pillow keeps 22 bits). `tests/core/test_preprocess.py` checks the port
  against torch on the ORL faces and on random sizes up and down.
- normalising is the same arithmetic in float32; per-image statistics are summed in another order than
  torch's, so a face's numbers may differ from training's in the last bit (embeddings by far less than 1e-4).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

# The default model input, as params.yaml sets it: ORL's 92x112 faces at 32x40 (9 MFLOP a face).
INPUT_HEIGHT, INPUT_WIDTH = 40, 32


@dataclass(frozen=True)
class Preprocess:
    """How a picture becomes model input; saved in every checkpoint.

    The defaults of the fields after `width` are those of checkpoints written
    before the field existed, so that an older checkpoint is still prepared the
    way it was trained (every checkpoint records its height and width).
    """

    height: int = INPUT_HEIGHT  # model input height in pixels (ORL originals are 112)
    width: int = INPUT_WIDTH  # model input width (ORL originals are 92)
    mean: float = 0.5  # "fixed" normalisation: subtracted after scaling grey levels to [0, 1]
    std: float = 0.25  # "fixed" normalisation: divided by after subtracting the mean
    # "fixed": (x - mean) / std for every face; "per_image": each face to zero mean and unit
    # variance, so that a darker, brighter or flatter photo of a face gives the same input
    normalization: str = "fixed"
    trim_borders: bool = False  # cut away uniform rows and columns at the edges (a frame, a mat)
    # "pixels": the prepared picture (N, 1, height, width); "dlib": dlib's 128-d descriptor of the face
    # (N, 128; `facesim.core.dlib_face`), which a `dlib` backbone's head takes instead of pixels
    features: str = "pixels"

    def to_dict(self) -> dict:
        return asdict(self)


# A row or column at the edge counts as border when its grey levels span at most this many
# levels. A frame or mat added around a picture is one level, or a few after JPEG compression
# (at quality 30 all but the 4 pixels next to the picture stay within 2); a photo's own edge
# rows span more, even blurred (ORL's span 14 or more, 6 or more after a radius-2 blur).
BORDER_SPREAD = 4


def trim_uniform_borders(pixels: np.ndarray, spread: int = BORDER_SPREAD, keep: float = 0.5) -> np.ndarray:
    """`pixels` without the near-uniform rows and columns around them, each side trimmed until its
    edge row (column) spans more than `spread` grey levels; at least `keep` of each side stays."""
    height, width = pixels.shape
    row_spread = pixels.max(axis=1).astype(np.int16) - pixels.min(axis=1)
    col_spread = pixels.max(axis=0).astype(np.int16) - pixels.min(axis=0)

    def edges(spreads: np.ndarray, limit: int) -> tuple[int, int]:
        busy = np.flatnonzero(spreads > spread)
        if busy.size == 0:
            return 0, len(spreads)
        return min(int(busy[0]), limit), max(int(busy[-1]) + 1, len(spreads) - limit)

    top, bottom = edges(row_spread, int(height * (1 - keep) / 2))
    left, right = edges(col_spread, int(width * (1 - keep) / 2))
    return pixels[top:bottom, left:right]


# torch's integer filter weights fit in int16: at most this many fraction bits (Pillow's own precision)
_MAX_WEIGHT_BITS = 22


def _filter_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, int]:
    """One axis of torch's antialiased bilinear resize: for each output pixel the first input pixel it
    reads, its integer weights (out_size, taps), and their fraction bits.

    The float64 arithmetic is torch's (`_compute_indices_min_size_weights_aa`, then
    `compute_index_ranges_int16_weights`), step by step in the same order: C's casts truncate
    toward zero as `astype` does, and each row's weights are summed left to right (`cumsum`),
    not pairwise as `np.sum` would."""
    scale = in_size / out_size
    support = scale if scale >= 1.0 else 1.0  # the triangle's half-width, widened when shrinking
    inverse = 1.0 / scale if scale >= 1.0 else 1.0
    taps = math.ceil(support) * 2 + 1
    centres = scale * (np.arange(out_size) + 0.5)
    first = np.maximum((centres - support + 0.5).astype(np.int64), 0)
    count = np.clip(np.minimum((centres + support + 0.5).astype(np.int64), in_size) - first, 0, taps)
    offsets = np.arange(taps)
    weights = np.maximum(1.0 - np.abs(((offsets + first[:, None]) - centres[:, None] + 0.5) * inverse), 0.0)
    weights[offsets >= count[:, None]] = 0.0
    totals = np.cumsum(weights, axis=1)[:, -1:]
    weights = np.divide(weights, totals, out=np.zeros_like(weights), where=totals != 0)
    largest = float(weights.max())
    bits = 0
    while bits < _MAX_WEIGHT_BITS and int(0.5 + largest * (1 << (bits + 1))) < (1 << 15):
        bits += 1
    return first, np.floor(0.5 + weights * (1 << bits)).astype(np.int64), bits


def _resize_axis(pixels: np.ndarray, out_size: int, axis: int) -> np.ndarray:
    in_size = pixels.shape[axis]
    if in_size == out_size:  # torch skips an axis whose size stays
        return pixels
    first, weights, bits = _filter_taps(in_size, out_size)
    source = np.moveaxis(pixels, axis, -1)
    total = np.full(source.shape[:-1] + (out_size,), 1 << (bits - 1), dtype=np.int64)  # rounds the shift below
    for tap in range(weights.shape[1]):
        total += source[..., np.minimum(first + tap, in_size - 1)].astype(np.int64) * weights[:, tap]
    return np.moveaxis(np.clip(total >> bits, 0, 255).astype(np.uint8), -1, axis)


def resize_grey(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    """(H, W) uint8 grey pixels at `height` x `width`: torch's antialiased bilinear resize of uint8, bit for bit
    (rows first, then columns, each rounded to whole grey levels)."""
    if pixels.ndim != 2 or pixels.dtype != np.uint8 or pixels.size == 0:
        raise ValueError(f"expected a non-empty 2-D uint8 grey picture, got shape {pixels.shape} and dtype {pixels.dtype}")
    return _resize_axis(_resize_axis(pixels, width, 1), height, 0)


def normalise_grey(batch: np.ndarray, preprocess: Preprocess) -> np.ndarray:
    """Resized grey levels (N, 1, H, W) as float32 model input, each face on its own (numpy's
    `facesim.core.data.normalise`)."""
    batch = batch.astype(np.float32)
    if preprocess.normalization == "per_image":
        flat = batch.reshape(len(batch), int(np.prod(batch.shape[1:])))
        # the statistics in float64, rounded once: torch's float32 sums differ from them by an ulp at most
        mean = flat.mean(axis=1, dtype=np.float64, keepdims=True).astype(np.float32)
        # a uniform picture has no contrast to scale: it stays all zeros rather than dividing by zero
        std = np.maximum(flat.std(axis=1, dtype=np.float64, keepdims=True), 1.0).astype(np.float32)
        return ((flat - mean) / std).reshape(batch.shape)
    return (batch / np.float32(255.0) - np.float32(preprocess.mean)) / np.float32(preprocess.std)


def prepare_grey(pixels: Sequence[np.ndarray], preprocess: Preprocess) -> np.ndarray:
    """(height, width) uint8 grey pictures as model input, (N, 1, height, width) float32, as training prepares
    them (`features: pixels`; dlib's descriptors come from `facesim.core.dlib_face`)."""
    if preprocess.features != "pixels":
        raise ValueError(f"prepare_grey prepares pixels, not {preprocess.features!r} features")
    resized = np.empty((len(pixels), 1, preprocess.height, preprocess.width), dtype=np.uint8)
    for row, array in enumerate(pixels):
        if preprocess.trim_borders:
            array = trim_uniform_borders(array)
        resized[row, 0] = resize_grey(array, preprocess.height, preprocess.width)
    return normalise_grey(resized, preprocess)
