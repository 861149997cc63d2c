"""Retrieval metrics on embeddings: the k nearest gallery faces of each query, precision@k and mean average
precision (the conventions of `facesim.core.metrics`: a distance is lower for more similar faces)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from facesim.core.metrics import validate_embeddings


def top_k_neighbours(
    query_embeddings: np.ndarray,
    gallery_embeddings: np.ndarray,
    k: int,
    exclude_self: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """Indices and distances (each (Q, k)) of the k nearest gallery rows for every query.

    exclude_self: query i is gallery item i, so it is not its own neighbour.
    Equal distances keep gallery order, so results are deterministic.
    """
    queries = validate_embeddings(query_embeddings, "query_embeddings")
    gallery = validate_embeddings(gallery_embeddings, "gallery_embeddings")
    if queries.shape[1] != gallery.shape[1]:
        raise ValueError(
            f"query and gallery dimensions differ: {queries.shape[1]} vs {gallery.shape[1]}"
        )
    if exclude_self and len(queries) != len(gallery):
        raise ValueError(
            "exclude_self needs the queries to be the gallery itself, got "
            f"{len(queries)} queries and {len(gallery)} gallery items"
        )
    available = len(gallery) - (1 if exclude_self else 0)
    if not 1 <= k <= available:
        raise ValueError(f"k must be between 1 and {available}, got {k}")
    from scipy.spatial.distance import cdist

    distances = cdist(queries, gallery, metric="euclidean")
    if exclude_self:
        np.fill_diagonal(distances, np.inf)
    order = np.argsort(distances, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(distances, order, axis=1)


def retrieval_metrics(
    embeddings: np.ndarray, labels: np.ndarray, ks: Sequence[int] = (1, 5)
) -> dict[str, float]:
    """precision_at_{k} and mean average precision, each item a query against all others.

    An item alone with its label (a person with a single face) is no query, as it has nothing to
    find, but stays among the others every query ranks."""
    embeddings = validate_embeddings(embeddings)
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) != len(embeddings):
        raise ValueError(
            f"labels must have shape ({len(embeddings)},) to match the embeddings, "
            f"got {labels.shape}"
        )
    others = len(labels) - 1
    for k in ks:
        if not 1 <= k <= others:
            raise ValueError(f"every k in ks must be between 1 and {others}, got {k}")
    ranking, _ = top_k_neighbours(embeddings, embeddings, others, exclude_self=True)
    relevant = labels[ranking] == labels[:, None]
    relevant_count = relevant.sum(axis=1)
    queries = relevant_count > 0
    if not queries.any():
        raise ValueError("no item shares its label with another, so there is nothing to retrieve: "
                         "some label needs at least 2 items")
    relevant, relevant_count = relevant[queries], relevant_count[queries]
    hits_so_far = np.cumsum(relevant, axis=1)
    ranks = np.arange(1, others + 1)
    average_precision = (relevant * hits_so_far / ranks).sum(axis=1) / relevant_count
    results = {f"precision_at_{k}": float(relevant[:, :k].mean()) for k in ks}
    results["map"] = float(average_precision.mean())
    return results
