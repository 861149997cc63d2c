"""Face finding and ORL framing (facesim.core.detect): on the real ORL faces where data/raw/faces exists,
on ORL faces pasted small into a larger photo, on pictures without a face, and by hand-computed numbers."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from helpers import REPO, modules_imported_by
from facesim.core.detect import (
    ORL_BOX_CENTRE_X,
    ORL_BOX_CENTRE_Y,
    ORL_BOX_WIDTH,
    FaceBox,
    NoFaceError,
    _cascade,
    find_faces,
    frame_face,
    orl_crop,
    orl_region,
)
from facesim.core.images import load_pixels

FACES = REPO / "data" / "raw" / "faces"
ORL_PATHS = sorted(FACES.glob("*/s*/*.pgm")) if FACES.is_dir() else []
needs_orl = pytest.mark.skipif(len(ORL_PATHS) < 400, reason="the ORL faces are not in data/raw/faces (dvc pull/repro fetch)")


def orl_face(subject: int = 1, image: int = 1) -> np.ndarray:
    """One real ORL face (112 high x 92 wide), from whichever of training/testing holds the subject."""
    (path,) = FACES.glob(f"*/s{subject}/{image}.pgm")
    return load_pixels(path)


def paste(face: np.ndarray, size: tuple[int, int], at: tuple[int, int], canvas_shape=(300, 400), noise=False):
    """`face` resized to `size` (width, height) and pasted with its top-left at `at` (x, y)
    into a grey or seeded-noise canvas of `canvas_shape` (height, width)."""
    small = np.asarray(Image.fromarray(face).resize(size, Image.LANCZOS))
    if noise:
        canvas = np.clip(np.random.default_rng(0).normal(128, 30, canvas_shape), 0, 255).astype(np.uint8)
    else:
        canvas = np.full(canvas_shape, 128, dtype=np.uint8)
    x, y = at
    canvas[y : y + size[1], x : x + size[0]] = small
    return canvas


# --- the real ORL faces --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def orl_framed():
    """(pixels, frame_face result or the NoFaceError) for each of the 400 ORL faces: one detection each."""
    results = []
    for path in ORL_PATHS:
        pixels = load_pixels(path)
        try:
            results.append((pixels, frame_face(pixels)))
        except NoFaceError as exc:
            results.append((pixels, exc))
    return results


@needs_orl
def test_a_face_is_found_in_at_least_90_percent_of_orl(orl_framed):
    found = sum(not isinstance(result, NoFaceError) for _, result in orl_framed)
    assert found >= 0.9 * len(orl_framed), f"face found in only {found} of {len(orl_framed)} ORL faces"


@needs_orl
def test_orl_faces_come_back_unchanged(orl_framed):
    for pixels, result in orl_framed:
        if isinstance(result, NoFaceError):
            continue
        framed, box = result
        assert framed.shape == pixels.shape == (112, 92)
        assert np.array_equal(framed, pixels)
        assert isinstance(box, FaceBox)


@needs_orl
def test_the_orl_constants_are_the_medians_of_the_orl_boxes(orl_framed):
    """The module's constants say how they were measured; measuring again gives them back."""
    boxes = [result[1] for _, result in orl_framed if not isinstance(result, NoFaceError)]
    centre_x = np.median([(box.x + box.width / 2) / 92 for box in boxes])
    centre_y = np.median([(box.y + box.height / 2) / 112 for box in boxes])
    width = np.median([box.width / 92 for box in boxes])
    assert (centre_x, centre_y, width) == pytest.approx((ORL_BOX_CENTRE_X, ORL_BOX_CENTRE_Y, ORL_BOX_WIDTH), abs=1e-4)


# --- a small face in a bigger photo ---------------------------------------------------------------


