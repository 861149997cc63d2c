"""Verification metrics on embedding distances, and the distances themselves (retrieval: `facesim.core.retrieval`).

Conventions: a distance is lower for more similar faces; a pair label is 1 for the
same person and 0 for different people; every metric comes back as a plain float/int.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# The false accept rates at which the true accept rate is reported (face verification's usual points),
# under the names the metric keys carry: tar_at_far_1e-2, tar_at_far_1e-3.
REPORTED_FARS = {"1e-2": 0.01, "1e-3": 0.001}


def _validate_pairs(
    distances: np.ndarray, labels: np.ndarray, need_both_classes: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    distances = np.asarray(distances, dtype=np.float64)
    labels = np.asarray(labels)
    if distances.ndim != 1 or labels.ndim != 1:
        raise ValueError(
            f"distances and labels must be 1-D, got shapes {distances.shape} and {labels.shape}"
        )
    if len(distances) != len(labels):
        raise ValueError(
            f"distances and labels differ in length: {len(distances)} vs {len(labels)}"
        )
    if len(distances) == 0:
        raise ValueError("distances and labels are empty: expected at least one pair")
    if not np.all(np.isfinite(distances)):
        raise ValueError("distances must all be finite")
    if not np.all((labels == 0) | (labels == 1)):
        raise ValueError(f"labels must be 0 or 1, got values {np.unique(labels)[:10].tolist()}")
    labels = labels.astype(np.int64)
    if need_both_classes and len(np.unique(labels)) < 2:
        raise ValueError(
            "labels hold a single class: ROC AUC and EER need both same (1) and different (0) pairs"
        )
    return distances, labels


def validate_embeddings(embeddings: np.ndarray, name: str = "embeddings") -> np.ndarray:
    """`embeddings` as a non-empty (N, D) float64 array of finite numbers, or a ValueError naming `name`."""
    embeddings = np.asarray(embeddings, dtype=np.float64)
    if embeddings.ndim != 2 or embeddings.shape[0] == 0:
        raise ValueError(
            f"{name} must be a non-empty 2-D (N, D) array, got shape {embeddings.shape}"
        )
    if not np.all(np.isfinite(embeddings)):
        raise ValueError(f"{name} must all be finite")
    return embeddings


def _roc_counts(distances: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(false accepts, true accepts, distance) at each distinct distance, closest first: the counts of
    scikit-learn's `roc_curve` bit for bit (its stable descending sort of the negated distance, float64
    cumulative sums), without importing scikit-learn (0.6 s in every stage that scores pairs)."""
    scores = -distances
    order = len(scores) - 1 - np.argsort(scores[::-1], kind="stable")[::-1]  # descending, ties in their order
    scores, same = scores[order], labels[order].astype(np.float64)
    last = np.append(np.flatnonzero(np.diff(scores)), len(scores) - 1)  # the last pair of each distinct distance
    accepted_same = np.cumsum(same)[last]
    accepted_different = 1 + last.astype(np.float64) - accepted_same
    return accepted_different, accepted_same, -scores[last]


def roc_points(
    distances: np.ndarray, labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) of "same person when distance <= threshold", one point per distinct distance.

    The first threshold is -inf: nothing is predicted same there. The same numbers as scikit-learn's
    `roc_curve(labels, -distances, drop_intermediate=False)` with the thresholds negated back.
    """
    distances, labels = _validate_pairs(distances, labels, need_both_classes=True)
    fps, tps, thresholds = _roc_counts(distances, labels)
    fps, tps = np.append(0.0, fps), np.append(0.0, tps)
    return fps / fps[-1], tps / tps[-1], np.append(-np.inf, thresholds)


def roc_auc(distances: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve; 1.0 when every same pair is closer than every different pair.

    scikit-learn's `roc_auc_score(labels, -distances)` bit for bit: the trapezoids of its ROC curve with the
    points dropped that lie on a straight line between their neighbours."""
    distances, labels = _validate_pairs(distances, labels, need_both_classes=True)
    fps, tps, _ = _roc_counts(distances, labels)
    if len(fps) > 2:
        corners = np.concatenate([[True], np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), [True]])
        fps, tps = fps[corners], tps[corners]
    fps, tps = np.append(0.0, fps), np.append(0.0, tps)
    return float(np.trapezoid(tps / tps[-1], fps / fps[-1]))


