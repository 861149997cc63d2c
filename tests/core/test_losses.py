"""facesim.core.losses: contrastive and triplet losses, pair by pair and mined in P x K batches."""

import itertools

import pytest
import torch

from facesim.core.losses import (
    BatchContrastiveLoss,
    BatchTripletLoss,
    ContrastiveLoss,
    TripletLoss,
    euclidean_distance,
    pairwise_euclidean,
)

# Four faces on the x axis: people 0 and 1 with two faces each.
#   x = 0 (p0), 2 (p0), 3 (p1), 7 (p1)
#   d01 = 2, d02 = 3, d03 = 7, d12 = 1, d13 = 5, d23 = 4
LINE_EMBEDDINGS = torch.tensor([[0.0, 0.0], [2.0, 0.0], [3.0, 0.0], [7.0, 0.0]])
LINE_LABELS = torch.tensor([0, 0, 1, 1])


def l1_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).abs().sum(dim=1)


# ---- distances ----------------------------------------------------------------


def test_euclidean_distance_matches_hand_values():
    a = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    b = torch.tensor([[3.0, 4.0], [1.0, 1.0]])
    assert torch.allclose(euclidean_distance(a, b), torch.tensor([5.0, 0.0]), atol=1e-4)


def test_euclidean_distance_gradient_is_finite_at_zero_distance():
    a = torch.ones(3, 4, requires_grad=True)
    euclidean_distance(a, torch.ones(3, 4)).sum().backward()
    assert torch.isfinite(a.grad).all()


@pytest.mark.parametrize(
    "a, b",
    [
        (torch.zeros(3, 2), torch.zeros(3, 5)),
        (torch.zeros(3), torch.zeros(3)),
        (torch.zeros(0, 2), torch.zeros(0, 2)),
    ],
)
def test_euclidean_distance_rejects_bad_shapes(a, b):
    with pytest.raises(ValueError, match="shape|empty"):
        euclidean_distance(a, b)


