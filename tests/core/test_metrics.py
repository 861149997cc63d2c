"""facesim.core.metrics: verification and retrieval metrics by hand and against scikit-learn."""

import numpy as np
import pytest
from sklearn.metrics import (
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
    roc_curve,
)

from helpers import modules_imported_by
from facesim.core.metrics import (
    all_unordered_pairs,
    best_accuracy,
    choose_threshold,
    far_threshold,
    equal_error_rate,
    headline,
    pair_distances,
    pairwise_distance_matrix,
    roc_auc,
    roc_points,
    unordered_pair_distances,
    tar_at_far,
    verification_metrics,
)

RNG_SEED = 0


def random_pairs(n: int, seed: int = RNG_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Same pairs a little closer than different pairs, rounded so distances tie."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=n)
    distances = np.round(rng.normal(loc=1.0 - 0.5 * labels, scale=0.4), 1)
    return distances, labels


# ---- ROC, AUC, EER ----------------------------------------------------------------


def test_roc_auc_matches_sklearn():
    distances, labels = random_pairs(200)
    assert roc_auc(distances, labels) == pytest.approx(roc_auc_score(labels, -distances))
    assert isinstance(roc_auc(distances, labels), float)


@pytest.mark.parametrize("n, decimals", [(2, 1), (3, 0), (50, 1), (997, 2), (5000, 3), (5000, 12)])
def test_roc_points_and_auc_are_sklearns_bit_for_bit(n: int, decimals: int):
    """The committed results were computed with scikit-learn: the numpy ROC must give the same bits, ties (rounded
    distances) and collinear points (dropped for the AUC) included."""
    rng = np.random.default_rng(n + decimals)
    labels = np.r_[0, 1, rng.integers(0, 2, size=n - 2)]
    distances = np.round(rng.normal(loc=1.0 - 0.3 * labels, scale=0.4), decimals)
    fpr, tpr, thresholds = roc_points(distances, labels)
    sk_fpr, sk_tpr, sk_thresholds = roc_curve(labels, -distances, drop_intermediate=False)
    assert fpr.tobytes() == sk_fpr.tobytes() and tpr.tobytes() == sk_tpr.tobytes()
    assert thresholds.tobytes() == (-sk_thresholds).tobytes()
    assert roc_auc(distances, labels) == roc_auc_score(labels, -distances)


def test_roc_points_report_thresholds_as_distances():
    distances = np.array([0.1, 0.2, 0.3, 0.4, 0.5])
    labels = np.array([1, 1, 0, 1, 0])
    fpr, tpr, thresholds = roc_points(distances, labels)
    # at every finite threshold, rates are those of "same when distance <= threshold"
    for rate_fp, rate_tp, threshold in zip(fpr[1:], tpr[1:], thresholds[1:]):
        predicted_same = distances <= threshold
        assert rate_tp == pytest.approx(predicted_same[labels == 1].mean())
        assert rate_fp == pytest.approx(predicted_same[labels == 0].mean())
    assert thresholds[0] == -np.inf


def test_equal_error_rate_interpolates_between_roc_points():
    distances = np.array([0.1, 0.2, 0.3, 0.4, 0.5])
    labels = np.array([1, 1, 0, 1, 0])
    # ROC (fpr, tpr): (0,0) (0,1/3) (0,2/3) (1/2,2/3) (1/2,1) (1,1)
    # fpr - fnr: -1, -2/3, -1/3, 1/6, 1/2, 1 -> crosses 0 between (0,2/3) and (1/2,2/3)
    # there fnr stays 1/3 while fpr goes 0 -> 1/2; fraction (1/3)/(1/3 + 1/6) = 2/3
    # EER = 0 + 2/3 * 1/2 = 1/3
    assert equal_error_rate(distances, labels) == pytest.approx(1 / 3)


def test_equal_error_rate_on_an_exact_roc_point():
    # ROC: (0,0) (0,1/2) (1/2,1/2) (1/2,1) (1,1); at (1/2,1/2) fpr = fnr = 1/2
    assert equal_error_rate(np.array([0.1, 0.2, 0.3, 0.4]), np.array([1, 0, 1, 0])) == 0.5


def test_perfect_separation_has_auc_one_and_eer_zero():
    distances = np.array([0.1, 0.2, 0.8, 0.9])
    labels = np.array([1, 1, 0, 0])
    assert roc_auc(distances, labels) == 1.0
    assert equal_error_rate(distances, labels) == 0.0


@pytest.mark.parametrize("metric", [roc_auc, equal_error_rate, roc_points])
def test_single_class_is_rejected_for_roc_metrics(metric):
    with pytest.raises(ValueError, match="single class"):
        metric(np.array([0.1, 0.5]), np.array([1, 1]))


@pytest.mark.parametrize(
    "distances, labels, message",
    [
        (np.array([0.1, 0.2]), np.array([1, 0, 1]), "differ in length"),
        (np.array([0.1, 0.2]), np.array([1, 2]), "0 or 1"),
        (np.array([]), np.array([]), "empty"),
        (np.array([0.1, np.nan]), np.array([1, 0]), "finite"),
    ],
)
def test_bad_pairs_are_rejected(distances, labels, message):
    for metric in (roc_auc, choose_threshold):
        with pytest.raises(ValueError, match=message):
            metric(distances, labels)


# ---- threshold ----------------------------------------------------------------


def accuracy_at(distances: np.ndarray, labels: np.ndarray, threshold: float) -> float:
    return float(np.mean((distances <= threshold) == (labels == 1)))


def test_choose_threshold_separates_a_clean_example():
    # same pairs at 0.2, 0.4 and different at 0.6, 0.8: midpoint 0.5 is perfect
    assert choose_threshold(np.array([0.8, 0.2, 0.6, 0.4]), np.array([0, 1, 0, 1])) == 0.5


def test_choose_threshold_breaks_ties_towards_the_smallest_threshold():
    # distances 1 2 3 4, labels 1 0 1 0; correct pairs per candidate:
    # below 1: 2, 1.5: 3, 2.5: 2, 3.5: 3, 4: 2 -> best 3 first reached at 1.5
    assert choose_threshold(np.array([1.0, 2.0, 3.0, 4.0]), np.array([1, 0, 1, 0])) == 1.5


def test_choose_threshold_can_pick_below_the_minimum_and_the_maximum():
    below = choose_threshold(np.array([1.0, 2.0]), np.array([0, 0]))
    assert below < 1.0 and accuracy_at(np.array([1.0, 2.0]), np.array([0, 0]), below) == 1.0
    assert choose_threshold(np.array([1.0, 2.0]), np.array([1, 1])) == 2.0


def brute_force_threshold(distances: np.ndarray, labels: np.ndarray) -> float:
    """O(n^2): score every candidate threshold separately."""
    unique = np.unique(distances)
    candidates = [np.nextafter(unique[0], -np.inf)]
    candidates += [(low + high) / 2 for low, high in zip(unique[:-1], unique[1:])]
    candidates.append(unique[-1])
    accuracies = [accuracy_at(distances, labels, candidate) for candidate in candidates]
    return float(candidates[int(np.argmax(accuracies))])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_choose_threshold_matches_brute_force(seed):
    distances, labels = random_pairs(300, seed=seed)
    chosen = choose_threshold(distances, labels)
    assert chosen == brute_force_threshold(distances, labels)
    # and no observed distance used as a threshold does better
    best_possible = max(accuracy_at(distances, labels, d) for d in distances)
    assert accuracy_at(distances, labels, chosen) >= best_possible


# ---- verification at a threshold -------------------------------------------------


def test_verification_metrics_match_sklearn():
    distances, labels = random_pairs(200)
    metrics = verification_metrics(distances, labels, threshold=0.7)
    predicted = (distances <= 0.7).astype(int)
    assert metrics["precision"] == pytest.approx(precision_score(labels, predicted))
    assert metrics["recall"] == pytest.approx(recall_score(labels, predicted))
    assert metrics["f1"] == pytest.approx(f1_score(labels, predicted))
    assert metrics["accuracy"] == pytest.approx(np.mean(predicted == labels))
    assert metrics["roc_auc"] == pytest.approx(roc_auc_score(labels, -distances))
    counts = metrics["tp"] + metrics["fp"] + metrics["tn"] + metrics["fn"]
    assert counts == metrics["n_pairs"] == 200
    assert metrics["threshold"] == 0.7


def test_verification_metrics_counts_and_types_by_hand():
    distances = np.array([0.1, 0.2, 0.3, 0.4, 0.5])
    labels = np.array([1, 1, 0, 1, 0])
    metrics = verification_metrics(distances, labels, threshold=0.3)
    # predicted same: 0.1, 0.2, 0.3 -> tp 2, fp 1; rejected: 0.4 (same) fn 1, 0.5 tn 1
    assert (metrics["tp"], metrics["fp"], metrics["tn"], metrics["fn"]) == (2, 1, 1, 1)
    assert metrics["precision"] == pytest.approx(2 / 3)
    assert metrics["recall"] == pytest.approx(2 / 3)
    assert metrics["accuracy"] == pytest.approx(3 / 5)
    assert all(type(value) in (int, float) for value in metrics.values())
    assert all(type(metrics[key]) is int for key in ("tp", "fp", "tn", "fn", "n_pairs"))


def test_verification_precision_is_zero_without_predicted_same_and_without_warning(recwarn):
    metrics = verification_metrics(np.array([0.5, 0.6]), np.array([1, 0]), threshold=0.1)
    assert metrics["precision"] == 0.0 and metrics["recall"] == 0.0 and metrics["f1"] == 0.0
    assert len(recwarn) == 0


# ---- pairs ----------------------------------------------------------------------------


def test_all_unordered_pairs_of_30_items_gives_435_pairs():
    labels = np.repeat(np.arange(10), 3)  # 10 people x 3 faces
    first, second, same = all_unordered_pairs(labels)
    assert len(first) == 435 and np.all(first < second)
    assert same.sum() == 10 * 3  # 3 same pairs per person


def test_pairwise_distance_matrix_by_hand():
    matrix = pairwise_distance_matrix(np.array([[0.0, 0.0], [3.0, 4.0], [0.0, 1.0]]))
    expected = np.array([[0, 5, 1], [5, 0, np.sqrt(9 + 9)], [1, np.sqrt(18), 0]])
    assert np.allclose(matrix, expected)


# ---- calibration -------------------------------------------------------------------------


def test_best_accuracy_is_the_accuracy_at_the_chosen_threshold():
    rng = np.random.default_rng(3)
    distances = rng.uniform(0, 2, size=60)
    labels = (rng.uniform(size=60) < 0.3).astype(int)
    best = best_accuracy(distances, labels)
    candidates = np.concatenate([[-1.0], np.sort(distances)])
    by_brute_force = max(np.mean((distances <= t) == (labels == 1)) for t in candidates)
    assert best == pytest.approx(by_brute_force)


def test_far_and_frr_by_hand():
    # same: 1, 2, 5; different: 3, 4, 6, 7 at threshold 3.5: fn 1 (5) of 3, fp 1 (3) of 4
    distances = np.array([1, 2, 5, 3, 4, 6, 7], dtype=float)
    labels = np.array([1, 1, 1, 0, 0, 0, 0])
    metrics = verification_metrics(distances, labels, 3.5)
    assert metrics["far"] == pytest.approx(1 / 4) and metrics["frr"] == pytest.approx(1 / 3)


def test_pair_distances_match_the_distance_matrix():
    embeddings = np.random.default_rng(4).normal(size=(6, 3))
    first, second = np.array([0, 1, 5]), np.array([3, 1, 2])
    matrix = pairwise_distance_matrix(embeddings)
    assert np.allclose(pair_distances(embeddings, first, second), matrix[first, second])


def test_pair_distances_in_chunks_are_the_same_numbers():
    rng = np.random.default_rng(1)
    embeddings = rng.normal(size=(20, 5)).astype(np.float32)
    first, second = rng.integers(20, size=101), rng.integers(20, size=101)
    whole = pair_distances(embeddings, first, second)
    np.testing.assert_array_equal(pair_distances(embeddings, first, second, chunk=7), whole)
    np.testing.assert_array_equal(pair_distances(embeddings, first, second, chunk=101), whole)


def test_unordered_pair_distances_by_hand():
    # people P P Q at 0, 3 and 4 on a line: pairs (0, 1) same at 3, (0, 2) different at 4, (1, 2) different at 1
    embeddings = np.array([[0.0, 0.0], [3.0, 0.0], [4.0, 0.0]])
    first, second, same, distances = unordered_pair_distances(embeddings, ["P", "P", "Q"])
    assert first.tolist() == [0, 0, 1] and second.tolist() == [1, 2, 2]
    assert same.tolist() == [1, 0, 0] and distances.tolist() == [3.0, 4.0, 1.0]
    with pytest.raises(ValueError, match="at least 2 items"):
        unordered_pair_distances(embeddings[:1], ["P"])


def test_headline_picks_the_headline_numbers_under_their_short_keys():
    # same pairs at 0.1 and 0.4, different at 0.9 and 0.3: at 0.35, 0.1 accepted and 0.9 rejected (right),
    # 0.4 rejected and 0.3 accepted (wrong): accuracy 1/2; 3 of the 4 (same, different) orderings right: AUC 3/4
    verification = verification_metrics(np.array([0.1, 0.4, 0.9, 0.3]), np.array([1, 1, 0, 0]), threshold=0.35)
    retrieval = {"precision_at_1": 0.75, "precision_at_5": 0.5, "map": 0.6}
    # 1 of 2 different pairs accepted (0.3), 1 of 2 same rejected (0.4); below 0.3 no false accept and 0.1
    # accepted: TAR 1/2 at FAR 1% and 0.1%
    assert headline(verification, retrieval) == {
        "far": 0.5, "frr": 0.5, "accuracy": 0.5, "tar_at_far_1e-2": 0.5, "tar_at_far_1e-3": 0.5,
        "auc": 0.75, "eer": verification["eer"], "p_at_1": 0.75, "map": 0.6}


def test_importing_the_metrics_imports_neither_scipy_nor_scikit_learn():
    """`facesim verify` needs neither: both are imported by the functions that use them."""
    assert modules_imported_by("facesim.core.metrics", ["scipy", "sklearn"]) == []


def test_far_threshold_allows_floor_of_target_times_different_pairs_by_hand():
    # 10 different pairs at 1..10, same pairs at 0.5 and 2.5; FAR 0.2 allows 2 false accepts (1 and 2): the
    # threshold lies between 2.5 (the largest distance below the third different one) and 3
    distances = np.array([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 0.5, 2.5], dtype=float)
    labels = np.array([0] * 10 + [1, 1])
    assert far_threshold(distances, labels, 0.2) == 2.75
    assert verification_metrics(distances, labels, 2.75)["far"] == 0.2
    # FAR 0.1: one false accept (1); below 2 the largest distance is 1
    assert far_threshold(distances, labels, 0.1) == 1.5
    # FAR 0.15 still allows one (floor 1.5)
    assert far_threshold(distances, labels, 0.15) == 1.5


def test_far_threshold_with_no_distance_below_the_first_rejected_goes_just_below_it():
    # one false accept allowed (floor(0.34 x 3)), but the two smallest different pairs tie at 1: accepting
    # either accepts both, so nothing at 1 is accepted
    distances, labels = np.array([1.0, 1.0, 2.0, 3.0]), np.array([0, 0, 0, 1])
    threshold = far_threshold(distances, labels, 0.34)
    assert threshold < 1.0 and threshold == np.nextafter(1.0, -np.inf)


def test_far_threshold_counts_exact_percentages_without_float_loss():
    # 0.01 x 2100 is 20.999999999999996 in floating point: still 21 false accepts allowed
    rng = np.random.default_rng(0)
    different = np.sort(rng.uniform(1, 2, 2100))
    distances = np.concatenate([different, rng.uniform(0, 1, 300)])
    labels = np.array([0] * 2100 + [1] * 300)
    threshold = far_threshold(distances, labels, 0.01)
    assert different[20] < threshold < different[21]


@pytest.mark.parametrize("target", [0.0, 1.0, -0.1, 1.5])
def test_far_threshold_refuses_a_target_outside_0_1(target):
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        far_threshold(np.array([1.0, 2.0]), np.array([0, 1]), target)


def test_far_threshold_refuses_a_target_the_pairs_cannot_resolve():
    # 0.001 needs 1000 different pairs; here 3
    with pytest.raises(ValueError, match=r"needs at least 1000 different-person pairs.*got 3.*0\.33"):
        far_threshold(np.array([1.0, 2.0, 3.0, 0.5]), np.array([0, 0, 0, 1]), 0.001)


def test_tar_at_far_matches_the_roc_curve_by_hand():
    # same at 0.1, 0.2, 0.6; different at 0.3, 0.5, 0.9, 1.0
    distances = np.array([0.1, 0.2, 0.6, 0.3, 0.5, 0.9, 1.0])
    labels = np.array([1, 1, 1, 0, 0, 0, 0])
    assert tar_at_far(distances, labels, 0.0) == pytest.approx(2 / 3)  # below 0.3
    assert tar_at_far(distances, labels, 0.25) == pytest.approx(2 / 3)  # one false accept buys nothing yet
    assert tar_at_far(distances, labels, 0.5) == pytest.approx(1.0)  # at 0.6: 0.3 and 0.5 accepted
