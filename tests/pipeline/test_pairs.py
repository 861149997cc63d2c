"""facesim.pipeline.pairs: pairs and triplets drawn by hand-checked counts, the rows split, the partners of the
largest data sets drawn at random. (The sample stage's tables from them: test_sample.py.)"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from facesim.pipeline import pairs as pairs_module
from facesim.pipeline.faces import Face, list_faces
from facesim.pipeline.pairs import make_pairs, split_rows


def unordered(pairs: pd.DataFrame) -> list[frozenset[str]]:
    return [frozenset(p) for p in zip(pairs["image1"], pairs["image2"])]


def test_make_pairs_counts_on_a_tiny_set() -> None:
    # 3 subjects x 5 images, 2 similar + 1 dissimilar each: 15 x 2 = 30 same, 15 x 1 = 15 different.
    faces = [Face(f"training/s{s}/{k}.pgm", f"s{s}") for s in (1, 2, 3) for k in range(1, 6)]
    pairs = make_pairs(faces, 2, 1, np.random.default_rng(0))
    assert pairs["label"].value_counts().to_dict() == {1: 30, 0: 15}
    # 5 images of one subject have 10 unordered pairs; k = 2 = (5-1)/2 takes every one of them
    same = pairs[pairs["label"] == 1]
    assert (same["subject1"].value_counts() == 10).all()
    assert len(set(unordered(pairs))) == 45


def test_split_rows_keeps_each_label_share_and_row_order() -> None:
    table = pd.DataFrame({"x": range(15), "label": [1] * 10 + [0] * 5})
    train, val = split_rows(table, 0.4, np.random.default_rng(0), stratify="label")
    # round(0.4 x 10) = 4 positives and round(0.4 x 5) = 2 negatives go to val
    assert val["label"].value_counts().to_dict() == {1: 4, 0: 2}
    assert len(train) == 9
    assert sorted(train["x"].tolist() + val["x"].tolist()) == list(range(15))
    assert train["x"].is_monotonic_increasing and val["x"].is_monotonic_increasing


def test_more_dissimilar_pairs_than_exist_give_every_one_once() -> None:
    # 2 subjects x 3 images have only 3 x 3 = 9 different-subject pairs; 6 images x 3 asks for 18:
    # s1's images take all 9 (3 each), s2's find every partner taken
    faces = [Face(f"training/s{s}/{k}.pgm", f"s{s}") for s in (1, 2) for k in range(1, 4)]
    different = make_pairs(faces, 1, 3, np.random.default_rng(0)).query("label == 0")
    assert len(different) == 9 and len(set(unordered(different))) == 9
    assert different["image1"].value_counts().to_dict() == {f"training/s1/{k}.pgm": 3 for k in (1, 2, 3)}


def test_other_faces_are_ranked_without_listing_them() -> None:
    # 6 faces, the person's are 2 and 3: the others, in order, are 0, 1, 4, 5
    np.testing.assert_array_equal(pairs_module._OtherFaces(6, [2, 3])[np.arange(4)], [0, 1, 4, 5])
    np.testing.assert_array_equal(pairs_module._OtherFaces(6, [0, 5])[np.array([3, 0, 2])], [4, 1, 3])
    assert pairs_module._OtherFaces(6, [0, 1, 2, 3, 4, 5]).count == 0


def test_random_others_end_with_every_other_face() -> None:
    others = pairs_module._OtherFaces(9, [1, 4])
    drawn = list(pairs_module._random_others(others, 2, np.random.default_rng(0)))
    assert len(drawn) == 8 * 6 + 7 and set(drawn) <= {0, 2, 3, 5, 6, 7, 8}
    assert sorted(drawn[-7:]) == [0, 2, 3, 5, 6, 7, 8]  # after the random draws, all of them in a shuffle


def test_beyond_the_balanced_size_different_person_partners_are_drawn_at_random(faces_dir: Path, monkeypatch) -> None:
    faces = list_faces(faces_dir, "training")  # 80
    balanced = make_pairs(faces, 3, 3, np.random.default_rng(0))
    monkeypatch.setattr(pairs_module, "BALANCED_PAIRS_MAX_FACES", 79)
    drawn = make_pairs(faces, 3, 3, np.random.default_rng(0))
    pd.testing.assert_frame_equal(drawn[drawn["label"] == 1], balanced[balanced["label"] == 1])  # same pairs alike
    different = drawn[drawn["label"] == 0]
    assert len(different) == 80 * 3 and (different.groupby("image1").size() == 3).all()
    assert (different["subject1"] != different["subject2"]).all()
    assert len(set(unordered(drawn))) == len(drawn)  # no pair twice, in either order
    assert not different.equals(balanced[balanced["label"] == 0])
    pd.testing.assert_frame_equal(drawn, make_pairs(faces, 3, 3, np.random.default_rng(0)))
