"""facesim.core.data: preparing pictures as model input, faces in memory, augmentation."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import constant_image, random_grey_pixels, tiny_train_params
from facesim.core.data import Augment, FaceSet, Preprocess, prepare_images, prepare_pixels
from facesim.core.images import ImageError, load_image, load_pixels

RNG_SEED = 0


@pytest.mark.parametrize(
    "content, message",
    [
        (b"P5\n4 3\n255\n" + bytes(9), "truncated"),
        (b"P5\nxx yy\n255\n" + bytes(12), "invalid literal"),
        (b"P5\n", "not a readable image"),
    ],
)
def test_a_broken_pgm_is_refused_naming_the_file(level_faces: Path, content: bytes, message: str):
    broken = level_faces / "training" / "s1" / "3.pgm"
    broken.write_bytes(content)
    for load in (load_image, load_pixels):
        with pytest.raises(ImageError, match=message) as info:
            load(broken)
        assert str(broken) in str(info.value)
    with pytest.raises(ImageError, match="s1/3.pgm"):
        FaceSet.load(level_faces, ["training/s1/1.pgm", "training/s1/3.pgm"], PLAIN)


# ---- prepare_images ---------------------------------------------------------------


def test_prepare_images_shape_and_dtype():
    preprocess = Preprocess(height=7, width=5)
    batch = prepare_images([Image.fromarray(random_grey_pixels(12, 10, seed)) for seed in range(3)], preprocess)
    assert batch.shape == (3, 1, 7, 5) and batch.dtype == torch.float32


def test_prepare_images_normalises_a_constant_image_by_hand():
    preprocess = Preprocess(height=6, width=4, mean=0.2, std=0.5)
    batch = prepare_images([constant_image(128, (9, 11))], preprocess)
    # grey 128 -> 128/255 = 0.50196 -> (0.50196 - 0.2) / 0.5 = 0.60392
    assert torch.allclose(batch, torch.full((1, 1, 6, 4), (128 / 255 - 0.2) / 0.5), atol=1e-6)


def test_prepare_images_default_normalisation_maps_black_and_white():
    batch = prepare_images([constant_image(0, (3, 3)), constant_image(255, (3, 3))], Preprocess(height=3, width=3))
    # mean 0.5, std 0.25: black -> (0 - 0.5)/0.25 = -2, white -> (1 - 0.5)/0.25 = 2
    assert torch.allclose(batch[0], torch.tensor(-2.0)) and torch.allclose(batch[1], torch.tensor(2.0))


@pytest.mark.parametrize("size", [(1, 1), (3, 4), (46, 56), (200, 90)])
def test_prepare_images_resizes_any_size(size):
    preprocess = Preprocess(height=16, width=12, mean=0.0, std=1.0)
    batch = prepare_images([constant_image(51, size)], preprocess)
    assert batch.shape == (1, 1, 16, 12)
    # resizing a constant image keeps it constant: 51/255 = 0.2
    assert torch.allclose(batch, torch.tensor(0.2), atol=1e-6)


def test_prepare_images_keeps_left_and_right_and_top_and_bottom():
    # left half black, right half white; then a top-dark/bottom-bright image: a transposed
    # or mirrored resize would swap these
    left_right = np.zeros((20, 10), dtype=np.uint8)
    left_right[:, 5:] = 255
    top_bottom = np.zeros((20, 10), dtype=np.uint8)
    top_bottom[10:, :] = 255
    preprocess = Preprocess(height=8, width=6, mean=0.0, std=1.0)
    batch = prepare_images([Image.fromarray(left_right), Image.fromarray(top_bottom)], preprocess)
    assert torch.all(batch[0, 0, :, 0] < 0.1) and torch.all(batch[0, 0, :, -1] > 0.9)
    assert torch.all(batch[1, 0, 0, :] < 0.1) and torch.all(batch[1, 0, -1, :] > 0.9)


def test_prepare_images_converts_colour_to_grey():
    preprocess = Preprocess(height=2, width=2, mean=0.0, std=1.0)
    batch = prepare_images([constant_image((255, 0, 0), (2, 2), mode="RGB")], preprocess)
    assert batch.shape == (1, 1, 2, 2)
    assert torch.allclose(batch, torch.tensor(76 / 255), atol=1e-6)  # red -> grey 76


def pillow_reference(image: Image.Image, preprocess: Preprocess) -> torch.Tensor:
    """The preparation facesim used before: Pillow's bilinear resize of each image, then normalise."""
    resized = np.asarray(image.resize((preprocess.width, preprocess.height), Image.Resampling.BILINEAR),
                         dtype=np.float32)
    return (torch.from_numpy(resized)[None] / 255 - preprocess.mean) / preprocess.std


