"""The operating point: the threshold's calibration pairs and the target FAR, by hand."""

from __future__ import annotations

import numpy as np
import pytest

from facesim.core.params import ParamsError
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
    assert OperatingPoint().target() == 0.01
    assert OperatingPoint(operating_point="best_accuracy").target() is None
    with pytest.raises(ParamsError, match=r"evaluate\.operating_point"):
        OperatingPoint(operating_point="eer").validate()
