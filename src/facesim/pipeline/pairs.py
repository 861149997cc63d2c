"""Pairs and triplets of faces, drawn with a seeded generator: every image's same-person and different-person
pairs (`make_pairs`), its triplets (`make_triplets`), and their split into training and validation by rows or by
people (`train_val_tables`). The sample stage draws its CSVs with them, the cross-validation each fold's.

A person with a single image has no same-person pair and is never an anchor; their face is still a negative
(another person's) in pairs and triplets.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

import numpy as np
import pandas as pd

from facesim.core.paths import natural_key
from facesim.pipeline.faces import Face, SampleError


PAIR_COLUMNS = ["image1", "image2", "subject1", "subject2", "label"]


TRIPLET_COLUMNS = ["anchor", "positive", "negative", "anchor_subject", "positive_subject", "negative_subject"]


# Up to this many faces, each face's different-person partners are drawn from a shuffle of every other
# person's faces, least-paired first (an O(faces) scan per face, which keeps late faces from finding every
# partner used up); beyond it, by drawing other people's faces at random (O(pairs)): 200,000 faces sample
# in seconds instead of hours. ORL (400) and every data set this size draw exactly as before.
BALANCED_PAIRS_MAX_FACES = 10_000


def _by_subject(faces: list[Face]) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = {}
    for i, face in enumerate(faces):
        groups.setdefault(face.subject, []).append(i)
    return groups


class _OtherFaces:
    """The faces of everyone but one person, by rank, without listing them: rank r in [0, count) is the
    r-th index (ascending) that is not one of `members` (sorted)."""

    def __init__(self, total: int, members: list[int]) -> None:
        self.count = total - len(members)
        # before members[t] lie members[t] - t faces of other people
        self._before = np.asarray(members) - np.arange(len(members))

    def __getitem__(self, ranks: np.ndarray) -> np.ndarray:
        return ranks + np.searchsorted(self._before, ranks, side="right")


def make_pairs(
    faces: list[Face], similar_per_image: int, dissimilar_per_image: int, rng: np.random.Generator
) -> pd.DataFrame:
    """For every image, `similar_per_image` same-subject and `dissimilar_per_image` other-subject pairs.

    No self-pair and no unordered pair twice. Same-subject pairs follow a
    circulant design over a random order of each subject's images (image at
    position p pairs with those at p+1 .. p+k), which gives every image exactly
    k pairs of its own and never repeats one, for k up to (n-1)/2. A subject
    with too few images for that (n <= 2k) gets every pair of its images once
    instead: each image is then in n-1 <= 2k same-subject pairs, as many as the
    circulant design would give it or fewer. A subject with one image has no
    same-subject pair; its face is only ever a negative. Each image then
    starts `dissimilar_per_image` pairs with other subjects' images, or as
    many as are left when fewer are (a few small people, as in a validation
    set of two people, have only so many).
    """
    groups = _by_subject(faces)
    if dissimilar_per_image and len(groups) < 2:
        raise SampleError("dissimilar pairs need at least 2 subjects")
    rows: list[tuple[int, int, int]] = []
    seen: set[tuple[int, int]] = set()

    def add(i: int, j: int, label: int) -> None:
        seen.add((min(i, j), max(i, j)))
        rows.append((i, j, label))

    for subject, members in groups.items():
        n = len(members)
        if n == 1:
            continue
        order = [members[k] for k in rng.permutation(n)]
        if similar_per_image > (n - 1) // 2:  # too few images for k pairs each: every pair once
            for p, i in enumerate(order):
                for j in order[p + 1:]:
                    add(i, j, 1)
            continue
        for p, i in enumerate(order):
            for step in range(1, similar_per_image + 1):
                add(i, order[(p + step) % n], 1)

    subject_of = np.array([f.subject for f in faces])
    # Pairs each image is already in: drawing the least-paired partners first
    # keeps late images from finding every candidate used up.
    load = np.zeros(len(faces), dtype=int)
    others_of = {subject: _OtherFaces(len(faces), members) for subject, members in groups.items()}
    balanced = len(faces) <= BALANCED_PAIRS_MAX_FACES
    for i, face in enumerate(faces):
        if balanced:
            others = rng.permutation(np.flatnonzero(subject_of != face.subject))
            candidates = others[np.argsort(load[others], kind="stable")]
        else:
            candidates = _random_others(others_of[face.subject], dissimilar_per_image, rng)
        taken = 0
        for j in candidates:
            if taken == dissimilar_per_image:
                break
            if (min(i, j), max(i, j)) in seen:
                continue
            add(i, int(j), 0)
            load[[i, j]] += 1
            taken += 1
    return pd.DataFrame(
        {
            "image1": [faces[i].path for i, _, _ in rows],
            "image2": [faces[j].path for _, j, _ in rows],
            "subject1": [faces[i].subject for i, _, _ in rows],
            "subject2": [faces[j].subject for _, j, _ in rows],
            "label": [label for _, _, label in rows],
        },
        columns=PAIR_COLUMNS,
    )


def _random_others(others: _OtherFaces, wanted: int, rng: np.random.Generator) -> Iterator[int]:
    """Other people's faces at random for one face's `wanted` different-person pairs: a few draws at a time
    (some may repeat or be paired already), then, if those ran out, every other face in a random order."""
    for _ in range(8):
        yield from others[rng.integers(others.count, size=2 * wanted + 2)].tolist()
    yield from others[rng.permutation(others.count)].tolist()


def make_triplets(faces: list[Face], triplets_per_image: int, rng: np.random.Generator) -> pd.DataFrame:
    """For every image as anchor, triplets with distinct positives (same subject) and random negatives.

    An anchor with fewer other images of its subject than `triplets_per_image` gets one triplet per
    positive. The face of a person with a single image is no anchor (there is no positive) but can be a
    negative."""
    groups = _by_subject(faces)
    others_of = {subject: _OtherFaces(len(faces), members) for subject, members in groups.items()}
    rows: list[tuple[int, int, int]] = []
    for a, face in enumerate(faces):
        positives = [i for i in groups[face.subject] if i != a]
        if not positives:
            continue
        negatives = others_of[face.subject]
        if triplets_per_image and negatives.count == 0:
            raise SampleError("triplets need at least 2 subjects")
        count = min(triplets_per_image, len(positives))
        chosen_pos = rng.choice(positives, size=count, replace=False)
        # the ranks of other people's faces (as choosing from their list would draw them), then the faces
        chosen_neg = negatives[rng.choice(negatives.count, size=count, replace=negatives.count < count)]
        rows.extend((a, int(p), int(n)) for p, n in zip(chosen_pos, chosen_neg))
    return pd.DataFrame(
        {
            "anchor": [faces[a].path for a, _, _ in rows],
            "positive": [faces[p].path for _, p, _ in rows],
            "negative": [faces[n].path for _, _, n in rows],
            "anchor_subject": [faces[a].subject for a, _, _ in rows],
            "positive_subject": [faces[p].subject for _, p, _ in rows],
            "negative_subject": [faces[n].subject for _, _, n in rows],
        },
        columns=TRIPLET_COLUMNS,
    )


def split_rows(table: pd.DataFrame, val_size: float, rng: np.random.Generator, stratify: str | None = None):
    """Split rows into (train, val) at random, keeping each `stratify` value's share; rows keep their order."""
    groups = [table.index.to_numpy()] if stratify is None else [
        table.index[table[stratify] == value].to_numpy() for value in sorted(table[stratify].unique())
    ]
    val_index: list[int] = []
    for index in groups:
        n_val = int(round(len(index) * val_size))
        val_index.extend(rng.permutation(index)[:n_val].tolist())
    is_val = table.index.isin(val_index)
    return table[~is_val].reset_index(drop=True), table[is_val].reset_index(drop=True)


