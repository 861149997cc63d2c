"""Distances and metric-learning losses for Siamese face embeddings."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

Distance = Callable[[Tensor, Tensor], Tensor]
DistanceMatrix = Callable[[Tensor], Tensor]

MINING_STRATEGIES = ("hard", "semihard", "all")


def _check_same_2d_shape(**tensors: Tensor) -> None:
    names = list(tensors)
    shapes = [tuple(t.shape) for t in tensors.values()]
    for name, tensor in tensors.items():
        if tensor.dim() != 2:
            raise ValueError(f"{name} must be 2-D (N, D), got shape {tuple(tensor.shape)}")
        if tensor.shape[0] == 0:
            raise ValueError(f"{name} is empty: expected at least one row")
    if len(set(shapes)) != 1:
        described = ", ".join(f"{n} {s}" for n, s in zip(names, shapes))
        raise ValueError(f"expected equal shapes, got {described}")


def exact_sqrt(x: Tensor) -> Tensor:
    """Square root, correctly rounded on every CPU.

    torch.sqrt on float32 CPU tensors refines a hardware reciprocal-square-root
    estimate, which Intel, AMD and emulators round differently: 1 in 5 results is
    off by an ulp, differently per CPU, and training drifts apart from the first
    step. Float64 has no such estimate on AVX2, and the float64 root of a float32,
    rounded back, is the exact float32 root.
    """
    return torch.sqrt(x.double()).to(x.dtype) if x.dtype == torch.float32 else torch.sqrt(x)


def euclidean_distance(a: Tensor, b: Tensor, eps: float = 1e-9) -> Tensor:
    """Row-wise L2 distance of two (N, D) tensors, shape (N,)."""
    _check_same_2d_shape(a=a, b=b)
    # eps inside the root keeps the gradient finite when a row of a equals a row of b
    return exact_sqrt(((a - b) ** 2).sum(dim=1) + eps)


def pairwise_euclidean(x: Tensor, eps: float = 1e-9) -> Tensor:
    """(N, N) L2 distance matrix of the rows of x, with exact zeros on the diagonal."""
    if x.dim() != 2:
        raise ValueError(f"x must be 2-D (N, D), got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError("x is empty: expected at least one row")
    # explicit differences rather than the |x|^2 - 2xy + |y|^2 trick, which cancels
    # badly for near-identical embeddings; batches are small enough for the memory
    squared = ((x.unsqueeze(1) - x.unsqueeze(0)) ** 2).sum(dim=2)
    distances = exact_sqrt(squared + eps)
    off_diagonal = 1.0 - torch.eye(x.shape[0], dtype=x.dtype, device=x.device)
    return distances * off_diagonal


class ContrastiveLoss(nn.Module):
    """Contrastive loss (Hadsell et al. 2006, without the 1/2): label 1 = same person."""

    def __init__(self, margin: float = 2.0, distance: Distance = euclidean_distance) -> None:
        super().__init__()
        if not margin > 0:
            raise ValueError(f"margin must be > 0, got {margin}")
        self.margin = float(margin)
        self.distance = distance

    def forward(self, emb1: Tensor, emb2: Tensor, label: Tensor) -> Tensor:
        _check_same_2d_shape(emb1=emb1, emb2=emb2)
        if label.dim() != 1 or label.shape[0] != emb1.shape[0]:
            raise ValueError(
                f"label must have shape ({emb1.shape[0]},) to match the embeddings, "
                f"got {tuple(label.shape)}"
            )
        if not bool(((label == 0) | (label == 1)).all()):
            raise ValueError("label must contain only 0 (different person) and 1 (same person)")
        same = label.to(emb1.dtype)
        d = self.distance(emb1, emb2)
        pull = same * d**2
        push = (1.0 - same) * torch.clamp(self.margin - d, min=0.0) ** 2
        return (pull + push).mean()


class BatchContrastiveLoss(nn.Module):
    """Contrastive loss over every pair of a batch of P people x K faces.

    Half the mean over the same-person pairs of d^2 plus half the mean over the
    different-person pairs of max(0, margin - d)^2: the loss of a balanced pair
    CSV in expectation, from P*K*(P*K-1)/2 pairs per batch instead of a few.
    """

    def __init__(self, margin: float = 2.0, distance_matrix: DistanceMatrix = pairwise_euclidean) -> None:
        super().__init__()
        if not margin > 0:
            raise ValueError(f"margin must be > 0, got {margin}")
        self.margin = float(margin)
        self.distance_matrix = distance_matrix

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        _check_batch(embeddings, labels)
        distances = self.distance_matrix(embeddings)
        same = labels.unsqueeze(0) == labels.unsqueeze(1)
        upper = torch.ones_like(same).triu(diagonal=1)  # each unordered pair once, no face with itself
        positive, negative = same & upper, ~same & upper
        if not bool(positive.any()) or not bool(negative.any()):
            raise ValueError("batch needs a pair of the same person and a pair of different people")
        pull = (distances[positive] ** 2).mean()
        push = (torch.clamp(self.margin - distances[negative], min=0.0) ** 2).mean()
        return (pull + push) / 2


def _check_batch(embeddings: Tensor, labels: Tensor) -> None:
    if embeddings.dim() != 2 or embeddings.shape[0] == 0:
        raise ValueError(
            f"embeddings must be a non-empty 2-D (N, D) tensor, got shape {tuple(embeddings.shape)}"
        )
    if labels.dim() != 1 or labels.shape[0] != embeddings.shape[0]:
        raise ValueError(
            f"labels must have shape ({embeddings.shape[0]},) to match the embeddings, "
            f"got {tuple(labels.shape)}"
        )


class TripletLoss(nn.Module):
    """Triplet margin loss on given (anchor, positive, negative) rows."""

    def __init__(self, margin: float = 0.2, distance: Distance = euclidean_distance) -> None:
        super().__init__()
        if margin < 0:
            raise ValueError(f"margin must be >= 0, got {margin}")
        self.margin = float(margin)
        self.distance = distance

    def forward(self, anchor: Tensor, positive: Tensor, negative: Tensor) -> Tensor:
        _check_same_2d_shape(anchor=anchor, positive=positive, negative=negative)
        d_ap = self.distance(anchor, positive)
        d_an = self.distance(anchor, negative)
        return torch.clamp(d_ap - d_an + self.margin, min=0.0).mean()


class BatchTripletLoss(nn.Module):
    """Triplet loss with online mining inside a batch of P people x K faces.

    mining: "hard" (batch-hard, Hermans et al. 2017), "semihard" (FaceNet: per
    (anchor, positive) the closest negative farther than the positive, else the
    closest negative) or "all" (mean over the triplets with positive loss).
    """

    def __init__(
        self,
        margin: float = 0.2,
        mining: str = "semihard",
        distance_matrix: DistanceMatrix = pairwise_euclidean,
    ) -> None:
        super().__init__()
        if margin < 0:
            raise ValueError(f"margin must be >= 0, got {margin}")
        if mining not in MINING_STRATEGIES:
            allowed = ", ".join(MINING_STRATEGIES)
            raise ValueError(f"mining must be one of {allowed}, got {mining!r}")
        self.margin = float(margin)
        self.mining = mining
        self.distance_matrix = distance_matrix

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        _check_batch(embeddings, labels)
        distances = self.distance_matrix(embeddings)
        same = labels.unsqueeze(0) == labels.unsqueeze(1)
        is_self = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
        positive_mask = same & ~is_self
        negative_mask = ~same
        anchor_is_valid = positive_mask.any(dim=1) & negative_mask.any(dim=1)
        if not bool(anchor_is_valid.any()):
            raise ValueError(
                "batch has no valid triplet: it needs at least 2 people with 2 faces or more "
                "for one of them"
            )
        if self.mining == "hard":
            return self._batch_hard(distances, positive_mask, negative_mask, anchor_is_valid)
        if self.mining == "semihard":
            return self._semihard(distances, positive_mask, negative_mask, anchor_is_valid)
        return self._batch_all(distances, positive_mask, negative_mask)

    def _batch_hard(
        self,
        distances: Tensor,
        positive_mask: Tensor,
        negative_mask: Tensor,
        anchor_is_valid: Tensor,
    ) -> Tensor:
        minus_inf = torch.full_like(distances, float("-inf"))
        plus_inf = torch.full_like(distances, float("inf"))
        hardest_positive = torch.where(positive_mask, distances, minus_inf).max(dim=1).values
        hardest_negative = torch.where(negative_mask, distances, plus_inf).min(dim=1).values
        # select before subtracting so anchors without a positive never produce inf - inf
        gap = hardest_positive[anchor_is_valid] - hardest_negative[anchor_is_valid]
        return torch.clamp(gap + self.margin, min=0.0).mean()

    def _semihard(
        self,
        distances: Tensor,
        positive_mask: Tensor,
        negative_mask: Tensor,
        anchor_is_valid: Tensor,
    ) -> Tensor:
        """Per (anchor, positive) pair, the closest negative strictly farther than the positive, else the
        anchor's closest negative. Chosen without gradients by sorting each anchor's negatives once and
        searching each positive's distance among them: O(N^2 log N) rather than an (N, N, N) cube of
        candidates, whose masking, minimum and backward cost more than the dlib head's whole step at 128 faces per
        batch (a compact network's step, ~30 ms, hides the ~1 ms it saves there). The
        loss and its gradient are those of the cube's minimum (the same entry: the first of equal ones)."""
        n = distances.shape[0]
        with torch.no_grad():
            negatives = torch.where(negative_mask, distances, torch.full_like(distances, float("inf")))
            ordered, columns = torch.sort(negatives, dim=1, stable=True)  # each anchor's negatives, nearest first
            farther = torch.searchsorted(ordered, distances, right=True)  # first negative > d(anchor, positive)
            has_farther = farther < negative_mask.sum(dim=1, keepdim=True)
            chosen = torch.where(has_farther, columns.gather(1, farther.clamp(max=n - 1)), columns[:, :1])
        pairs = positive_mask & anchor_is_valid.unsqueeze(1)
        gap = distances[pairs] - distances.gather(1, chosen)[pairs]
        return torch.clamp(gap + self.margin, min=0.0).mean()

    def _batch_all(self, distances: Tensor, positive_mask: Tensor, negative_mask: Tensor) -> Tensor:
        gaps = distances.unsqueeze(2) - distances.unsqueeze(1) + self.margin
        valid = positive_mask.unsqueeze(2) & negative_mask.unsqueeze(1)
        losses = torch.clamp(gaps[valid], min=0.0)
        active = losses > 0
        if not bool(active.any()):
            # a zero that stays attached to the graph, so backward() still works
            return losses.sum()
        return losses[active].mean()
