"""The operating point: how the deployed distance threshold is chosen on people never seen in training.

`evaluate.operating_point: target_far` (the default) takes the largest threshold whose false accept
rate over every pair of the validation faces is at most `evaluate.target_far`, so that a user reads
what the threshold promises (at most 1 in 100 different-person pairs called "same") and pays for it in
false rejects; `best_accuracy` takes the threshold with the best accuracy on those pairs, whose FAR
follows from the mix of same- and different-person pairs the data happens to hold. The evaluate stage
and every cross-validation fold calibrate through `calibrate`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from facesim.core.metrics import calibration_threshold
from facesim.core.params import ParamsError, require

OPERATING_POINTS = ("target_far", "best_accuracy")


@dataclass(frozen=True)
class OperatingPoint:
    """The keys `operating_point` and `target_far` of the evaluate section (which the cv folds read too)."""

    operating_point: Literal["target_far", "best_accuracy"] = "target_far"
    target_far: float = 0.01  # operating_point target_far: the false accept rate the threshold allows

    def validate(self) -> None:
        require(self.operating_point in OPERATING_POINTS,
                f"evaluate.operating_point must be 'target_far' or 'best_accuracy', got {self.operating_point!r}")
        require(0 < self.target_far < 1, "evaluate.target_far must lie strictly between 0 and 1 (a false accept "
                f"rate, e.g. 0.01 for 1%), got {self.target_far}")

    def target(self) -> float | None:
        """The false accept rate the threshold is calibrated for; None for the best accuracy."""
        return self.target_far if self.operating_point == "target_far" else None


def calibrate(embeddings: np.ndarray, people: np.ndarray, target_far: float | None) -> float:
    """`calibration_threshold` of these validation faces; a target FAR their pairs cannot resolve stops the
    stage in one line naming evaluate.target_far and what would work."""
    try:
        return calibration_threshold(embeddings, people, target_far)
    except ValueError as exc:
        if target_far is None:
            raise
        raise ParamsError(f"evaluate.target_far={target_far:g} cannot be calibrated on the validation people: "
                          f"{exc}; choose a larger evaluate.target_far, more validation people (sample.val_size), "
                          "or evaluate.operating_point: best_accuracy") from None
