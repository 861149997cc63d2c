"""facesim.pipeline.faces: the faces of a folder in natural order, and the held-out faces of the test pairs."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from facesim.pipeline.faces import Face, SampleError, held_out_faces, list_faces


def test_list_faces_is_in_natural_order_and_relative(faces_dir: Path) -> None:
    faces = list_faces(faces_dir, "training")
    assert len(faces) == 80
    assert faces[:2] == [Face("training/s1/1.pgm", "s1"), Face("training/s1/2.pgm", "s1")]
    assert faces[9] == Face("training/s1/10.pgm", "s1")  # 10 after 9, not after 1
    assert [f.subject for f in faces[::10]] == ["s1", "s2", "s3", "s4", "s8", "s9", "s10", "s11"]


def test_list_faces_without_the_group_is_a_sample_error(tmp_path: Path) -> None:
    with pytest.raises(SampleError, match="run the fetch stage first"):
        list_faces(tmp_path, "training")
    (tmp_path / "testing" / "s1").mkdir(parents=True)
    with pytest.raises(SampleError, match="no <person>/<image> files"):
        list_faces(tmp_path, "testing")


def test_held_out_faces_are_the_faces_of_the_test_pairs_once_each_in_natural_order():
    pairs = pd.DataFrame({"image1": ["p/s10/1.png", "p/s2/3.png", "p/s2/1.png"],
                          "image2": ["p/s2/1.png", "p/s10/1.png", "p/s2/3.png"],
                          "subject1": ["s10", "s2", "s2"], "subject2": ["s2", "s10", "s2"], "label": [0, 0, 1]})
    faces = held_out_faces(pairs)
    assert [(f.path, f.subject) for f in faces] == [("p/s2/1.png", "s2"), ("p/s2/3.png", "s2"),
                                                    ("p/s10/1.png", "s10")]
