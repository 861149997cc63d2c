"""Photo changes, as the evaluate stage makes them."""

from __future__ import annotations

import numpy as np

from facesim.core.photo import blur, jpeg, looser, rotation, tighter


def test_tighter_looser_and_blur_by_hand():
    pixels = np.arange(100 * 50, dtype=np.uint8).reshape(100, 50)
    assert tighter(0.1)(pixels).shape == (80, 40)  # 10 rows and 5 columns off each side
    framed = looser(0.1)(pixels)
    assert framed.shape == (120, 60) and framed[0, 0] == 0 and np.array_equal(framed[10:110, 5:55], pixels)
    flat = np.full((20, 20), 77, dtype=np.uint8)
    assert np.array_equal(blur(2.0)(flat), flat)  # blurring a flat picture changes nothing


def test_rotation_and_jpeg_keep_the_size_and_stay_grey_uint8():
    pixels = np.random.default_rng(0).integers(0, 256, size=(112, 92), dtype=np.uint8)
    for change in (rotation(15), jpeg(30)):
        changed = change(pixels)
        assert changed.shape == pixels.shape and changed.dtype == np.uint8
        assert not np.array_equal(changed, pixels)
