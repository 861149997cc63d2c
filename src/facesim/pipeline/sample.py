"""Stage `sample`: pairs and triplets of face images, seeded, split train/val/test.

Images are named by their path relative to `data/raw/faces`
(`training/s12/3.pgm`), so the CSVs work in any clone. Training and
validation files come from the training people only; test files from the
held-out people only. Two layouts (`sample.layout`): "split", ORL's
`training/<person>/<image>` and `testing/<person>/<image>`, where the held-out
people are those of `testing/`; and "people", one folder per person,
`<person>/<image>`, where `sample.held_out` names the held-out people or
`sample.held_out_fraction` draws them (seeded). A person with a single image
has no same-person pair and is never an anchor; their face is still a
negative (another person's) in pairs and triplets.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from facesim.core.atomic import staged_outputs
from facesim.core.paths import natural_key
from facesim.core.params import require
from facesim.mlops.tracking import NULL_RUN, Run

PAIR_COLUMNS = ["image1", "image2", "subject1", "subject2", "label"]
TRIPLET_COLUMNS = ["anchor", "positive", "negative", "anchor_subject", "positive_subject", "negative_subject"]
SPLITS = ("train", "val", "test")
LAYOUTS = ("split", "people")


class SampleError(ValueError):
    """The raw faces cannot give the pairs or triplets asked for."""


@dataclass(frozen=True)
class SampleParams:
    seed: int  # seeds every random choice of this stage
    similar_per_image: int  # same-subject pairs drawn for each training image (label 1)
    dissimilar_per_image: int  # other-subject pairs drawn for each training image (label 0)
    triplets_per_image: int  # (anchor, positive, negative) triplets per training image as anchor
    test_similar_per_image: int
    test_dissimilar_per_image: int
    test_triplets_per_image: int
    val_size: float  # share of training pairs/triplets (or subjects) held out for validation
    split_by: Literal["pairs", "subjects"]  # "subjects": validation subjects unseen in training
    # "split": <group>/<person>/<image> with groups training/ and testing/ (ORL; testing/ is held out);
    # "people": <person>/<image>, the held-out people named by held_out or drawn by held_out_fraction
    layout: Literal["split", "people"]
    held_out: tuple[str, ...]  # layout "people": the people (folder names) kept for the test set
    held_out_fraction: float  # layout "people": else this share of the people, drawn with `seed`

    def validate(self) -> None:
        for name in (
            "similar_per_image",
            "dissimilar_per_image",
            "triplets_per_image",
            "test_similar_per_image",
            "test_dissimilar_per_image",
            "test_triplets_per_image",
        ):
            value = getattr(self, name)
            require(value >= 0, f"sample.{name} must be >= 0, got {value}")
        require(
            self.similar_per_image + self.dissimilar_per_image > 0,
            "sample.similar_per_image and sample.dissimilar_per_image cannot both be 0",
        )
        require(0 < self.val_size < 1, f"sample.val_size must be between 0 and 1 (exclusive), got {self.val_size}")
        require(self.layout in LAYOUTS, f"sample.layout must be one of {', '.join(LAYOUTS)}, got {self.layout!r}")
        if self.layout == "split":
            require(not self.held_out and self.held_out_fraction == 0,
                    "sample.held_out and sample.held_out_fraction are for sample.layout 'people'; with 'split' "
                    "the held-out people are those of the testing/ folder")
        else:
            require(bool(self.held_out) != (self.held_out_fraction > 0),
                    "sample.layout 'people' needs exactly one of sample.held_out (a list of people) and "
                    f"sample.held_out_fraction (a share of them), got {list(self.held_out)} and "
                    f"{self.held_out_fraction}")
            require(0 <= self.held_out_fraction < 1,
                    f"sample.held_out_fraction must be in [0, 1), got {self.held_out_fraction}")
            require(len(set(self.held_out)) == len(self.held_out),
                    f"sample.held_out names a person twice: {list(self.held_out)}")


@dataclass(frozen=True)
class Face:
    path: str  # relative to data/raw/faces, POSIX separators
    subject: str  # e.g. "s12"


def list_faces(faces_dir: str | os.PathLike, group: Literal["training", "testing"] | None = None) -> list[Face]:
    """The images `faces_dir/group/<person>/<image>` (group None: `faces_dir/<person>/<image>`), in
    natural order (s2 before s10). Every file counts (the fetch stage keeps only images), but for hidden
    ones (.DS_Store)."""
    base = Path(faces_dir) / group if group else Path(faces_dir)
    if not base.is_dir():
        raise SampleError(f"{base}: directory not found (run the fetch stage first)")
    faces = [
        Face(path=p.relative_to(faces_dir).as_posix(), subject=p.parent.name)
        for p in base.glob("*/*") if p.is_file() and not p.name.startswith(".")
    ]
    if not faces:
        raise SampleError(f"{base}: no <person>/<image> files found")
    return sorted(faces, key=lambda f: natural_key(f.path))


def held_out_people(people: list[str], params: SampleParams, rng: np.random.Generator) -> set[str]:
    """Layout "people": the people of the test set, `sample.held_out` or drawn by `held_out_fraction`."""
    if params.held_out:
        unknown = sorted(set(params.held_out) - set(people), key=natural_key)
        if unknown:
            raise SampleError(f"sample.held_out names {', '.join(unknown)}, who have no folder among the "
                              f"{len(people)} people of the faces")
        chosen = set(params.held_out)
    else:
        n = int(round(len(people) * params.held_out_fraction))
        chosen = set(rng.permutation(sorted(people, key=natural_key))[:n].tolist())
    if not 1 <= len(chosen) <= len(people) - 2:
        raise SampleError(f"sample.held_out / held_out_fraction keeps {len(chosen)} of {len(people)} people for "
                          "testing; at least 1 must be held out and 2 left for training")
    return chosen


def split_faces(params: SampleParams, faces_dir: str | os.PathLike,
                rng: np.random.Generator | None = None) -> tuple[list[Face], list[Face]]:
    """(training faces, held-out faces) as `params.layout` lays them out. `rng` draws the held-out
    people of `held_out_fraction` (default: the stream `build_samples` uses)."""
    if params.layout == "split":
        return list_faces(faces_dir, "training"), list_faces(faces_dir, "testing")
    everyone = list_faces(faces_dir)
    rng = rng if rng is not None else held_out_rng(params.seed)
    held_out = held_out_people(sorted({f.subject for f in everyone}), params, rng)
    return [f for f in everyone if f.subject not in held_out], [f for f in everyone if f.subject in held_out]


def all_faces(faces_dir: str | os.PathLike, layout: Literal["split", "people"] = "split") -> list[Face]:
    """Every face of every person (cross-validation deals them into groups itself)."""
    if layout == "split":
        return list_faces(faces_dir, "training") + list_faces(faces_dir, "testing")
    return list_faces(faces_dir)


def held_out_rng(seed: int) -> np.random.Generator:
    """The stream that draws held-out people: the third child of `seed`, beside the two of `build_samples`
    (spawning three gives the same first two as spawning two, so ORL's pairs do not move)."""
    return np.random.default_rng(np.random.SeedSequence(seed).spawn(3)[2])


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


def build_samples(params: SampleParams, faces_dir: str | os.PathLike) -> dict[str, dict[str, pd.DataFrame]]:
    """All six tables: {"pairs": {"train": ..., "val": ..., "test": ...}, "triplets": {...}}."""
    # Independent streams, so that changing the test factors never reshuffles training data.
    train_rng, test_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(params.seed).spawn(2))
    training, testing = split_faces(params, faces_dir)

    fit = train_val_tables(training, params.similar_per_image, params.dissimilar_per_image,
                           params.triplets_per_image, params.val_size, params.split_by, train_rng)
    pairs_test = make_pairs(testing, params.test_similar_per_image, params.test_dissimilar_per_image, test_rng)
    triplets_test = make_triplets(testing, params.test_triplets_per_image, test_rng)
    return {
        "pairs": {"train": fit["pairs_train"], "val": fit["pairs_val"], "test": pairs_test},
        "triplets": {"train": fit["triplets_train"], "val": fit["triplets_val"], "test": triplets_test},
    }