@pytest.mark.parametrize("height, width", [(112, 92), (37, 23), (40, 32), (5, 4)])
def test_prepare_images_stays_within_a_grey_level_of_pillows_resize(height: int, width: int):
    # down by 2.8x as for ORL, by an odd ratio, not at all, and up
    preprocess = Preprocess(height=40, width=32)
    images = [Image.fromarray(random_grey_pixels(height, width, seed)) for seed in range(3)]
    batch = prepare_images(images, preprocess)
    reference = torch.stack([pillow_reference(image, preprocess) for image in images])
    # one grey level is 1 / 255 / 0.25 = 0.0157 normalised units
    assert (batch - reference).abs().max() <= 0.02


def test_prepare_images_of_mixed_sizes_keeps_the_order():
    sizes = [(92, 112), (30, 20), (92, 112), (7, 9), (30, 20)]  # (width, height)
    levels = [10, 60, 110, 160, 210]
    images = [constant_image(level, size) for level, size in zip(levels, sizes)]
    preprocess = Preprocess(height=8, width=6, mean=0.0, std=1.0)
    batch = prepare_images(images, preprocess)
    assert batch.shape == (5, 1, 8, 6)
    assert torch.allclose(batch.mean(dim=(1, 2, 3)), torch.tensor(levels) / 255, atol=1e-6)
    # random pixels too: each row equals the image prepared alone, and Pillow's resize of it
    images = [Image.fromarray(random_grey_pixels(height, width, seed)) for seed, (width, height) in enumerate(sizes)]
    batch = prepare_images(images, preprocess)
    for row, image in enumerate(images):
        assert torch.equal(batch[row], prepare_images([image], preprocess)[0])
        assert (batch[row] - pillow_reference(image, preprocess)).abs().max() <= 1.5 / 255


def test_faceset_load_prepares_like_load_image_and_prepare_images(tmp_path: Path):
    relative = ["training/s1/1.pgm", "training/s1/2.png", "training/s2/1.pgm"]
    for seed, name in enumerate(relative):
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(random_grey_pixels(112 - seed, 92, seed)).save(path)
    preprocess = Preprocess(height=40, width=32)
    faces = FaceSet.load(tmp_path, relative, preprocess)
    assert torch.equal(faces.tensor, prepare_images([load_image(tmp_path / p) for p in relative], preprocess))


def test_prepare_images_of_nothing_is_an_empty_batch():
    batch = prepare_images([], Preprocess(height=7, width=5))
    assert batch.shape == (0, 1, 7, 5)


def test_preprocess_to_dict_round_trips():
    preprocess = Preprocess(height=7, width=5, mean=0.1, std=0.3)
    assert Preprocess(**preprocess.to_dict()) == preprocess


# ---- FaceSet ----------------------------------------------------------------------

# relative path -> grey level, so that each row of the tensor tells which file it came from
LEVELS = {"training/s2/1.pgm": 200, "training/s1/2.pgm": 100, "training/s1/1.pgm": 50, "training/s10/1.pgm": 150}


@pytest.fixture
def level_faces(tmp_path: Path) -> Path:
    for relative, level in LEVELS.items():
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        constant_image(level, (10, 12)).save(path, format="PPM")
    return tmp_path


PLAIN = Preprocess(height=4, width=4, mean=0.0, std=1.0)