def equal_error_rate(distances: np.ndarray, labels: np.ndarray) -> float:
    """Rate at which false accepts equal false rejects, interpolated along the ROC curve."""
    fpr, tpr, _ = roc_points(distances, labels)
    fnr = 1.0 - tpr
    # fpr - fnr rises from -1 to +1 along the curve; find where it crosses 0
    gap = fpr - fnr
    crossing = int(np.argmax(gap >= 0))
    if gap[crossing] == 0 or crossing == 0:
        return float(fpr[crossing])
    before, after = crossing - 1, crossing
    fraction = -gap[before] / (gap[after] - gap[before])
    return float(fpr[before] + fraction * (fpr[after] - fpr[before]))


def choose_threshold(distances: np.ndarray, labels: np.ndarray) -> float:
    """Distance threshold with the best accuracy on these pairs (same when distance <= threshold).

    Candidates are just below the smallest distance, the midpoints between consecutive
    unique distances and the largest distance; ties go to the smallest threshold.
    """
    distances, labels = _validate_pairs(distances, labels)
    unique, position = np.unique(distances, return_inverse=True)
    positives_at = np.bincount(position, weights=labels, minlength=len(unique))
    negatives_at = np.bincount(position, weights=1 - labels, minlength=len(unique))
    # candidate k predicts "same" for the k smallest unique distances, k = 0..len(unique)
    same_accepted = np.concatenate([[0.0], np.cumsum(positives_at)])
    different_accepted = np.concatenate([[0.0], np.cumsum(negatives_at)])
    correct = same_accepted + (negatives_at.sum() - different_accepted)
    best = int(np.argmax(correct))  # first maximum = smallest threshold
    if best == 0:
        return float(np.nextafter(unique[0], -np.inf))
    if best == len(unique):
        return float(unique[-1])
    return float((unique[best - 1] + unique[best]) / 2.0)


def far_threshold(distances: np.ndarray, labels: np.ndarray, target_far: float) -> float:
    """The largest distance threshold whose false accept rate on these pairs is at most `target_far`
    (same when distance <= threshold): the most genuine pairs accepted at that FAR.

    It lies midway between the (k+1)-th smallest different-person distance, k = floor(target_far x
    different pairs), and the largest distance of any pair below it (just below it when none is), as
    `choose_threshold`'s candidates do. A target needs at least 1 / target_far different-person pairs
    to be resolved: fewer raise ValueError saying how many there are.
    """
    distances, labels = _validate_pairs(distances, labels)
    if not 0 < target_far < 1:
        raise ValueError(f"a target false accept rate must lie strictly between 0 and 1, got {target_far}")
    different = np.sort(distances[labels == 0])
    if len(different) * target_far < 1:
        raise ValueError(f"a target FAR of {target_far:g} needs at least {int(np.ceil(1 / target_far))} "
                         f"different-person pairs to resolve it, got {len(different)} "
                         f"(the smallest target these pairs resolve is {1 / max(len(different), 1):.2g})")
    # floor with a little slack, so that 0.01 x 2100 pairs allows 21 false accepts, not 20 (float rounding)
    first_rejected = different[int(np.floor(len(different) * target_far + 1e-9))]
    below = distances[distances < first_rejected]
    if len(below) == 0:
        return float(np.nextafter(first_rejected, -np.inf))
    return float((below.max() + first_rejected) / 2.0)


def tar_at_far(distances: np.ndarray, labels: np.ndarray, far: float) -> float:
    """True accept rate at false accept rate `far`, as face verification reports it: the highest share of
    same-person pairs any threshold accepts while accepting at most `far` of the different-person pairs.
    With fewer than 1 / far different-person pairs that is the share accepted with no false accept."""
    fpr, tpr, _ = roc_points(distances, labels)
    return float(tpr[fpr <= far + 1e-12].max())


def best_accuracy(distances: np.ndarray, labels: np.ndarray) -> float:
    """The highest accuracy any threshold reaches on these pairs (what a calibrated one is measured against)."""
    distances, labels = _validate_pairs(distances, labels)
    return float(np.mean((distances <= choose_threshold(distances, labels)) == (labels == 1)))


