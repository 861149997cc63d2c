"""facesim.core.retrieval: nearest neighbours and precision@k / mAP, by hand and against scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from facesim.core.metrics import pairwise_distance_matrix
from facesim.core.retrieval import retrieval_metrics, top_k_neighbours


def test_top_k_neighbours_excludes_self_and_breaks_ties_by_index():
    points = np.array([[0.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [5.0, 0.0]])
    indices, distances = top_k_neighbours(points, points, k=2, exclude_self=True)
    # point 0 has points 1 and 2 both at distance 1: index order keeps 1 first
    assert indices[0].tolist() == [1, 2] and distances[0].tolist() == [1.0, 1.0]
    assert indices[3].tolist() == [1, 0]
    assert not np.any(indices == np.arange(4)[:, None])


def test_top_k_neighbours_against_a_separate_gallery():
    gallery = np.array([[0.0, 0.0], [10.0, 0.0], [4.0, 0.0]])
    indices, distances = top_k_neighbours(np.array([[3.0, 0.0]]), gallery, k=3, exclude_self=False)
    assert indices.tolist() == [[2, 0, 1]] and distances.tolist() == [[1.0, 3.0, 7.0]]


@pytest.mark.parametrize(
    "query, gallery, k, exclude_self, message",
    [
        (np.zeros((2, 2)), np.zeros((3, 2)), 1, True, "exclude_self"),
        (np.zeros((3, 2)), np.zeros((3, 2)), 3, True, "between 1 and 2"),
        (np.zeros((3, 2)), np.zeros((3, 4)), 1, False, "dimensions differ"),
    ],
)
def test_top_k_neighbours_rejects_bad_arguments(query, gallery, k, exclude_self, message):
    with pytest.raises(ValueError, match=message):
        top_k_neighbours(query, gallery, k, exclude_self)


def test_retrieval_metrics_by_hand():
    # x = 0 (A), 1 (A), 3 (B), 4 (B), 10 (A); ranked others and relevance per query:
    # q0: 1 3 4 10 -> A B B A: P@1 1, P@3 1/3, AP (1/1 + 2/4)/2 = 3/4
    # q1: 0 3 4 10 -> A B B A: P@1 1, P@3 1/3, AP 3/4
    # q3: 4 1 0 10 -> B A A A: P@1 1, P@3 1/3, AP 1
    # q4: 3 1 0 10 -> B A A A: P@1 1, P@3 1/3, AP 1
    # q10: 4 3 1 0 -> B B A A: P@1 0, P@3 1/3, AP (1/3 + 2/4)/2 = 5/12
    # P@1 = 4/5; P@3 = 1/3; mAP = (3/4 + 3/4 + 1 + 1 + 5/12)/5 = 47/60
    embeddings = np.array([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0], [4.0, 0.0], [10.0, 0.0]])
    labels = np.array([0, 0, 1, 1, 0])
    metrics = retrieval_metrics(embeddings, labels, ks=(1, 3))
    expected = {"precision_at_1": 0.8, "precision_at_3": 1 / 3, "map": 47 / 60}
    assert metrics == pytest.approx(expected)


def test_retrieval_ties_are_broken_by_index():
    # query 0 has a different person (index 1) and the same person (index 2) both at distance 1;
    # index 1 comes first, so query 0 misses at rank 1:
    # q0 -> 1 (miss)   q1 (x=1) -> 0 (miss)   q2 (x=-1) -> 0 (hit)   q3 (x=5) -> 1 (hit)
    embeddings = np.array([[0.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [5.0, 0.0]])
    labels = np.array([0, 1, 0, 1])
    assert retrieval_metrics(embeddings, labels, ks=(1,))["precision_at_1"] == 0.5


def test_mean_average_precision_matches_sklearn_per_query():
    rng = np.random.default_rng(3)
    labels = np.repeat(np.arange(5), 4)
    embeddings = rng.normal(size=(20, 3)) + labels[:, None] * 0.5
    distances = pairwise_distance_matrix(embeddings)
    per_query = []
    for query in range(20):
        others = np.arange(20) != query
        per_query.append(
            average_precision_score(labels[others] == labels[query], -distances[query, others])
        )
    assert retrieval_metrics(embeddings, labels)["map"] == pytest.approx(np.mean(per_query))


def test_a_single_item_label_is_no_query_but_is_ranked():
    # labels 0 0 1 1 2 at 0, 3, 1, 4, 2 on a line; label 2 (item 4) has no partner and queries nothing
    embeddings = np.array([[0.0], [3.0], [1.0], [4.0], [2.0]])
    labels = np.array([0, 0, 1, 1, 2])
    metrics = retrieval_metrics(embeddings, labels, ks=(1,))
    # by hand (ties broken by the lower index): query 0 ranks 2, 4, 1, 3 -> AP 1/3, P@1 0
    # query 1 (3.0) ranks 3 (1.0), 4 (1.0), 2 (2.0), 0 (3.0) -> AP 1/4, P@1 0
    # query 2 (1.0) ranks 0 (1.0), 4 (1.0), 1 (2.0), 3 (3.0) -> AP 1/4, P@1 0
    # query 3 (4.0) ranks 1 (1.0), 4 (2.0), 2 (3.0), 0 (4.0) -> AP 1/3, P@1 0
    assert metrics["precision_at_1"] == 0.0
    assert metrics["map"] == pytest.approx((1 / 3 + 1 / 4 + 1 / 4 + 1 / 3) / 4)
    # the lone item is a distractor: without it every query finds its partner one rank sooner
    alone = retrieval_metrics(embeddings[:4], labels[:4], ks=(1,))["map"]
    assert alone > metrics["map"]
    with pytest.raises(ValueError, match="nothing to retrieve"):
        retrieval_metrics(np.array([[0.0], [1.0]]), np.array([0, 1]), ks=(1,))


def test_retrieval_rejects_k_larger_than_the_other_items():
    with pytest.raises(ValueError, match="between 1 and 3"):
        retrieval_metrics(np.zeros((4, 2)), np.array([0, 0, 1, 1]), ks=(1, 5))


def test_retrieval_rejects_label_length_mismatch():
    with pytest.raises(ValueError, match=r"labels must have shape \(4,\)"):
        retrieval_metrics(np.zeros((4, 2)), np.array([0, 0, 1]))