def test_faceset_load_dedupes_and_sorts_paths(level_faces: Path):
    requested = ["training/s2/1.pgm", "training/s1/1.pgm", "training/s2/1.pgm", "training/s1/2.pgm",
                 "training/s1/1.pgm"]
    faces = FaceSet.load(level_faces, requested, PLAIN)
    assert faces.paths == ["training/s1/1.pgm", "training/s1/2.pgm", "training/s2/1.pgm"]
    assert faces.subjects == ["s1", "s1", "s2"]
    assert faces.tensor.shape == (3, 1, 4, 4)
    # row i holds the image of paths[i]: grey levels 50, 100, 200
    assert torch.allclose(faces.tensor.mean(dim=(1, 2, 3)), torch.tensor([50, 100, 200]) / 255)


def test_faceset_load_accepts_any_iterable(level_faces: Path):
    faces = FaceSet.load(level_faces, (p for p in ["training/s2/1.pgm", "training/s1/1.pgm"]), PLAIN)
    assert faces.paths == ["training/s1/1.pgm", "training/s2/1.pgm"]


def test_faceset_load_missing_image_names_it(level_faces: Path):
    with pytest.raises(ImageError, match="s3/1.pgm"):
        FaceSet.load(level_faces, ["training/s1/1.pgm", "training/s3/1.pgm"], PLAIN)


def test_faceset_rows_map_paths_to_rows(level_faces: Path):
    faces = FaceSet.load(level_faces, LEVELS, PLAIN)
    # sorted: s1/1, s1/2, s10/1, s2/1
    rows = faces.rows(["training/s2/1.pgm", "training/s1/1.pgm", "training/s2/1.pgm", "training/s10/1.pgm"])
    assert rows.dtype == torch.long and rows.tolist() == [3, 0, 3, 2]
    assert torch.allclose(faces.tensor[rows].mean(dim=(1, 2, 3)), torch.tensor([200, 50, 200, 150]) / 255)
    assert faces.rows([]).tolist() == []


def test_faceset_rows_refuses_an_unknown_path(level_faces: Path):
    faces = FaceSet.load(level_faces, ["training/s1/1.pgm"], PLAIN)
    with pytest.raises(ImageError, match="training/s9/9.pgm"):
        faces.rows(["training/s1/1.pgm", "training/s9/9.pgm"])


def test_faceset_table_rows_are_the_rows_of_each_named_column(level_faces: Path):
    import pandas as pd

    faces = FaceSet.load(level_faces, LEVELS, PLAIN)  # sorted: s1/1, s1/2, s10/1, s2/1
    table = pd.DataFrame({"anchor": ["training/s1/2.pgm", "training/s2/1.pgm"],
                          "positive": ["training/s1/1.pgm", "training/s2/1.pgm"],
                          "negative": ["training/s10/1.pgm", "training/s1/1.pgm"], "label": [1, 0]})
    rows = faces.table_rows(table, ("anchor", "positive", "negative"))
    assert rows.dtype == torch.long and rows.tolist() == [[1, 0, 2], [3, 3, 0]]  # (len(table), len(columns))
    assert faces.table_rows(table, ["negative"]).tolist() == [[2], [0]]  # in the order the columns are named
    assert faces.table_rows(table.iloc[:0], ("anchor", "positive")).shape == (0, 2)
    with pytest.raises(ImageError, match="training/s9/9.pgm: not among the loaded faces"):
        faces.table_rows(table.assign(negative=["training/s9/9.pgm", "training/s1/1.pgm"]), ("anchor", "negative"))


def test_faceset_subject_ids_are_equal_exactly_for_the_same_subject(level_faces: Path):
    faces = FaceSet.load(level_faces, LEVELS, PLAIN)
    ids = faces.subject_ids()
    assert ids.dtype == torch.long and ids.shape == (4,)
    # s1, s1, s10, s2
    same = ids[:, None] == ids[None, :]
    subjects = np.array(faces.subjects)
    assert np.array_equal(same.numpy(), subjects[:, None] == subjects[None, :])
    assert sorted(set(ids.tolist())) == [0, 1, 2]


# ---- Augment ----------------------------------------------------------------------


def augment(**changes) -> Augment:
    """The augmentation of params.yaml's train section without blur (`tiny_train_params`), with `changes`."""
    return dataclasses.replace(tiny_train_params().augmentation, **changes)


def random_batch(n: int = 6, height: int = 16, width: int = 12) -> torch.Tensor:
    return torch.randn(n, 1, height, width, generator=torch.Generator().manual_seed(RNG_SEED))