@needs_orl
@pytest.mark.parametrize("noise", [False, True], ids=["grey", "noise"])
def test_a_small_face_in_a_big_photo_is_cropped_around_it(noise):
    x0, y0, width, height = 250, 60, 46, 56  # the pasted ORL picture, half size, in a 400x300 photo
    photo = paste(orl_face(1, 1), (width, height), (x0, y0), noise=noise)

    framed, box = frame_face(photo)

    assert box is not None and framed.shape != photo.shape
    crop_height, crop_width = framed.shape
    assert abs(crop_height - crop_width * 112 / 92) <= 1  # ORL's aspect, to a pixel
    left, top, region_width, region_height = orl_region(box)
    assert (region_height, region_width) == framed.shape
    assert np.array_equal(framed, photo[top : top + crop_height, left : left + crop_width])  # no padding needed here
    # the face box sits where ORL puts it, to a pixel ...
    box_x, box_y = box.centre
    assert abs((box_x - left) - ORL_BOX_CENTRE_X * crop_width) <= 1
    assert abs((box_y - top) - ORL_BOX_CENTRE_Y * crop_height) <= 1
    # ... so the crop is about the pasted ORL picture: its centre near the crop's centre, and a
    # size within 25% (at this small size the detector's box is ~10% larger relative to the face
    # than at ORL's own size, so the crop comes out a little loose).
    assert abs((x0 + width / 2 - left) / crop_width - 0.5) < 0.1
    assert abs((y0 + height / 2 - top) / crop_height - 0.5) < 0.1
    assert 0.9 <= crop_width / width <= 1.25


@needs_orl
def test_the_largest_face_comes_first():
    photo = paste(orl_face(1, 1), (69, 84), (40, 100), canvas_shape=(300, 500))  # 3/4 size, on the left
    photo[80:192, 300:392] = orl_face(12, 1)  # full size, on the right

    faces = find_faces(photo)

    assert len(faces) == 2
    assert faces[0].width > faces[1].width
    assert faces[0].x > 250 > faces[1].x


@needs_orl
def test_frame_face_crops_when_the_face_fills_less_than_min_fill():
    pixels = orl_face(1, 1)
    framed, box = frame_face(pixels, min_fill=2.0)  # ask for a face twice as large as ORL's: crop
    assert np.array_equal(framed, orl_crop(pixels, box))
    assert framed.shape == (orl_region(box)[3], orl_region(box)[2])


# --- no face ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "pixels",
    [
        np.full((112, 92), 128, dtype=np.uint8),
        np.random.default_rng(0).integers(0, 256, size=(300, 400)).astype(np.uint8),
    ],
    ids=["uniform-grey", "noise"],
)
def test_a_picture_without_a_face_raises_no_face_error(pixels):
    assert find_faces(pixels) == []
    with pytest.raises(NoFaceError, match="no face found") as info:
        frame_face(pixels)
    assert isinstance(info.value, ValueError)
    assert "one face looking at the camera" in str(info.value)