def test_pairwise_euclidean_matches_torch_cdist_with_zero_diagonal():
    x = torch.randn(6, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    matrix = pairwise_euclidean(x)
    assert torch.equal(torch.diagonal(matrix), torch.zeros(6, dtype=torch.float64))
    assert torch.allclose(matrix, torch.cdist(x, x), atol=1e-6)


def test_pairwise_euclidean_of_a_3_4_5_triangle_and_its_gradient_by_hand():
    x = torch.tensor([[0.0, 0.0], [3.0, 0.0], [3.0, 4.0]], requires_grad=True)
    matrix = pairwise_euclidean(x)
    assert torch.equal(matrix.detach(), torch.tensor([[0.0, 3.0, 5.0], [3.0, 0.0, 4.0], [5.0, 4.0, 0.0]]))
    matrix.sum().backward()
    # d(sum)/d(row i) = 2 * sum over j of (x_i - x_j) / d_ij (each distance appears twice)
    expected = 2 * torch.tensor([[-1.0 - 3 / 5, -4 / 5], [1.0 + 0.0, -1.0], [3 / 5 + 0.0, 4 / 5 + 1.0]])
    assert torch.allclose(x.grad, expected, atol=1e-6)


def test_pairwise_euclidean_roots_are_correctly_rounded():
    # integer rows: every sum of squares is exact in float32, so each distance must be the float32 nearest
    # the true root (torch.sqrt's refined estimate misses 1 in 5 on some CPUs)
    x = torch.randint(-300, 300, (64, 5), generator=torch.Generator().manual_seed(1)).float()
    squares = ((x.double().unsqueeze(1) - x.double().unsqueeze(0)) ** 2).sum(dim=2)
    assert torch.equal(pairwise_euclidean(x), torch.sqrt(squares).float())


def test_pairwise_euclidean_gradient_is_finite_for_duplicate_rows():
    x = torch.tensor([[1.0, 2.0], [1.0, 2.0], [0.0, 0.0]], requires_grad=True)
    pairwise_euclidean(x).sum().backward()
    assert torch.isfinite(x.grad).all()
    # the two equal rows pull each other nowhere: only the third row's distances move them
    assert torch.allclose(x.grad[0], 2 * torch.tensor([1.0, 2.0]) / 5 ** 0.5)


def test_pairwise_euclidean_rejects_non_matrix():
    with pytest.raises(ValueError, match="2-D"):
        pairwise_euclidean(torch.zeros(4))


# ---- contrastive ----------------------------------------------------------------


def test_contrastive_loss_matches_hand_computation():
    emb1 = torch.zeros(3, 2)
    emb2 = torch.tensor([[3.0, 4.0], [1.0, 0.0], [0.0, 3.0]])
    label = torch.tensor([1, 0, 0])
    # same at d=5: 5^2 = 25; different at d=1: (2-1)^2 = 1; different at d=3 > margin: 0
    # mean = 26 / 3
    loss = ContrastiveLoss(margin=2.0)(emb1, emb2, label)
    assert loss.item() == pytest.approx(26 / 3, abs=1e-5)


def test_contrastive_loss_uses_the_injected_distance():
    emb1 = torch.zeros(1, 2)
    emb2 = torch.tensor([[3.0, 4.0]])
    # L1 distance is 3 + 4 = 7, so a same pair costs 49 (euclidean would give 25)
    loss = ContrastiveLoss(distance=l1_distance)(emb1, emb2, torch.tensor([1.0]))
    assert loss.item() == pytest.approx(49.0)


def test_contrastive_loss_rejects_labels_other_than_0_and_1():
    with pytest.raises(ValueError, match="0 .*and 1"):
        ContrastiveLoss()(torch.zeros(2, 2), torch.ones(2, 2), torch.tensor([1, 2]))


def test_contrastive_loss_rejects_label_length_mismatch():
    with pytest.raises(ValueError, match=r"label must have shape \(2,\)"):
        ContrastiveLoss()(torch.zeros(2, 2), torch.ones(2, 2), torch.tensor([1, 0, 1]))


def test_contrastive_loss_rejects_embedding_shape_mismatch():
    with pytest.raises(ValueError, match="equal shapes"):
        ContrastiveLoss()(torch.zeros(2, 2), torch.ones(2, 3), torch.tensor([1, 0]))


@pytest.mark.parametrize("margin", [0.0, -1.0])
def test_contrastive_loss_rejects_non_positive_margin(margin):
    with pytest.raises(ValueError, match="margin"):
        ContrastiveLoss(margin=margin)


# ---- triplet ----------------------------------------------------------------


def test_triplet_loss_matches_torch_triplet_margin_loss():
    generator = torch.Generator().manual_seed(1)
    anchor, positive, negative = (torch.randn(16, 8, generator=generator) for _ in range(3))
    expected = torch.nn.TripletMarginLoss(margin=0.7, p=2)(anchor, positive, negative)
    assert TripletLoss(margin=0.7)(anchor, positive, negative).item() == pytest.approx(
        expected.item(), abs=1e-4
    )


def test_triplet_loss_matches_hand_computation():
    anchor = torch.zeros(2, 2)
    positive = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    negative = torch.tensor([[0.0, 4.0], [0.0, 3.0]])
    # row 1: 5 - 4 + 0.2 = 1.2; row 2: 1 - 3 + 0.2 < 0 -> 0; mean = 0.6
    assert TripletLoss()(anchor, positive, negative).item() == pytest.approx(0.6, abs=1e-5)


def test_triplet_loss_rejects_shape_mismatch():
    with pytest.raises(ValueError, match="equal shapes"):
        TripletLoss()(torch.zeros(2, 2), torch.zeros(2, 2), torch.zeros(3, 2))


# ---- batch triplet: hand-computed on LINE_EMBEDDINGS ----------------------------


def test_batch_contrastive_matches_hand_computation():
    # same-person pairs d01 = 2, d23 = 4: mean of d^2 = (4 + 16) / 2 = 10
    # different-person pairs d02 = 3, d03 = 7, d12 = 1, d13 = 5 with margin 4:
    #   max(0, 4 - d)^2 = 1, 0, 9, 0: mean 2.5
    # loss = (10 + 2.5) / 2 = 6.25
    loss = BatchContrastiveLoss(margin=4.0)(LINE_EMBEDDINGS, LINE_LABELS)
    assert loss.item() == pytest.approx(6.25, abs=1e-4)


def test_batch_contrastive_on_a_balanced_batch_equals_the_pair_loss_on_balanced_pairs():
    torch.manual_seed(0)
    embeddings, labels = torch.randn(6, 3), torch.tensor([0, 0, 0, 1, 1, 1])
    pairs = list(itertools.combinations(range(6), 2))
    same = torch.tensor([float(labels[i] == labels[j]) for i, j in pairs])
    first, second = embeddings[[i for i, _ in pairs]], embeddings[[j for _, j in pairs]]
    # weigh each pair so both kinds count half, as the batch loss does
    weights = torch.where(same == 1, 0.5 / same.sum(), 0.5 / (1 - same).sum())
    d = euclidean_distance(first, second)
    expected = (weights * (same * d**2 + (1 - same) * torch.clamp(2.0 - d, min=0) ** 2)).sum()
    assert BatchContrastiveLoss(margin=2.0)(embeddings, labels).item() == pytest.approx(expected.item(), abs=1e-5)


def test_batch_contrastive_needs_both_kinds_of_pair():
    with pytest.raises(ValueError, match="a pair of the same person and a pair of different people"):
        BatchContrastiveLoss()(torch.randn(3, 2), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="labels must have shape"):
        BatchContrastiveLoss()(torch.randn(3, 2), torch.tensor([0, 1]))


def test_batch_hard_matches_hand_computation():
    # margin 0.5; per anchor: farthest positive - closest negative + margin
    # a0: 2 - min(3, 7) + 0.5 = -0.5 -> 0
    # a1: 2 - min(1, 5) + 0.5 = 1.5
    # a2: 4 - min(3, 1) + 0.5 = 3.5
    # a3: 4 - min(7, 5) + 0.5 = -0.5 -> 0
    # mean = 5 / 4 = 1.25
    loss = BatchTripletLoss(margin=0.5, mining="hard")(LINE_EMBEDDINGS, LINE_LABELS)
    assert loss.item() == pytest.approx(1.25, abs=1e-5)


def test_semihard_matches_hand_computation():
    # margin 1.5; per (a, p): closest negative farther than d_ap, else the closest negative
    # (0,1): d_ap 2, negatives 3, 7 -> 3;               2 - 3 + 1.5 = 0.5
    # (1,0): d_ap 2, negatives 1, 5 -> 5;               2 - 5 + 1.5 < 0 -> 0
    # (2,3): d_ap 4, negatives 3, 1 -> none > 4, so 1;  4 - 1 + 1.5 = 4.5
    # (3,2): d_ap 4, negatives 7, 5 -> 5;               4 - 5 + 1.5 = 0.5
    # mean = 5.5 / 4 = 1.375 (batch-hard would give 2.0: (1,0) would use negative 1)
    loss = BatchTripletLoss(margin=1.5, mining="semihard")(LINE_EMBEDDINGS, LINE_LABELS)
    assert loss.item() == pytest.approx(1.375, abs=1e-5)


def test_semihard_negative_must_be_strictly_farther_than_the_positive():
    # x = 0 (p0), 2 (p0), -2 (p1), 3 (p1): d01 2, d02 2, d03 3, d12 4, d13 1, d23 5; margin 1.5
    # (0,1): d_ap 2, negatives 2 (a tie, not farther), 3 -> 3;  2 - 3 + 1.5 = 0.5
    # (1,0): d_ap 2, negatives 4, 1 -> 4;                     2 - 4 + 1.5 < 0 -> 0
    # (2,3): d_ap 5, negatives 2, 4 -> none > 5, so 2;        5 - 2 + 1.5 = 4.5
    # (3,2): d_ap 5, negatives 3, 1 -> none > 5, so 1;        5 - 1 + 1.5 = 5.5
    # mean = 10.5 / 4 = 2.625 (taking the tied negative would give 11.5 / 4)
    embeddings = torch.tensor([[0.0, 0.0], [2.0, 0.0], [-2.0, 0.0], [3.0, 0.0]])
    loss = BatchTripletLoss(margin=1.5, mining="semihard")(embeddings, LINE_LABELS)
    assert loss.item() == pytest.approx(2.625, abs=1e-5)


def test_semihard_loss_and_gradient_match_a_loop_over_every_anchor_and_positive():
    # 6 people x 4 faces, two faces repeated (equal distances: ties among negatives and positives)
    generator = torch.Generator().manual_seed(3)
    embeddings = torch.randn(24, 5, generator=generator)
    embeddings[7], embeddings[13] = embeddings[2], embeddings[4]
    labels = torch.arange(6).repeat_interleave(4)[torch.randperm(24, generator=generator)]

    def reference(x: torch.Tensor) -> torch.Tensor:
        d = pairwise_euclidean(x)
        gaps = []
        for a in range(len(labels)):
            negatives = [n for n in range(len(labels)) if labels[n] != labels[a]]
            for p in range(len(labels)):
                if p == a or labels[p] != labels[a]:
                    continue
                farther = [n for n in negatives if d[a, n] > d[a, p]]
                n = min(farther or negatives, key=lambda n: float(d[a, n]))
                gaps.append(d[a, p] - d[a, n] + 0.3)
        return torch.clamp(torch.stack(gaps), min=0.0).mean()

    x1, x2 = embeddings.clone().requires_grad_(True), embeddings.clone().requires_grad_(True)
    loss = BatchTripletLoss(margin=0.3, mining="semihard")(x1, labels)
    expected = reference(x2)
    loss.backward()
    expected.backward()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-5, atol=1e-7)