def test_augment_is_deterministic_for_a_seed_and_keeps_shape():
    batch = random_batch()
    first = augment()(batch, torch.Generator().manual_seed(7))
    second = augment()(batch, torch.Generator().manual_seed(7))
    assert first.shape == batch.shape and first.dtype == batch.dtype
    assert torch.equal(first, second)


def test_augment_differs_with_another_seed_and_from_the_input():
    batch = random_batch()
    first = augment()(batch, torch.Generator().manual_seed(7))
    other = augment()(batch, torch.Generator().manual_seed(8))
    assert not torch.allclose(first, other, atol=1e-3)
    assert not torch.allclose(first, batch, atol=1e-3)


def test_augment_does_not_modify_its_input():
    batch = random_batch()
    before = batch.clone()
    augment()(batch, torch.Generator().manual_seed(7))
    assert torch.equal(batch, before)


def test_augment_with_nothing_to_do_returns_the_input():
    identity = augment(max_shift=0.0, max_rotation_deg=0.0, max_scale=0.0, flip=False,
                       max_brightness=0.0, max_contrast=0.0)
    batch = random_batch()
    assert torch.allclose(identity(batch, torch.Generator().manual_seed(7)), batch, atol=1e-5)


def test_augment_flip_alone_mirrors_some_faces_left_right():
    flip_only = augment(max_shift=0.0, max_rotation_deg=0.0, max_scale=0.0, flip=True,
                        max_brightness=0.0, max_contrast=0.0)
    batch = random_batch(n=32)
    out = flip_only(batch, torch.Generator().manual_seed(7))
    mirrored = torch.tensor([torch.allclose(o, b.flip(-1), atol=1e-5) for o, b in zip(out, batch)])
    unchanged = torch.tensor([torch.allclose(o, b, atol=1e-5) for o, b in zip(out, batch)])
    # every face is either mirrored or untouched, and with 32 faces both happen
    assert torch.all(mirrored | unchanged)
    assert mirrored.any() and unchanged.any()


def test_augment_brightness_alone_shifts_each_face_by_a_bounded_constant():
    brightness_only = augment(max_shift=0.0, max_rotation_deg=0.0, max_scale=0.0, flip=False,
                              max_brightness=0.3, max_contrast=0.0)
    batch = random_batch()
    shift = brightness_only(batch, torch.Generator().manual_seed(7)) - batch
    per_face = shift.mean(dim=(1, 2, 3))
    assert torch.allclose(shift, per_face.view(-1, 1, 1, 1).expand_as(shift), atol=1e-5)
    assert torch.all(per_face.abs() <= 0.3 + 1e-6) and per_face.std() > 0


# ---- per-image normalisation and border trimming ------------------------------------------


def test_per_image_normalisation_by_hand():
    # a 2x2 picture of levels 0, 0, 100, 100: mean 50, population std 50 -> -1, -1, +1, +1
    image = Image.fromarray(np.array([[0, 0], [100, 100]], dtype=np.uint8))
    batch = prepare_images([image], Preprocess(height=2, width=2, normalization="per_image"))
    assert batch.flatten().tolist() == [-1.0, -1.0, 1.0, 1.0]


