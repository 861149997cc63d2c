"""The operating point: the threshold's calibration pairs and the target FAR, by hand."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import yaml

from facesim.core.params import ParamsError, parse_section
from facesim.pipeline.calibration import OperatingPoint, calibrate, calibration_pairs

# validation faces of people a, a, b on a line at 0, 1, 5; training faces at 2 and 9
VALIDATION = np.array([[0.0], [1.0], [5.0]])
PEOPLE = np.array(["a", "a", "b"])
TRAINING = np.array([[2.0], [9.0]])


def test_calibration_pairs_add_every_validation_face_against_every_training_face_at_a_target():
    distances, same = calibration_pairs(VALIDATION, PEOPLE, 0.01, TRAINING)
    # unordered validation pairs (0,1) same 1, (0,5) 5, (1,5) 4; then 0-2, 0-9, 1-2, 1-9, 5-2, 5-9: different
    assert distances.tolist() == [1.0, 5.0, 4.0, 2.0, 9.0, 1.0, 8.0, 3.0, 4.0]
    assert same.tolist() == [1, 0, 0, 0, 0, 0, 0, 0, 0]
    # at the best accuracy the validation pairs alone: the mix of same and different is theirs
    distances, same = calibration_pairs(VALIDATION, PEOPLE, None, TRAINING)
    assert distances.tolist() == [1.0, 5.0, 4.0] and same.tolist() == [1, 0, 0]


def test_calibrate_at_a_target_far_by_hand():
    # 8 different-person pairs: 1, 2, 3, 4, 4, 5, 8, 9. FAR 1/8 allows one (1): rejected from 2 on; below 2 the
    # largest distance is 1 (the same pair and the 1): threshold 1.5
    assert calibrate(VALIDATION, PEOPLE, 1 / 8, TRAINING) == 1.5
    # FAR 3/8 allows three (1, 2, 3): rejected from the first 4; below it 3: threshold 3.5
    assert calibrate(VALIDATION, PEOPLE, 3 / 8, TRAINING) == 3.5


def test_a_target_the_pairs_cannot_resolve_names_the_key_and_what_would_work():
    with pytest.raises(ParamsError, match=r"evaluate\.target_far=0\.01 cannot be calibrated.*needs at least 100 "
                                          r"different-person pairs.*got 8.*operating_point: best_accuracy"):
        calibrate(VALIDATION, PEOPLE, 0.01, TRAINING)


def test_the_operating_point_section():
    evaluate = yaml.safe_load((Path(__file__).parents[2] / "params.yaml").read_text())["evaluate"]
    point = parse_section(OperatingPoint, {k: evaluate[k] for k in ("operating_point", "target_far")}, "evaluate")
    assert point.target() == evaluate["target_far"] == 0.004
    assert dataclasses.replace(point, operating_point="best_accuracy").target() is None
    with pytest.raises(ParamsError, match=r"evaluate\.operating_point must be one of target_far, best_accuracy"):
        parse_section(OperatingPoint, {"operating_point": "eer", "target_far": 0.01}, "evaluate")


def test_calibrate_uses_every_unordered_pair_by_hand():
    # Faces on a line: A at 0 and 2, B at 3 and 4, C at 10. The 10 unordered pairs:
    #   same A-A = 2, B-B = 1; different 0-3 = 3, 0-4 = 4, 2-3 = 1, 2-4 = 2, A/B-C = 10, 8, 7, 6.
    # Sorted distances 1 (s, d), 2 (s, d), 3, 4, 6, 7, 8, 10 (all d). Accepting distances <= t:
    #   below 1: 8 right (the 8 different); <= 1: 8 (one same in, one different in); <= 2: 8; <= 3: 7.
    #   The first best is below the smallest distance, so nothing is accepted: a threshold just under 1.
    embeddings = np.array([[0.0], [2.0], [3.0], [4.0], [10.0]])
    people = np.array(["A", "A", "B", "B", "C"])
    threshold = calibrate(embeddings, people, None)
    assert threshold < 1.0 and threshold == pytest.approx(1.0)
    # with B's faces one apart and far from A, the same-person pairs separate: t = (2 + 3) / 2
    embeddings = np.array([[0.0], [2.0], [5.0], [6.0], [20.0]])
    assert calibrate(embeddings, people, None) == 2.5  # same 2, 1; nearest different 5 - 2 = 3


def test_calibrate_on_the_validation_faces_alone_at_a_target_far_by_hand():
    # faces 0, 1 (person a) and 2, 3, 4 (person b) on a line at 0, 1, 5, 6, 9: different pairs 5, 6, 9, 4, 5, 8;
    # same 1, 1, 4, 3. FAR 1/6 allows one false accept (4, from 1 to 5): rejected from the second (5 on);
    # the largest distance below 5 is 4: threshold 4.5
    embeddings = np.array([[0.0], [1.0], [5.0], [6.0], [9.0]])
    people = np.array(["a", "a", "b", "b", "b"])
    assert calibrate(embeddings, people, 1 / 6) == 4.5
    assert calibrate(embeddings, people, None) == calibrate(embeddings, people, None)
