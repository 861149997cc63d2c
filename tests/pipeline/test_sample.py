"""facesim.pipeline.sample: seeded pairs and triplets, split train/val/test, on the `faces_dir` fixture.

The fixture holds 8 training subjects (80 images) and 3 testing subjects (30 images), 10 images
each. With the default params (3 similar + 3 dissimilar pairs and 3 triplets per training image,
2 + 2 pairs and 2 triplets per test image, val_size 0.2) the expected sizes, worked out by hand:

    pairs:    80 x 3 = 240 same, 240 different; val = round(0.2 x 240) = 48 of each
              -> train 384, val 96;  test 30 x (2 + 2) = 120
    triplets: 80 x 3 = 240; val = round(0.2 x 240) = 48 -> train 192, val 48;  test 30 x 2 = 60
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from helpers import repo_params, write_people_dir
from facesim.core.params import ParamsError
from facesim.pipeline.faces import SampleError, all_faces, held_out_faces, list_faces
from facesim.pipeline.pairs import PAIR_COLUMNS, TRIPLET_COLUMNS, make_pairs, make_triplets
from facesim.pipeline.sample import SPLITS, SampleParams, build_samples, split_faces, write_samples

TRAINING_SUBJECTS = {"s1", "s2", "s3", "s4", "s8", "s9", "s10", "s11"}
TESTING_SUBJECTS = {"s5", "s6", "s7"}
# The sample section as the tests were written for: validation pairs drawn among the training people's pairs.
DEFAULTS = repo_params(SampleParams, "sample", split_by="pairs")


@pytest.fixture
def tables(faces_dir: Path) -> dict[str, dict[str, pd.DataFrame]]:
    return build_samples(DEFAULTS, faces_dir)


def unordered(pairs: pd.DataFrame) -> list[frozenset[str]]:
    return [frozenset(p) for p in zip(pairs["image1"], pairs["image2"])]


def subjects_in(table: pd.DataFrame, columns: list[str]) -> set[str]:
    return set().union(*(set(table[c]) for c in columns))


def output_paths(root: Path) -> dict[str, dict[str, Path]]:
    return {kind: {split: root / f"{kind}_{split}.csv" for split in SPLITS} for kind in ("pairs", "triplets")}


def csv_bytes(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(root.glob("*.csv"))}


# ---- the fixture itself ------------------------------------------------------------------------


def test_fixture_faces_are_small_grey_pgms_that_differ(faces_dir: Path) -> None:
    images = sorted(faces_dir.rglob("*.pgm"))
    assert len(images) == 110
    with Image.open(faces_dir / "training" / "s1" / "1.pgm") as first:
        assert (first.format, first.mode, first.size) == ("PPM", "L", (10, 12))
    assert len({p.read_bytes() for p in images}) == 110  # no two images alike


# ---- pairs ------------------------------------------------------------------------------------


def test_sizes_match_the_hand_computed_counts(tables) -> None:
    pairs, triplets = tables["pairs"], tables["triplets"]
    assert {s: len(t) for s, t in pairs.items()} == {"train": 384, "val": 96, "test": 120}
    assert {s: len(t) for s, t in triplets.items()} == {"train": 192, "val": 48, "test": 60}
    # val takes round(0.2 x 240) = 48 of each label: the split keeps the 50/50 share
    assert pairs["val"]["label"].value_counts().to_dict() == {0: 48, 1: 48}
    assert pairs["train"]["label"].value_counts().to_dict() == {0: 192, 1: 192}
    assert pairs["test"]["label"].value_counts().to_dict() == {0: 60, 1: 60}
    for kind, columns in (("pairs", PAIR_COLUMNS), ("triplets", TRIPLET_COLUMNS)):
        for table in tables[kind].values():
            assert list(table.columns) == columns


def test_labels_and_subjects_agree_with_the_paths(tables) -> None:
    for pairs in tables["pairs"].values():
        assert (pairs["label"] == (pairs["subject1"] == pairs["subject2"]).astype(int)).all()
        assert (pairs["subject1"] == pairs["image1"].str.split("/").str[1]).all()
        assert (pairs["subject2"] == pairs["image2"].str.split("/").str[1]).all()
        assert (pairs["image1"] != pairs["image2"]).all()  # no self pair


def test_no_unordered_pair_twice_across_train_and_val(tables) -> None:
    both = unordered(tables["pairs"]["train"]) + unordered(tables["pairs"]["val"])
    assert len(both) == 480
    assert len(set(both)) == 480  # in either order
    assert not set(unordered(tables["pairs"]["train"])) & set(unordered(tables["pairs"]["val"]))
    test = unordered(tables["pairs"]["test"])
    assert len(set(test)) == len(test)


def test_every_image_has_exactly_its_own_pairs(tables) -> None:
    pairs = pd.concat([tables["pairs"]["train"], tables["pairs"]["val"]])
    same, different = pairs[pairs["label"] == 1], pairs[pairs["label"] == 0]
    all_images = {f"training/{s}/{k}.pgm" for s in TRAINING_SUBJECTS for k in range(1, 11)}
    # Each image starts exactly 3 pairs of each label; as a same-subject pair has two ends,
    # each image also takes part in exactly 3 + 3 = 6 of them.
    assert same["image1"].value_counts().to_dict() == dict.fromkeys(all_images, 3)
    assert different["image1"].value_counts().to_dict() == dict.fromkeys(all_images, 3)
    ends = pd.concat([same["image1"], same["image2"]]).value_counts()
    assert ends.to_dict() == dict.fromkeys(all_images, 6)


def test_groups_stay_apart(tables) -> None:
    for kind, columns in (("pairs", ["subject1", "subject2"]),
                          ("triplets", ["anchor_subject", "positive_subject", "negative_subject"])):
        for split in ("train", "val"):
            assert subjects_in(tables[kind][split], columns) == TRAINING_SUBJECTS
        assert subjects_in(tables[kind]["test"], columns) == TESTING_SUBJECTS
    for table in tables["pairs"].values():
        groups = set(table["image1"].str.split("/").str[0]) | set(table["image2"].str.split("/").str[0])
        assert len(groups) == 1


def test_paths_in_csvs_are_relative_and_exist(tables, faces_dir: Path) -> None:
    columns = {"pairs": ["image1", "image2"], "triplets": ["anchor", "positive", "negative"]}
    for kind, splits in tables.items():
        for table in splits.values():
            for path in pd.concat([table[c] for c in columns[kind]]):
                assert not path.startswith("/") and "\\" not in path
                assert (faces_dir / path).is_file()


# ---- triplets --------------------------------------------------------------------------------


def test_triplets_are_well_formed(tables) -> None:
    for triplets in tables["triplets"].values():
        assert (triplets["anchor"] != triplets["positive"]).all()
        assert (triplets["anchor_subject"] == triplets["positive_subject"]).all()
        assert (triplets["anchor_subject"] != triplets["negative_subject"]).all()
        for column in ("anchor", "positive", "negative"):
            assert (triplets[f"{column}_subject"] == triplets[column].str.split("/").str[1]).all()
    both = pd.concat([tables["triplets"]["train"], tables["triplets"]["val"]])
    # every training image anchors exactly 3 triplets, with 3 different positives
    assert (both["anchor"].value_counts() == 3).all() and both["anchor"].nunique() == 80
    assert not both.duplicated(["anchor", "positive"]).any()
    assert (tables["triplets"]["test"]["anchor"].value_counts() == 2).all()


def test_train_and_val_triplets_are_disjoint(tables) -> None:
    train = set(map(tuple, tables["triplets"]["train"][["anchor", "positive", "negative"]].to_numpy()))
    val = set(map(tuple, tables["triplets"]["val"][["anchor", "positive", "negative"]].to_numpy()))
    assert len(train) == 192 and len(val) == 48
    assert not train & val


# ---- split by subjects ------------------------------------------------------------------------


def test_split_by_subjects_keeps_validation_subjects_unseen(faces_dir: Path) -> None:
    params = dataclasses.replace(DEFAULTS, split_by="subjects")
    tables = build_samples(params, faces_dir)
    train_subjects = subjects_in(tables["pairs"]["train"], ["subject1", "subject2"])
    val_subjects = subjects_in(tables["pairs"]["val"], ["subject1", "subject2"])
    # round(0.2 x 8) = 2 validation subjects, 6 training subjects
    assert len(val_subjects) == 2 and len(train_subjects) == 6
    assert train_subjects | val_subjects == TRAINING_SUBJECTS
    assert not train_subjects & val_subjects
    triplet_columns = ["anchor_subject", "positive_subject", "negative_subject"]
    assert subjects_in(tables["triplets"]["train"], triplet_columns) == train_subjects
    assert subjects_in(tables["triplets"]["val"], triplet_columns) == val_subjects
    # 60 training images x 3 triplets, 20 validation images x 3
    assert (len(tables["triplets"]["train"]), len(tables["triplets"]["val"])) == (180, 60)


def test_split_by_subjects_gives_every_image_all_its_pairs(faces_dir: Path) -> None:
    tables = build_samples(dataclasses.replace(DEFAULTS, split_by="subjects"), faces_dir)
    for split, n_images in (("train", 60), ("val", 20)):
        pairs = tables["pairs"][split]
        assert pairs["label"].value_counts().to_dict() == {1: 3 * n_images, 0: 3 * n_images}, split
        assert (pairs[pairs["label"] == 0]["image1"].value_counts() == 3).all(), split


def test_split_by_subjects_needs_two_subjects_on_each_side(faces_dir: Path) -> None:
    params = dataclasses.replace(DEFAULTS, split_by="subjects", val_size=0.1)  # round(0.8) = 1 subject
    with pytest.raises(SampleError, match="each side needs at least 2 subjects"):
        build_samples(params, faces_dir)


# ---- determinism -------------------------------------------------------------------------------


def test_same_params_give_byte_identical_csvs(faces_dir: Path, tmp_path: Path) -> None:
    stats = write_samples(DEFAULTS, faces_dir, output_paths(tmp_path / "a"))
    write_samples(DEFAULTS, faces_dir, output_paths(tmp_path / "b"))
    first = csv_bytes(tmp_path / "a")
    assert len(first) == 6
    assert first == csv_bytes(tmp_path / "b")
    assert first["pairs_train.csv"].startswith(b"image1,image2,subject1,subject2,label\ntraining/s")
    assert b"\r\n" not in first["pairs_train.csv"]
    assert stats["pairs_train_rows"] == 384 and stats["pairs_val_positive_share"] == 0.5
    assert len(pd.read_csv(tmp_path / "a" / "triplets_test.csv")) == 60


def test_another_seed_gives_other_csvs(faces_dir: Path, tmp_path: Path) -> None:
    write_samples(DEFAULTS, faces_dir, output_paths(tmp_path / "a"))
    write_samples(dataclasses.replace(DEFAULTS, seed=7), faces_dir, output_paths(tmp_path / "b"))
    first, second = csv_bytes(tmp_path / "a"), csv_bytes(tmp_path / "b")
    for name in first:
        assert first[name] != second[name], name


def test_changing_test_factors_leaves_training_files_alone(faces_dir: Path) -> None:
    before = build_samples(DEFAULTS, faces_dir)
    after = build_samples(dataclasses.replace(DEFAULTS, test_similar_per_image=1, test_triplets_per_image=3), faces_dir)
    for kind in ("pairs", "triplets"):
        for split in ("train", "val"):
            pd.testing.assert_frame_equal(before[kind][split], after[kind][split])
    assert len(after["pairs"]["test"]) == 30 * (1 + 2)


# ---- bad input -------------------------------------------------------------------------------


def test_similar_pairs_beyond_the_circulant_design_take_every_pair_once(faces_dir: Path) -> None:
    # 10 images give at most (10 - 1) // 2 = 4 distinct same-subject pairs per image;
    # 4 works: val = round(0.2 x 320) + round(0.2 x 240) = 64 + 48
    assert len(build_samples(dataclasses.replace(DEFAULTS, similar_per_image=4), faces_dir)["pairs"]["val"]) == 112
    # 5 is more than 10 images allow: each training subject gives all 10 x 9 / 2 = 45 pairs of its images once
    pairs = make_pairs(list_faces(faces_dir, "training"), 5, 0, np.random.default_rng(0))
    assert len(pairs) == 8 * 45
    assert pairs.groupby("subject1").size().to_dict() == {s: 45 for s in TRAINING_SUBJECTS}
    assert len(set(unordered(pairs))) == 8 * 45


def test_triplets_beyond_the_other_images_take_each_positive_once(faces_dir: Path) -> None:
    # 10 triplets asked for, 9 other images of each subject: 9 per anchor, each positive once
    triplets = build_samples(dataclasses.replace(DEFAULTS, test_triplets_per_image=10), faces_dir)["triplets"]["test"]
    assert len(triplets) == 30 * 9
    per_anchor = triplets.groupby("anchor")["positive"]
    assert (per_anchor.nunique() == 9).all() and (per_anchor.size() == 9).all()
    assert (triplets["negative_subject"] != triplets["anchor_subject"]).all()


def test_any_number_of_images_per_person_samples(tmp_path: Path) -> None:
    # 1, 2, 3 and 6 images with 2 similar pairs and 2 triplets per image, worked out by hand:
    # same pairs: 1 image none; 2 images their 1 pair; 3 images (3 <= 2 x 2) all 3 pairs; 6 images 6 x 2 = 12
    counts = {"one": 1, "two": 2, "three": 3, "six": 6}
    faces = list_faces(write_people_dir(tmp_path / "faces", counts))
    pairs = make_pairs(faces, 2, 1, np.random.default_rng(0))
    same = pairs[pairs["label"] == 1]
    assert same.groupby("subject1").size().to_dict() == {"two": 1, "three": 3, "six": 12}
    assert len(set(unordered(pairs))) == len(pairs)
    assert len(pairs[pairs["label"] == 0]) == 12  # one different-person pair per image
    # triplets: anchors with 1 other image (two) get 1 each, the others 2; "one" is no anchor
    triplets = make_triplets(faces, 2, np.random.default_rng(0))
    assert triplets.groupby("anchor_subject").size().to_dict() == {"two": 2 * 1, "three": 3 * 2, "six": 6 * 2}


@pytest.mark.parametrize(
    "raw, key",
    [
        ({"val_size": 1.5}, "sample.val_size"),
        ({"val_size": 0}, "sample.val_size"),
        ({"seed": "forty-two"}, "sample.seed"),
        ({"similar_per_image": 2.5}, "sample.similar_per_image"),
        ({"dissimilar_per_image": -1}, "sample.dissimilar_per_image"),
        ({"split_by": "images"}, "sample.split_by"),
        ({"similar_per_imgae": 3}, "sample.similar_per_imgae"),
    ],
)
def test_bad_params_name_the_key(raw, key) -> None:
    with pytest.raises(ParamsError, match=key.replace(".", r"\.")):
        repo_params(SampleParams, "sample", **raw)


def test_params_yaml_defaults_parse() -> None:
    raw = {"seed": 1, "val_size": "2.5e-1", "split_by": "subjects"}
    params = repo_params(SampleParams, "sample", **raw)
    assert (params.seed, params.val_size, params.split_by) == (1, 0.25, "subjects")


def test_write_samples_with_a_missing_output_writes_nothing(faces_dir: Path, tmp_path: Path) -> None:
    outputs = output_paths(tmp_path / "out")
    del outputs["triplets"]["val"]
    with pytest.raises(ValueError, match="triplets.val"):
        write_samples(DEFAULTS, faces_dir, outputs)
    assert not (tmp_path / "out").exists()


# ---- layout "people": one folder per person, any format ----------------------------------------------

PEOPLE = {**{f"person{i}": 4 for i in range(1, 9)}, "single1": 1, "single2": 1}


def people_params(**kw) -> SampleParams:
    base = dict(layout="people", similar_per_image=1, dissimilar_per_image=1, triplets_per_image=1,
                test_similar_per_image=1, test_dissimilar_per_image=1, test_triplets_per_image=1)
    return dataclasses.replace(DEFAULTS, **{**base, **kw})


def test_people_layout_holds_out_the_named_people(tmp_path: Path) -> None:
    faces_dir = write_people_dir(tmp_path / "faces", PEOPLE, sizes=[(10, 12), (23, 17)])
    tables = build_samples(people_params(held_out=("person2", "person7", "single2")), faces_dir)

    test_people = set(tables["pairs"]["test"][["subject1", "subject2"]].to_numpy().ravel())
    assert test_people == {"person2", "person7", "single2"}
    for split in ("train", "val"):
        for kind, columns in (("pairs", ["subject1", "subject2"]),
                              ("triplets", ["anchor_subject", "positive_subject", "negative_subject"])):
            seen = set(tables[kind][split][columns].to_numpy().ravel())
            assert not seen & test_people, (kind, split)
    # every format and size of the folder is named by its relative path
    named = set(tables["pairs"]["train"]["image1"]) | set(tables["pairs"]["train"]["image2"])
    assert {Path(p).suffix for p in named} == {".png", ".jpg", ".pgm", ".bmp"}
    assert all((faces_dir / p).is_file() for p in named)


def test_single_image_people_are_negatives_only(tmp_path: Path) -> None:
    faces_dir = write_people_dir(tmp_path / "faces", PEOPLE)
    tables = build_samples(people_params(held_out=("person1", "person2")), faces_dir)
    pairs = pd.concat([tables["pairs"]["train"], tables["pairs"]["val"]])
    triplets = pd.concat([tables["triplets"]["train"], tables["triplets"]["val"]])
    single_people = {"single1", "single2"}
    # no same-person pair and no anchor or positive of a single-image person ...
    same = pairs[pairs["label"] == 1]
    assert not set(same["subject1"]) & single_people
    assert not (set(triplets["anchor_subject"]) | set(triplets["positive_subject"])) & single_people
    # ... but their faces are negatives: in different-person pairs (one pair each of their own) and triplets
    different = pairs[pairs["label"] == 0]
    assert single_people <= set(different["subject1"]) | set(different["subject2"])
    assert [f.subject for f in list_faces(faces_dir)].count("single1") == 1
    # every other training face is an anchor exactly once (triplets_per_image=1)
    assert len(triplets) == 6 * 4


def test_held_out_fraction_draws_people_with_the_seed(tmp_path: Path) -> None:
    faces_dir = write_people_dir(tmp_path / "faces", {f"p{i}": 3 for i in range(1, 21)})

    def held_out(seed: int) -> set[str]:
        _, testing = split_faces(people_params(held_out_fraction=0.25, seed=seed), faces_dir)
        return {f.subject for f in testing}

    assert len(held_out(1)) == 5
    assert held_out(1) == held_out(1)
    assert held_out(1) != held_out(2)


def test_people_layout_gives_byte_identical_csvs_twice(tmp_path: Path) -> None:
    faces_dir = write_people_dir(tmp_path / "faces", PEOPLE)
    params = people_params(held_out_fraction=0.3)
    first = write_samples(params, faces_dir, output_paths(tmp_path / "a"))
    second = write_samples(params, faces_dir, output_paths(tmp_path / "b"))
    assert first == second
    for name in ("pairs_train", "pairs_test", "triplets_val"):
        assert (tmp_path / "a" / f"{name}.csv").read_bytes() == (tmp_path / "b" / f"{name}.csv").read_bytes()


def test_unknown_held_out_person_is_named(tmp_path: Path) -> None:
    faces_dir = write_people_dir(tmp_path / "faces", PEOPLE)
    with pytest.raises(SampleError, match="sample.held_out names nobody9"):
        build_samples(people_params(held_out=("person1", "nobody9")), faces_dir)


def test_held_out_fraction_too_small_is_named(tmp_path: Path) -> None:
    faces_dir = write_people_dir(tmp_path / "faces", PEOPLE)
    with pytest.raises(SampleError, match="held_out_fraction keeps 0 of 10 people"):
        build_samples(people_params(held_out_fraction=0.01), faces_dir)


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"layout": "flat"}, "sample.layout must be one of split, people"),
        ({"held_out": ["s1"]}, "are for sample.layout 'people'"),
        ({"layout": "people"}, "exactly one of sample.held_out"),
        ({"layout": "people", "held_out": ["a"], "held_out_fraction": 0.1}, "exactly one of sample.held_out"),
        ({"layout": "people", "held_out_fraction": 1.0}, "sample.held_out_fraction must be in"),
        ({"layout": "people", "held_out": ["a", "a"]}, "names a person twice"),
    ],
)
def test_bad_layout_params_name_the_key(raw, message) -> None:
    with pytest.raises(ParamsError, match=message):
        repo_params(SampleParams, "sample", **raw)


def test_all_faces_lists_both_layouts(tmp_path: Path, faces_dir: Path) -> None:
    assert len(all_faces(faces_dir, "split")) == 110
    people_dir = write_people_dir(tmp_path / "people", PEOPLE)
    faces = all_faces(people_dir, "people")
    assert len(faces) == 34 and {f.subject for f in faces} == set(PEOPLE)


def test_split_layout_held_out_faces_are_the_testing_folder(faces_dir: Path):
    """For the split layout the test pairs name every face of testing/: evaluate and robustness see what
    they saw when they listed that folder."""
    tables = build_samples(DEFAULTS, faces_dir)
    assert held_out_faces(tables["pairs"]["test"]) == list_faces(faces_dir, "testing")
