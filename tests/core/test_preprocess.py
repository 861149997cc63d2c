"""facesim.core.preprocess: model input without torch, the same as training's (`facesim.core.data`, torch).

The resize is checked against torch itself, grey level for grey level: on the ORL faces at every input size
the models use, and on random pictures resized up, down and to odd sizes. Pillow's BILINEAR resize is not
the same (one grey level off in some pixels of every ORL face at 40x32): that is why it is a port.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from helpers import TESTING, needs_orl, random_grey_pixels
from facesim.core.data import Preprocess as DataPreprocess
from facesim.core.data import prepare_pixels
from facesim.core.images import load_pixels
from facesim.core.preprocess import Preprocess, normalise_grey, prepare_grey, resize_grey, trim_uniform_borders


def torch_resize(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    """What training does to 8-bit pixels (`facesim.core.data.resize_pixels`)."""
    batch = torch.from_numpy(pixels.copy())[None, None]
    return F.interpolate(batch, size=(height, width), mode="bilinear", antialias=True, align_corners=False)[0, 0].numpy()


def test_data_takes_preprocess_from_here_not_a_copy():
    assert DataPreprocess is Preprocess


@needs_orl
@pytest.mark.parametrize("height, width", [(40, 32), (56, 46), (112, 92), (16, 16), (41, 33), (224, 184)])
def test_resize_is_torchs_on_every_orl_face(height: int, width: int):
    faces = [load_pixels(path) for path in sorted(TESTING.parent.rglob("*.pgm"))]
    assert len(faces) == 400
    for face in faces:
        assert np.array_equal(resize_grey(face, height, width), torch_resize(face, height, width))


def test_resize_is_torchs_up_down_and_to_odd_sizes():
    rng = np.random.default_rng(7)
    for case in range(60):
        in_height, in_width = (int(n) for n in rng.integers(2, 400, 2))
        # torch's generic (non-AVX2) kernel alone rounds differently for an output 1 pixel wide: no model input
        height, width = (int(n) for n in rng.integers(2, 200, 2))
        if case % 4 == 0:
            height = in_height  # one axis unchanged: torch skips it
        pixels = random_grey_pixels(in_height, in_width, seed=case)
        if case % 3 == 0:
            pixels = (pixels // 64 * 85).astype(np.uint8)  # flat areas and hard edges
        assert np.array_equal(resize_grey(pixels, height, width), torch_resize(pixels, height, width)), \
            (in_height, in_width, height, width)


def test_resize_of_a_large_photo_is_torchs_and_quick():
    pixels = random_grey_pixels(1500, 1100, seed=3)
    assert np.array_equal(resize_grey(pixels, 40, 32), torch_resize(pixels, 40, 32))


def test_resize_refuses_what_is_not_a_grey_picture():
    for bad in (np.zeros((0, 4), np.uint8), np.zeros((3, 4, 3), np.uint8), np.zeros((3, 4), np.float32)):
        with pytest.raises(ValueError, match="expected a non-empty 2-D uint8 grey picture"):
            resize_grey(bad, 4, 4)


@pytest.mark.parametrize("preprocess", [
    Preprocess(height=40, width=32),  # fixed, the checkpoint default
    Preprocess(height=40, width=32, mean=0.45, std=0.3),
    Preprocess(height=24, width=20, normalization="per_image", trim_borders=True),
])
def test_prepare_grey_is_prepare_pixels_without_torch(preprocess: Preprocess):
    pictures = [random_grey_pixels(112, 92, seed=1), np.pad(random_grey_pixels(60, 50, seed=2), 9),
                np.full((30, 30), 90, dtype=np.uint8)]
    ours = prepare_grey(pictures, preprocess)
    theirs = prepare_pixels(pictures, preprocess).numpy()
    assert ours.dtype == np.float32 and ours.shape == theirs.shape == (3, 1, preprocess.height, preprocess.width)
    # the same resized grey levels; per-image statistics summed in another order: the last bit at most
    assert np.abs(ours - theirs).max() <= 1e-6


def test_normalise_by_hand():
    batch = np.array([[[[0, 255], [128, 128]]]], dtype=np.uint8)
    fixed = normalise_grey(batch, Preprocess(mean=0.5, std=0.25))
    assert np.allclose(fixed, [[[[-2.0, 2.0], [(128 / 255 - 0.5) / 0.25] * 2]]], atol=1e-6)
    per_image = normalise_grey(batch, Preprocess(normalization="per_image"))
    levels = np.array([0, 255, 128, 128], dtype=np.float64)
    assert np.allclose(per_image.ravel(), (levels - levels.mean()) / levels.std(), atol=1e-6)
    # a uniform picture stays all zeros; no faces, no numbers
    assert not normalise_grey(np.full((1, 1, 3, 3), 77, np.uint8), Preprocess(normalization="per_image")).any()
    assert normalise_grey(np.zeros((0, 1, 3, 3), np.uint8), Preprocess(normalization="per_image")).shape == (0, 1, 3, 3)


def test_prepare_grey_prepares_pixels_only():
    with pytest.raises(ValueError, match="prepares pixels, not 'dlib'"):
        prepare_grey([random_grey_pixels()], Preprocess(features="dlib"))


def test_trim_uniform_borders_cuts_a_frame_and_nothing_else():
    face = np.random.default_rng(1).integers(0, 256, size=(10, 8), dtype=np.uint8)
    framed = np.pad(face, ((3, 2), (1, 3)), constant_values=0)
    assert np.array_equal(trim_uniform_borders(framed), face)
    assert np.array_equal(trim_uniform_borders(face), face)
    # a frame with JPEG-like noise of a few grey levels is still a frame
    noisy = framed.copy()
    noisy[:3] = np.random.default_rng(2).integers(0, 4, size=noisy[:3].shape)
    assert np.array_equal(trim_uniform_borders(noisy), face)


def test_trim_uniform_borders_keeps_at_least_half_of_each_side():
    flat = np.zeros((10, 10), dtype=np.uint8)
    flat[4, 4] = 255  # one bright pixel in a uniform picture
    assert trim_uniform_borders(flat, keep=0.5).shape == (6, 6)
    assert trim_uniform_borders(np.zeros((10, 10), dtype=np.uint8)).shape == (10, 10)
