"""The operating point: how the deployed distance threshold is chosen on people never seen in training.

`evaluate.operating_point: target_far` (the default) takes the largest threshold whose false accept
rate over every pair of the validation faces is at most `evaluate.target_far`, so that a user reads
what the threshold promises (at most 4 in 1,000 different-person pairs called "same" at the default 0.004) and pays for it in
false rejects; `best_accuracy` takes the threshold with the best accuracy on those pairs, whose FAR
follows from the mix of same- and different-person pairs the data happens to hold. The evaluate stage
and every cross-validation fold calibrate through `calibrate` (a fold, which keeps the pairs to report
their FAR, through `threshold_on_pairs`, the same rule).

A false accept rate is decided by look-alikes, and 7 validation people make only 21 pairs of people:
whether one of them looks like another decides the threshold. So at a target FAR the different-person
pairs are also every (validation face, training face) pair: the validation people are still never
seen in training, and are now set against some 30 other people. On every fold and seed of the
cross-validation this brought the FAR realised on unseen people at a 1% target from 5.3% to 2.0% for
the dlib head, and from 3.7% to 3.4% (FRR 21.7% to 18.3%) for the compact triplet model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from facesim.core.metrics import calibrated_threshold, pair_distances, unordered_pair_distances
from facesim.core.params import ParamsError, require


@dataclass(frozen=True)
class OperatingPoint:
    """The keys `operating_point` and `target_far` of the evaluate section (which the cv folds read too)."""

    operating_point: Literal["target_far", "best_accuracy"]
    target_far: float  # operating_point target_far: the false accept rate the threshold allows

    def validate(self) -> None:
        require(0 < self.target_far < 1, "evaluate.target_far must lie strictly between 0 and 1 (a false accept "
                f"rate, e.g. 0.01 for 1%), got {self.target_far}")

    def target(self) -> float | None:
        """The false accept rate the threshold is calibrated for; None for the best accuracy."""
        return self.target_far if self.operating_point == "target_far" else None


def calibration_pairs(embeddings: np.ndarray, people: np.ndarray, target_far: float | None,
                      others: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(distances, same) of the pairs the threshold is calibrated on: every unordered pair of these validation
    faces (`embeddings`, whose person is `people[i]`) and, at a target FAR, every pair of one of them with
    one of `others` (embeddings of faces of the training people: different-person pairs)."""
    _, _, same, distances = unordered_pair_distances(embeddings, np.asarray(people))
    if target_far is not None and others is not None and len(others):
        both = np.concatenate([embeddings, others])
        first = np.repeat(np.arange(len(embeddings)), len(others))
        second = len(embeddings) + np.tile(np.arange(len(others)), len(embeddings))
        distances = np.concatenate([distances, pair_distances(both, first, second)])
        same = np.concatenate([same, np.zeros(len(first), dtype=same.dtype)])
    return distances, same


def calibrate(embeddings: np.ndarray, people: np.ndarray, target_far: float | None,
              others: np.ndarray | None = None) -> float:
    """The deployed threshold on the `calibration_pairs`: at `target_far`, or the best accuracy (None)."""
    return threshold_on_pairs(*calibration_pairs(embeddings, people, target_far, others), target_far)


def threshold_on_pairs(distances: np.ndarray, same: np.ndarray, target_far: float | None) -> float:
    """The deployed threshold on calibration pairs (`distances`, `same`). A target FAR the pairs cannot resolve
    stops the stage in one line naming evaluate.target_far and what would work."""
    try:
        return calibrated_threshold(distances, same, target_far)
    except ValueError as exc:
        if target_far is None:
            raise
        raise ParamsError(f"evaluate.target_far={target_far:g} cannot be calibrated on the validation people: "
                          f"{exc}; choose a larger evaluate.target_far, more validation people (sample.val_size), "
                          "or evaluate.operating_point: best_accuracy") from None