def test_batch_all_matches_hand_computation():
    # margin 0.5; all (a, p, n): d_ap - d_an + 0.5
    # (0,1,2) -0.5  (0,1,3) -4.5  (1,0,2) 1.5  (1,0,3) -2.5
    # (2,3,0)  1.5  (2,3,1)  3.5  (3,2,0) -2.5 (3,2,1) -0.5
    # positive ones: 1.5, 1.5, 3.5 -> mean 6.5 / 3
    loss = BatchTripletLoss(margin=0.5, mining="all")(LINE_EMBEDDINGS, LINE_LABELS)
    assert loss.item() == pytest.approx(6.5 / 3, abs=1e-5)


def test_batch_all_is_zero_with_a_gradient_when_every_triplet_is_satisfied():
    embeddings = torch.tensor([[0.0, 0.0], [0.1, 0.0], [10.0, 0.0], [10.1, 0.0]])
    embeddings.requires_grad_(True)
    loss = BatchTripletLoss(margin=0.5, mining="all")(embeddings, LINE_LABELS)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(embeddings.grad, torch.zeros_like(embeddings))


def test_batch_hard_skips_anchors_without_a_positive():
    # a lone person far away has no positive; it is never the closest negative either,
    # so the four other anchors keep their loss of 1.25
    embeddings = torch.cat([LINE_EMBEDDINGS, torch.tensor([[100.0, 0.0]])])
    labels = torch.cat([LINE_LABELS, torch.tensor([2])])
    loss = BatchTripletLoss(margin=0.5, mining="hard")(embeddings, labels)
    assert loss.item() == pytest.approx(1.25, abs=1e-5)