def split_subjects(faces: list[Face], val_size: float, rng: np.random.Generator) -> tuple[list[Face], list[Face]]:
    """Split faces by subject: validation subjects never appear in training."""
    subjects = sorted({f.subject for f in faces}, key=natural_key)
    n_val = int(round(len(subjects) * val_size))
    if not 2 <= n_val <= len(subjects) - 2:
        raise SampleError(
            f"sample.split_by=subjects with val_size={val_size} gives {n_val} validation subjects out of "
            f"{len(subjects)}; each side needs at least 2 subjects"
        )
    val_subjects = set(rng.permutation(subjects)[:n_val].tolist())
    return [f for f in faces if f.subject not in val_subjects], [f for f in faces if f.subject in val_subjects]


def train_val_tables(
    faces: list[Face],
    similar_per_image: int,
    dissimilar_per_image: int,
    triplets_per_image: int,
    val_size: float,
    split_by: Literal["pairs", "subjects"],
    rng: np.random.Generator,
) -> dict[str, pd.DataFrame]:
    """Training and validation pairs and triplets of `faces`: pairs_train, pairs_val, triplets_train, triplets_val.

    split_by "pairs": draw from all faces, then split rows (pairs stratified by label);
    "subjects": split the people first, then draw within each side.
    """
    if split_by == "pairs":
        pairs = make_pairs(faces, similar_per_image, dissimilar_per_image, rng)
        triplets = make_triplets(faces, triplets_per_image, rng)
        pairs_train, pairs_val = split_rows(pairs, val_size, rng, stratify="label")
        triplets_train, triplets_val = split_rows(triplets, val_size, rng)
    else:
        fit_faces, val_faces = split_subjects(faces, val_size, rng)
        pairs_train = make_pairs(fit_faces, similar_per_image, dissimilar_per_image, rng)
        pairs_val = make_pairs(val_faces, similar_per_image, dissimilar_per_image, rng)
        triplets_train = make_triplets(fit_faces, triplets_per_image, rng)
        triplets_val = make_triplets(val_faces, triplets_per_image, rng)
    return {"pairs_train": pairs_train, "pairs_val": pairs_val,
            "triplets_train": triplets_train, "triplets_val": triplets_val}
