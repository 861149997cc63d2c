"""facesim.core.images: reading pictures as 8-bit grey pixels, the fast PGM path and Pillow for the rest."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import constant_image, random_grey_pixels
from facesim.core.images import (
    JPEG_MIN_SIDE,
    ImageError,
    decode_pixels,
    grey_pixels as image_grey_pixels,
    load_image,
    load_pixels,
    read_binary_pgm,
)

# ---- load_image -------------------------------------------------------------------


@pytest.mark.parametrize("suffix, fmt", [(".pgm", "PPM"), (".png", "PNG")])
def test_load_image_reads_lossless_formats_exactly(tmp_path: Path, suffix: str, fmt: str):
    pixels = random_grey_pixels()
    path = tmp_path / f"face{suffix}"
    Image.fromarray(pixels).save(path, format=fmt)
    image = load_image(path)
    assert image.mode == "L" and image.size == (10, 12)  # PIL sizes are (width, height)
    assert np.array_equal(np.asarray(image), pixels)


def test_load_image_reads_jpeg_close_to_the_original(tmp_path: Path):
    # JPEG is lossy, so a smooth image comes back close rather than equal
    ramp = np.tile(np.linspace(40, 200, 16), (16, 1)).astype(np.uint8)
    path = tmp_path / "face.jpg"
    Image.fromarray(ramp).save(path, format="JPEG", quality=95)
    image = load_image(path)
    assert image.mode == "L" and image.size == (16, 16)
    assert np.abs(np.asarray(image, dtype=float) - ramp).max() <= 4


@pytest.mark.parametrize(
    "colour, grey",
    # ITU-R 601 luma, as Pillow converts: L = 0.299 R + 0.587 G + 0.114 B, rounded:
    # red 76.2 -> 76, green 149.7 -> 150, blue 29.1 -> 29
    [((255, 0, 0), 76), ((0, 255, 0), 150), ((0, 0, 255), 29), ((255, 255, 255), 255)],
)
def test_load_image_turns_colour_into_grey(tmp_path: Path, colour, grey):
    path = tmp_path / "colour.png"
    constant_image(colour, (4, 3), mode="RGB").save(path)
    image = load_image(path)
    assert image.mode == "L"
    assert np.all(np.asarray(image) == grey)


def test_load_image_missing_file_names_it(tmp_path: Path):
    path = tmp_path / "s1" / "missing.pgm"
    with pytest.raises(ImageError, match="missing.pgm") as info:
        load_image(path)
    assert str(path) in str(info.value) and "not found" in str(info.value)


@pytest.mark.parametrize(
    "name, content",
    [("notes.pgm", b"these are not pixels\n"), ("empty.png", b"")],
)
def test_load_image_non_image_file_names_it(tmp_path: Path, name: str, content: bytes):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ImageError, match="not a readable image") as info:
        load_image(path)
    assert str(path) in str(info.value)


def test_load_image_truncated_file_names_it(tmp_path: Path):
    whole = tmp_path / "whole.png"
    Image.fromarray(random_grey_pixels(64, 64)).save(whole)
    cut = tmp_path / "cut.png"
    cut.write_bytes(whole.read_bytes()[:-200])
    with pytest.raises(ImageError) as info:
        load_image(cut)
    assert str(cut) in str(info.value)


def test_image_error_is_a_value_error():
    assert issubclass(ImageError, ValueError)


# ---- binary PGM reader ---------------------------------------------------------------


def pillow_pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("L"))


@pytest.mark.parametrize(
    "header",
    [
        b"P5\n10 12\n255\n",  # as Pillow and netpbm write it
        b"P5\n# CREATOR: a scanner\n10 12\n255\n",  # a comment line, as in many real files
        b"P5 10\t12 # width height\n\n255 ",  # tabs, a comment after a token, blank line, space before pixels
    ],
)
def test_read_binary_pgm_gives_pillows_pixels(tmp_path: Path, header: bytes):
    pixels = random_grey_pixels()  # 12 high, 10 wide
    path = tmp_path / "face.pgm"
    path.write_bytes(header + pixels.tobytes())
    assert np.array_equal(read_binary_pgm(path.read_bytes()), pixels)
    assert np.array_equal(pillow_pixels(path), pixels)
    assert np.array_equal(load_pixels(path), pixels)
    image = load_image(path)
    assert image.mode == "L" and image.size == (10, 12) and np.array_equal(np.asarray(image), pixels)


def test_read_binary_pgm_reads_what_pillow_writes(tmp_path: Path):
    pixels = random_grey_pixels(112, 92)
    path = tmp_path / "face.pgm"
    Image.fromarray(pixels).save(path, format="PPM")
    assert np.array_equal(read_binary_pgm(path.read_bytes()), pixels)


def test_read_binary_pgm_stretches_a_smaller_maxval_like_pillow(tmp_path: Path):
    # levels out of 100 become out of 255, rounded half to even: 50 -> 127.5 -> 128,
    # 1 -> 2.55 -> 3, 100 -> 255; 200 is above maxval and is clipped to 255
    path = tmp_path / "dim.pgm"
    path.write_bytes(b"P5\n4 1\n100\n" + bytes([50, 1, 100, 200]))
    assert read_binary_pgm(path.read_bytes()).tolist() == [[128, 3, 255, 255]]
    assert np.array_equal(pillow_pixels(path), [[128, 3, 255, 255]])
    # every level of a 4-bit file: 17 grey levels apart
    path.write_bytes(b"P5\n16 1\n15\n" + bytes(range(16)))
    assert read_binary_pgm(path.read_bytes()).tolist() == [list(range(0, 256, 17))]
    assert np.array_equal(pillow_pixels(path), [list(range(0, 256, 17))])


@pytest.mark.parametrize(
    "content",
    [
        b"P5\n4 3\n255\n" + bytes(11),  # truncated: 11 of 12 pixels
        b"P5\n4 3\n65535\n" + bytes(23),  # 16-bit, truncated
        b"P2\n2 1\n255\n0 255\n",  # plain (ASCII) PGM
        b"P5\n0 3\n255\n",  # no pixels
        b"P5\nxx yy\n255\n" + bytes(12),  # garbage header
        b"P5#comment\n4 3\n255\n" + bytes(12),  # comment glued to the magic number
        b"\x89PNG\r\n\x1a\n",
        b"",
    ],
)
def test_read_binary_pgm_leaves_anything_else_to_pillow(content: bytes):
    assert read_binary_pgm(content) is None


def test_load_pixels_of_other_formats_is_pillows_grey(tmp_path: Path):
    path = tmp_path / "colour.png"
    constant_image((255, 0, 0), (4, 3), mode="RGB").save(path)
    pixels = load_pixels(path)
    assert pixels.dtype == np.uint8 and pixels.shape == (3, 4) and np.all(pixels == 76)


def test_load_pixels_missing_file_names_it(tmp_path: Path):
    path = tmp_path / "missing.pgm"
    with pytest.raises(ImageError, match="not found") as info:
        load_pixels(path)
    assert str(path) in str(info.value)


# ---- photos as they come: 16-bit, orientation, transparency, refusals ----------------------


def test_16_bit_pgm_is_scaled_to_8_bits_not_clipped(tmp_path: Path):
    # big-endian samples out of 65535: 0 -> 0, 257 -> 1, 32896 -> 128, 65535 -> 255; out of 1000: 500 -> 128
    levels = np.array([[0, 257, 32896, 65535]], dtype=">u2")
    assert read_binary_pgm(b"P5\n4 1\n65535\n" + levels.tobytes()).tolist() == [[0, 1, 128, 255]]
    path = tmp_path / "deep.pgm"
    path.write_bytes(b"P5\n2 1\n1000\n" + np.array([[500, 1000]], dtype=">u2").tobytes())
    assert load_pixels(path).tolist() == [[128, 255]]


def test_16_bit_png_is_scaled_to_8_bits_not_white(tmp_path: Path):
    levels = np.array([[0, 257 * 10, 257 * 200, 65535]], dtype=np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(levels).save(path)  # Pillow writes I;16 as a 16-bit grey PNG
    assert load_pixels(path).tolist() == [[0, 10, 200, 255]]


def test_float_and_32_bit_images_are_scaled(tmp_path: Path):
    assert image_grey_pixels(Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))).tolist() == [[0, 128, 255]]
    assert image_grey_pixels(Image.fromarray(np.array([[0, 100, 255]], dtype=np.int32))).tolist() == [[0, 100, 255]]
    wide = Image.fromarray(np.array([[0, 65535]], dtype=np.int32))
    assert image_grey_pixels(wide).tolist() == [[0, 255]]


def test_transparent_pixels_are_laid_on_white():
    rgba = Image.new("RGBA", (2, 1), (0, 0, 0, 0))
    rgba.putpixel((1, 0), (0, 0, 0, 255))
    assert image_grey_pixels(rgba).tolist() == [[255, 0]]


def test_exif_orientation_is_applied(tmp_path: Path):
    # a 4 wide x 2 high picture, dark left half, stored with orientation 6 ("rotate 90 degrees clockwise
    # to view"): upright it is 2 wide and 4 high, dark at the top
    stored = np.array([[0, 0, 255, 255], [0, 0, 255, 255]], dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "phone.png"
    Image.fromarray(stored).save(path, exif=exif)
    upright = load_pixels(path)
    assert upright.shape == (4, 2)
    assert upright.tolist() == [[0, 0], [0, 0], [255, 255], [255, 255]]


def test_unreadable_bytes_name_the_source_not_a_buffer():
    with pytest.raises(ImageError) as info:
        decode_pixels(b"not an image at all", "row 3, image1")
    message = str(info.value)
    assert message.startswith("row 3, image1: not a readable image") and "BytesIO" not in message


def test_decompression_bombs_are_refused_naming_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path = tmp_path / "huge.png"
    Image.new("L", (64, 64)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 4096 pixels > 2 x 1000: Pillow's bomb error
    with pytest.raises(ImageError, match="huge.png: refused, too many pixels"):
        load_pixels(path)


# ---- large photos -----------------------------------------------------------------------------------


def flat_photo(size: tuple[int, int]) -> Image.Image:
    """A (width, height) grey picture of two flat areas: grey 100, and a block of 200 in its middle quarter."""
    width, height = size
    photo = Image.new("L", size, 100)
    photo.paste(200, (width // 4, height // 4, 3 * width // 4, 3 * height // 4))
    return photo


def test_a_large_jpeg_is_decoded_at_the_size_detection_needs_without_a_warning(tmp_path: Path,
                                                                               monkeypatch: pytest.MonkeyPatch):
    path = tmp_path / "large.jpg"
    flat_photo((6000, 4000)).save(path, quality=90)
    # 24 megapixels above this limit (and below twice it): Pillow warns of a decompression bomb when it opens it
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 20_000_000)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pixels = load_pixels(path)
    assert [str(w.message) for w in caught] == []
    # libjpeg decoded it at 1/4: the shorter side keeps JPEG_MIN_SIDE (1/8 would leave 500 pixels)
    assert pixels.shape == (1000, 1500) and 1000 >= JPEG_MIN_SIDE > 4000 // 8
    assert abs(int(pixels[500, 750]) - 200) <= 2 and abs(int(pixels[100, 100]) - 100) <= 2


def test_a_jpeg_too_small_to_shrink_is_decoded_whole(tmp_path: Path):
    path = tmp_path / "photo.jpg"
    flat_photo((1200, 1700)).save(path, quality=90)  # its shorter side halved would be below JPEG_MIN_SIDE
    assert load_pixels(path).shape == (1700, 1200)


def test_other_large_pictures_keep_the_warning_and_absurd_ones_the_refusal(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch):
    png, jpeg = tmp_path / "large.png", tmp_path / "absurd.jpg"
    flat_photo((300, 200)).save(png)
    flat_photo((2000, 1800)).save(jpeg)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50_000)  # the PNG's 60,000 pixels: warned, decoded whole
    with pytest.warns(Image.DecompressionBombWarning):
        assert load_pixels(png).shape == (200, 300)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000_000)  # the JPEG's 3.6 million: above twice the limit
    with pytest.raises(ImageError, match="absurd.jpg: refused, too many pixels"):
        load_pixels(jpeg)