def _reference_batch_triplet(distances, labels, margin, mining):
    """Plain loops over the definitions, for comparison."""
    n = len(labels)
    same = [[labels[i] == labels[j] for j in range(n)] for i in range(n)]
    positives = {a: [p for p in range(n) if p != a and same[a][p]] for a in range(n)}
    negatives = {a: [q for q in range(n) if not same[a][q]] for a in range(n)}
    anchors = [a for a in range(n) if positives[a] and negatives[a]]
    hinge = lambda value: max(value + margin, 0.0)  # noqa: E731
    if mining == "hard":
        losses = [
            hinge(
                max(distances[a][p] for p in positives[a])
                - min(distances[a][q] for q in negatives[a])
            )
            for a in anchors
        ]
        return sum(losses) / len(losses)
    if mining == "semihard":
        losses = []
        for a in anchors:
            for p in positives[a]:
                d_ap = distances[a][p]
                farther = [distances[a][q] for q in negatives[a] if distances[a][q] > d_ap]
                chosen = min(farther) if farther else min(distances[a][q] for q in negatives[a])
                losses.append(hinge(distances[a][p] - chosen))
        return sum(losses) / len(losses)
    losses = [
        hinge(distances[a][p] - distances[a][q])
        for a in anchors
        for p, q in itertools.product(positives[a], negatives[a])
    ]
    active = [value for value in losses if value > 0]
    return sum(active) / len(active) if active else 0.0


@pytest.mark.parametrize("mining", ["hard", "semihard", "all"])
def test_batch_triplet_matches_loop_reference_on_random_batch(mining):
    generator = torch.Generator().manual_seed(2)
    embeddings = torch.randn(12, 3, generator=generator, dtype=torch.float64)
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3])
    loss = BatchTripletLoss(margin=0.3, mining=mining)(embeddings, labels)
    distances = pairwise_euclidean(embeddings).tolist()
    expected = _reference_batch_triplet(distances, labels.tolist(), 0.3, mining)
    assert loss.item() == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("mining", ["hard", "semihard", "all"])
def test_batch_triplet_gradient_is_finite(mining):
    embeddings = torch.cat([LINE_EMBEDDINGS, LINE_EMBEDDINGS[:1]]).requires_grad_(True)
    labels = torch.tensor([0, 0, 1, 1, 0])  # a duplicate face: zero distance to itself
    BatchTripletLoss(margin=0.5, mining=mining)(embeddings, labels).backward()
    assert torch.isfinite(embeddings.grad).all()
    assert embeddings.grad.abs().sum() > 0


def test_batch_triplet_rejects_unknown_mining_naming_the_choices():
    with pytest.raises(ValueError, match="hard, semihard, all.*'easy'"):
        BatchTripletLoss(mining="easy")


def test_batch_triplet_rejects_batch_without_valid_triplet():
    with pytest.raises(ValueError, match="no valid triplet"):
        BatchTripletLoss()(torch.randn(3, 2), torch.tensor([0, 0, 0]))


def test_batch_triplet_rejects_label_length_mismatch():
    with pytest.raises(ValueError, match=r"labels must have shape \(4,\)"):
        BatchTripletLoss()(LINE_EMBEDDINGS, torch.tensor([0, 0, 1]))