def test_per_image_normalisation_ignores_exposure_and_contrast():
    pixels = np.random.default_rng(0).integers(40, 140, size=(20, 16), dtype=np.uint8)
    brighter = np.clip(pixels.astype(int) * 1.5, 0, 255).astype(np.uint8)
    flatter = (pixels // 2 + 60).astype(np.uint8)
    preprocess = Preprocess(height=20, width=16, normalization="per_image")
    batch = prepare_pixels([pixels, brighter, flatter], preprocess)
    # equal up to the rounding of grey levels
    assert torch.allclose(batch[0], batch[1], atol=0.03) and torch.allclose(batch[0], batch[2], atol=0.06)
    fixed = prepare_pixels([pixels, brighter], Preprocess(height=20, width=16))
    assert not torch.allclose(fixed[0], fixed[1], atol=0.5)


def test_per_image_normalisation_of_a_uniform_picture_is_zeros():
    batch = prepare_pixels([np.full((4, 4), 77, dtype=np.uint8)], Preprocess(height=4, width=4,
                                                                             normalization="per_image"))
    assert torch.count_nonzero(batch) == 0 and torch.isfinite(batch).all()


def test_prepare_with_trimming_sees_a_framed_face_like_the_face():
    face = np.random.default_rng(3).integers(20, 230, size=(28, 24), dtype=np.uint8)
    framed = np.pad(face, ((5, 5), (4, 4)), constant_values=0)
    preprocess = Preprocess(height=28, width=24, trim_borders=True)
    batch = prepare_pixels([face, framed], preprocess)
    assert torch.equal(batch[0], batch[1])
    untrimmed = prepare_pixels([face, framed], Preprocess(height=28, width=24))
    assert not torch.equal(untrimmed[0], untrimmed[1])


def test_a_preprocess_without_the_newer_fields_prepares_as_before():
    # checkpoints written before normalization and trim_borders existed hold only these four keys
    old = Preprocess(**{"height": 4, "width": 4, "mean": 0.5, "std": 0.25})
    assert old.normalization == "fixed" and old.trim_borders is False


# ---- blur augmentation --------------------------------------------------------------------


def test_gaussian_blur_by_hand():
    from facesim.core.data import gaussian_blur

    # one bright pixel blurred by sigma 1: the kernel is exp(-x^2 / 2) normalised, rows times columns
    image = torch.zeros(1, 1, 9, 9)
    image[0, 0, 4, 4] = 1.0
    blurred = gaussian_blur(image, torch.tensor([1.0]))
    kernel = torch.exp(-torch.arange(-3, 4, dtype=torch.float32) ** 2 / 2)
    kernel /= kernel.sum()
    assert torch.allclose(blurred[0, 0, 1:8, 1:8], kernel[:, None] * kernel[None, :], atol=1e-6)
    assert blurred.sum() == pytest.approx(1.0, abs=1e-5)


def test_gaussian_blur_sigma_zero_leaves_an_image_and_each_image_has_its_own():
    from facesim.core.data import gaussian_blur

    batch = torch.rand(2, 1, 8, 6, generator=torch.Generator().manual_seed(0))
    out = gaussian_blur(batch, torch.tensor([0.0, 1.5]))
    assert torch.allclose(out[0], batch[0], atol=1e-6)
    assert not torch.allclose(out[1], batch[1], atol=1e-3)
    assert out[1].std() < batch[1].std()


def test_augment_draws_blur_only_when_asked_so_other_settings_keep_their_numbers():
    batch = torch.rand(4, 1, 16, 12, generator=torch.Generator().manual_seed(1))
    plain = augment()(batch, torch.Generator().manual_seed(7))
    zero_blur = augment(max_blur=0.0)(batch, torch.Generator().manual_seed(7))
    assert torch.equal(plain, zero_blur)
    blurred = augment(max_blur=1.0)(batch, torch.Generator().manual_seed(7))
    assert blurred.shape == batch.shape and not torch.allclose(blurred, plain)


@pytest.mark.parametrize("field, value", [("max_blur", -1.0), ("max_scale", 1.0), ("max_shift", -0.1)])
def test_augment_validate_names_the_key(field, value):
    with pytest.raises(ValueError, match=f"train.augmentation.{field}"):
        augment(**{field: value}).validate()


# ---- faces beyond the in-memory limit: the memory-mapped pixel cache ----------------------------------


def mixed_faces_dir(root: Path) -> tuple[Path, list[str]]:
    """30 faces of 3 people in PNG, JPEG (colour) and PGM, of three sizes, one of them uniform grey."""
    from helpers import write_people_dir

    write_people_dir(root, {"a": 10, "b": 10, "c": 10}, sizes=[(10, 12), (37, 29), (92, 112)])
    constant_image(128, (20, 20)).save(root / "c" / "flat.png")
    return root, sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


@pytest.mark.parametrize("preprocess", [
    Preprocess(height=16, width=12, normalization="per_image"),
    Preprocess(height=16, width=12, normalization="fixed", trim_borders=True),
])
def test_memory_mapped_faces_equal_in_memory_faces_bit_for_bit(tmp_path: Path, preprocess: Preprocess) -> None:
    from facesim.core.data import FacePixels

    root, paths = mixed_faces_dir(tmp_path / "faces")
    in_memory = FaceSet.load(root, paths, preprocess)
    mapped = FaceSet.load(root, paths, preprocess, memory_limit_mb=0, cache_dir=tmp_path / "cache")
    assert isinstance(in_memory.tensor, torch.Tensor) and isinstance(mapped.tensor, FacePixels)
    assert mapped.tensor.shape == in_memory.tensor.shape and len(mapped.tensor) == len(paths)
    generator = torch.Generator().manual_seed(0)
    for size in (1, 5, 17, len(paths)):
        rows = torch.unique(torch.randint(0, len(paths), (size,), generator=generator))
        assert torch.equal(mapped.tensor[rows], in_memory.tensor[rows])
    assert torch.equal(mapped.tensor[3:20], in_memory.tensor[3:20])
    some = paths[::4]
    assert torch.equal(mapped.subset(some).tensor[0:len(some)], in_memory.subset(some).tensor)


def test_pixel_cache_key_changes_with_preprocessing_and_files(tmp_path: Path) -> None:
    import os

    from facesim.core.data import pixel_cache_key

    root, paths = mixed_faces_dir(tmp_path / "faces")
    base = Preprocess(height=16, width=12)
    key = pixel_cache_key(root, paths, base)
    assert pixel_cache_key(root, paths, base) == key
    assert pixel_cache_key(root, paths, Preprocess(height=16, width=12, normalization="per_image")) == key
    assert pixel_cache_key(root, paths, Preprocess(height=16, width=13)) != key
    assert pixel_cache_key(root, paths, Preprocess(height=16, width=12, trim_borders=True)) != key
    assert pixel_cache_key(root, paths[1:], base) != key
    stat = (root / paths[0]).stat()
    os.utime(root / paths[0], ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    assert pixel_cache_key(root, paths, base) != key


def test_a_changed_file_is_decoded_again(tmp_path: Path) -> None:
    root, paths = mixed_faces_dir(tmp_path / "faces")
    preprocess = Preprocess(height=8, width=8, normalization="per_image")
    kw = dict(memory_limit_mb=0, cache_dir=tmp_path / "cache")
    before = FaceSet.load(root, paths, preprocess, **kw).tensor[0:1]
    Image.fromarray(random_grey_pixels(12, 10, seed=5)).save(root / paths[0])
    after = FaceSet.load(root, paths, preprocess, **kw).tensor[0:1]
    assert not torch.equal(before, after)
    assert torch.equal(after, FaceSet.load(root, paths, preprocess).tensor[0:1])
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 2


def test_which_faces_stay_in_memory(monkeypatch) -> None:
    from facesim.core.data import FACES_IN_MEMORY_ENV, faces_in_memory_mb, fits_in_memory

    orl = Preprocess()  # 40 x 32 floats: 5 KiB a face
    assert fits_in_memory(400, orl, 512)  # ORL: 2 MiB
    assert fits_in_memory(20_000, orl, 512)  # 98 MiB
    assert fits_in_memory(104_857, orl, 512) and not fits_in_memory(104_858, orl, 512)
    assert not fits_in_memory(200_000, orl, 512)  # 977 MiB: read from the cache
    monkeypatch.delenv(FACES_IN_MEMORY_ENV, raising=False)
    assert faces_in_memory_mb() == 512
    monkeypatch.setenv(FACES_IN_MEMORY_ENV, "64")
    assert faces_in_memory_mb() == 64
    monkeypatch.setenv(FACES_IN_MEMORY_ENV, "lots")
    with pytest.raises(ValueError, match="FACESIM_FACES_IN_MEMORY_MB must be a number of MiB, got 'lots'"):
        faces_in_memory_mb()


def test_a_missing_file_is_named_when_caching(tmp_path: Path) -> None:
    root, paths = mixed_faces_dir(tmp_path / "faces")
    with pytest.raises(ImageError, match=r"nobody/1\.png: image file not found"):
        FaceSet.load(root, paths + ["nobody/1.png"], Preprocess(height=8, width=8), memory_limit_mb=0,
                     cache_dir=tmp_path / "cache")