def calibrated_threshold(distances: np.ndarray, labels: np.ndarray, target_far: float | None) -> float:
    """The operating point: the threshold at `target_far` (`far_threshold`), or with None the best accuracy
    (`choose_threshold`)."""
    return choose_threshold(distances, labels) if target_far is None else far_threshold(distances, labels, target_far)


def unordered_pair_distances(
    embeddings: np.ndarray, people: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every unordered pair of faces (rows of `embeddings`, whose person is `people[i]`):
    (first, second, same, distance), as `all_unordered_pairs` and `pair_distances` give them."""
    first, second, same = all_unordered_pairs(np.asarray(people))
    return first, second, same, pair_distances(embeddings, first, second)


def pair_distances(embeddings: np.ndarray, first: np.ndarray, second: np.ndarray,
                   chunk: int = 262_144) -> np.ndarray:
    """Euclidean distance between rows first[i] and second[i] of `embeddings`, `chunk` pairs at a time
    (each row on its own, so the result does not depend on `chunk`): 12.5M pairs of 64 numbers would
    otherwise gather 6 GB."""
    first, second = np.asarray(first), np.asarray(second)
    if len(first) <= chunk:
        return np.linalg.norm(embeddings[first] - embeddings[second], axis=1)
    return np.concatenate([np.linalg.norm(embeddings[first[i:i + chunk]] - embeddings[second[i:i + chunk]], axis=1)
                           for i in range(0, len(first), chunk)])


def verification_metrics(
    distances: np.ndarray, labels: np.ndarray, threshold: float
) -> dict[str, float | int]:
    """Pair-verification metrics at a fixed distance threshold, "same person" as positive."""
    distances, labels = _validate_pairs(distances, labels, need_both_classes=True)
    predicted_same = distances <= threshold
    actually_same = labels == 1
    tp = int(np.sum(predicted_same & actually_same))
    fp = int(np.sum(predicted_same & ~actually_same))
    tn = int(np.sum(~predicted_same & ~actually_same))
    fn = int(np.sum(~predicted_same & actually_same))
    precision = tp / (tp + fp) if tp + fp > 0 else 0.0
    recall = tp / (tp + fn) if tp + fn > 0 else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {
        "accuracy": (tp + tn) / len(labels),
        # false accept rate: different people called the same; false reject rate: the reverse
        "far": fp / (fp + tn) if fp + tn > 0 else 0.0,
        "frr": fn / (fn + tp) if fn + tp > 0 else 0.0,
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "roc_auc": roc_auc(distances, labels),
        "eer": equal_error_rate(distances, labels),
        **{f"tar_at_far_{name}": tar_at_far(distances, labels, far) for name, far in REPORTED_FARS.items()},
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        "n_pairs": int(len(labels)),
        "threshold": float(threshold),
    }


def pairwise_distance_matrix(embeddings: np.ndarray) -> np.ndarray:
    """(N, N) Euclidean distances between the rows of embeddings."""
    from scipy.spatial.distance import cdist  # imported here, as scikit-learn below: slow, and `facesim verify` needs neither

    embeddings = validate_embeddings(embeddings)
    return cdist(embeddings, embeddings, metric="euclidean")


def all_unordered_pairs(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair (i, j) with i < j and whether its two items share a label (1) or not (0)."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) < 2:
        raise ValueError(f"labels must be 1-D with at least 2 items, got shape {labels.shape}")
    first, second = np.triu_indices(len(labels), k=1)
    same = (labels[first] == labels[second]).astype(np.int64)
    return first, second, same


def headline(verification: dict[str, Any], retrieval: dict[str, Any]) -> dict[str, float]:
    """The few numbers `dvc metrics show` puts side by side for every model and protocol, under the
    same short keys: at the calibrated threshold the false accept and false reject rates and the accuracy;
    the true accept rate at FAR 1% and 0.1%, ROC AUC, EER, precision@1 and mAP. The rest (confusion
    counts, each pair set) goes to a details file beside it."""
    return {"far": verification["far"], "frr": verification["frr"], "accuracy": verification["accuracy"],
            **{f"tar_at_far_{name}": verification[f"tar_at_far_{name}"] for name in REPORTED_FARS},
            "auc": verification["roc_auc"], "eer": verification["eer"],
            "p_at_1": retrieval["precision_at_1"], "map": retrieval["map"]}