def sample_stats(tables: dict[str, dict[str, pd.DataFrame]]) -> dict[str, float]:
    """Rows per file and the share of same-person pairs: the stage's metrics."""
    stats: dict[str, float] = {}
    for kind, splits in tables.items():
        for split, table in splits.items():
            stats[f"{kind}_{split}_rows"] = len(table)
            if kind == "pairs":
                stats[f"pairs_{split}_positive_share"] = float(table["label"].mean()) if len(table) else 0.0
    return stats


def write_samples(
    params: SampleParams,
    faces_dir: str | os.PathLike,
    outputs: dict[str, dict[str, str | os.PathLike]],
    run: Run = NULL_RUN,
) -> dict[str, float]:
    """Build the tables and write them to `outputs[kind][split]` (CSV), all or none."""
    tables = build_samples(params, faces_dir)
    stats = sample_stats(tables)
    keys = [(kind, split) for kind in ("pairs", "triplets") for split in SPLITS]
    missing = [f"{k}.{s}" for k, s in keys if s not in outputs.get(k, {})]
    if missing:
        raise ValueError(f"no output path given for {', '.join(missing)}")
    with staged_outputs(*(outputs[k][s] for k, s in keys)) as staged:
        for (kind, split), path in zip(keys, staged):
            tables[kind][split].to_csv(path, index=False, lineterminator="\n")
        run.log_metrics(stats)
    return stats


def load_tables(paths: dict[str, str | os.PathLike]) -> dict[str, pd.DataFrame]:
    """The sample CSVs by name; a missing one says to run the sample stage."""
    tables = {}
    for name, path in paths.items():
        try:
            tables[name] = pd.read_csv(path)
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: not found (run the sample stage first)") from None
    return tables


FACE_COLUMNS = ("image1", "image2", "anchor", "positive", "negative")  # the columns of the CSVs that name a face


def held_out_faces(test_pairs: pd.DataFrame) -> list[Face]:
    """The held-out faces: every face the test pairs name, once each, in natural order, with its person.

    The sample stage decides who is held out (the `testing` folder, or `sample.held_out` /
    `held_out_fraction`) and draws test pairs for every held-out image, so the stages after it read
    the held-out faces from its test pairs whatever the layout."""
    people = {path: subject for column, subject_column in (("image1", "subject1"), ("image2", "subject2"))
              for path, subject in zip(test_pairs[column], test_pairs[subject_column])}
    return [Face(path=path, subject=str(people[path])) for path in sorted(people, key=natural_key)]


def face_paths(tables: dict[str, pd.DataFrame]) -> pd.Series:
    """Every face the sample tables name (with repeats), as paths relative to the faces folder."""
    return pd.concat([table[column] for table in tables.values() for column in table.columns
                      if column in FACE_COLUMNS])