def test_pictures_that_are_not_2d_uint8_are_refused_with_what_was_expected():
    with pytest.raises(ValueError, match="2-D uint8"):
        find_faces(np.zeros((112, 92, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="2-D uint8"):
        frame_face(np.zeros((112, 92), dtype=np.float32))
    with pytest.raises(ValueError, match="positive width"):
        orl_region(FaceBox(0, 0, 0, 10))


# --- orl_region and orl_crop by hand ---------------------------------------------------------------


def test_the_constants_are_the_ones_the_hand_computations_below_use():
    assert (ORL_BOX_CENTRE_X, ORL_BOX_CENTRE_Y, ORL_BOX_WIDTH) == (0.4946, 0.5536, 0.9674)


def test_orl_region_by_hand_for_an_orl_sized_box():
    # width 89 / 0.9674 = 91.9992 -> 92; height 92 * 112 / 92 = 112;
    # centre (100 + 44.5, 50 + 44.5) = (144.5, 94.5);
    # left 144.5 - 0.4946 * 92 = 98.9968 -> 99; top 94.5 - 0.5536 * 112 = 32.4968 -> 32
    assert orl_region(FaceBox(100, 50, 89, 89)) == (99, 32, 92, 112)


def test_orl_region_by_hand_for_a_larger_box():
    # width 200 / 0.9674 = 206.74 -> 207; height 207 * 112 / 92 = 252.0 -> 252;
    # centre (10 + 100, 20 + 100) = (110, 120);
    # left 110 - 0.4946 * 207 = 7.618 -> 8; top 120 - 0.5536 * 252 = -19.507 -> -20
    assert orl_region(FaceBox(10, 20, 200, 200)) == (8, -20, 207, 252)


def test_orl_crop_pads_with_edge_pixels_at_the_top_left_corner():
    pixels = np.random.default_rng(1).integers(0, 256, size=(80, 100)).astype(np.uint8)
    # width 60 / 0.9674 = 62.02 -> 62; height 62 * 112 / 92 = 75.48 -> 75; centre (30, 30);
    # left 30 - 0.4946 * 62 = -0.665 -> -1; top 30 - 0.5536 * 75 = -11.52 -> -12
    box = FaceBox(0, 0, 60, 60)
    assert orl_region(box) == (-1, -12, 62, 75)

    crop = orl_crop(pixels, box)

    assert crop.shape == (75, 62) and crop.dtype == np.uint8
    assert np.array_equal(crop[12:, 1:], pixels[0:63, 0:61])  # the picture itself
    assert np.array_equal(crop[:12, 1:], np.broadcast_to(pixels[0, 0:61], (12, 61)))  # top rows: the first row
    assert np.array_equal(crop[12:, 0], pixels[0:63, 0])  # left column: the first column
    assert np.all(crop[:12, 0] == pixels[0, 0])  # the corner: the corner pixel


def test_orl_crop_pads_with_edge_pixels_at_the_bottom_right_corner():
    pixels = np.random.default_rng(2).integers(0, 256, size=(80, 100)).astype(np.uint8)
    box = FaceBox(70, 50, 40, 40)  # itself past the right edge, as find_faces may return it
    left, top, width, height = orl_region(box)
    # width 40 / 0.9674 = 41.35 -> 41; height 41 * 112 / 92 = 49.91 -> 50; centre (90, 70);
    # left 90 - 0.4946 * 41 = 69.72 -> 70; top 70 - 0.5536 * 50 = 42.32 -> 42
    assert (left, top, width, height) == (70, 42, 41, 50)

    crop = orl_crop(pixels, box)

    assert crop.shape == (50, 41)
    inside_rows, inside_cols = 80 - 42, 100 - 70  # 38 rows and 30 columns lie in the picture
    assert np.array_equal(crop[:inside_rows, :inside_cols], pixels[42:, 70:])
    assert np.array_equal(crop[:inside_rows, inside_cols:], np.repeat(pixels[42:, -1:], 41 - inside_cols, axis=1))
    assert np.array_equal(crop[inside_rows:, :inside_cols], np.repeat(pixels[-1:, 70:], 50 - inside_rows, axis=0))
    assert np.all(crop[inside_rows:, inside_cols:] == pixels[-1, -1])


def test_orl_crop_inside_the_picture_is_a_plain_copy():
    pixels = np.random.default_rng(3).integers(0, 256, size=(300, 400)).astype(np.uint8)
    crop = orl_crop(pixels, FaceBox(100, 50, 89, 89))
    assert np.array_equal(crop, pixels[32:144, 99:191])
    crop[:] = 0
    assert pixels[32:144, 99:191].any()  # a copy, not a view into the photo


# --- cost -----------------------------------------------------------------------------------------


def test_the_cascade_is_loaded_once():
    assert _cascade() is _cascade()


def test_importing_the_module_does_not_import_opencv():
    assert modules_imported_by("facesim.core.detect", ["cv2"]) == []
