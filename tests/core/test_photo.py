"""Photo changes, and the changed copies a dlib head trains on."""

from __future__ import annotations

import numpy as np
import pytest

from facesim.core.photo import COPY_KINDS, blur, changed_copy, tighter


def face(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(112, 92), dtype=np.uint8)


def test_a_changed_copy_is_the_same_every_time_and_grey_uint8():
    pixels = face()
    for copy in range(2 * len(COPY_KINDS)):
        first, again = changed_copy(pixels, copy), changed_copy(pixels.copy(), copy)
        assert first.dtype == np.uint8 and first.ndim == 2
        assert np.array_equal(first, again)


def test_copies_cycle_through_the_kinds_of_change():
    pixels = face()
    assert COPY_KINDS == ("framing", "rotation", "blur", "light", "jpeg")
    # copy 2 and 7 are blurs: the same size, smoother than the picture (neighbouring pixels closer)
    for copy in (2, 7):
        blurred = changed_copy(pixels, copy).astype(float)
        assert blurred.shape == pixels.shape
        assert np.abs(np.diff(blurred, axis=1)).mean() < np.abs(np.diff(pixels.astype(float), axis=1)).mean() / 2
    # copy 1 is a rotation about the centre: same size, other pixels
    assert changed_copy(pixels, 1).shape == pixels.shape and not np.array_equal(changed_copy(pixels, 1), pixels)


def test_copies_differ_between_faces_and_copy_numbers():
    assert not np.array_equal(changed_copy(face(0), 2), changed_copy(face(0), 7))  # both blurs, other radii
    assert not np.array_equal(changed_copy(face(0), 2), changed_copy(face(1), 2))


def test_tighter_and_blur_by_hand():
    pixels = np.arange(100 * 50, dtype=np.uint8).reshape(100, 50)
    assert tighter(0.1)(pixels).shape == (80, 40)  # 10 rows and 5 columns off each side
    flat = np.full((20, 20), 77, dtype=np.uint8)
    assert np.array_equal(blur(2.0)(flat), flat)  # blurring a flat picture changes nothing


def test_an_unknown_kind_is_refused():
    from facesim.core.photo import _random_change

    with pytest.raises(ValueError, match="unknown kind of change 'fog'"):
        _random_change("fog", np.random.default_rng(0))
