"""Stage `sample`: pairs and triplets of face images, seeded, split train/val/test.

Images are named by their path relative to `data/raw/faces`
(`training/s12/3.pgm`), so the CSVs work in any clone. Training and
validation files come from the training people only; test files from the
held-out people only. Two layouts (`sample.layout`): "split", ORL's
`training/<person>/<image>` and `testing/<person>/<image>`, where the held-out
people are those of `testing/`; and "people", one folder per person,
`<person>/<image>`, where `sample.held_out` names the held-out people or
`sample.held_out_fraction` draws them (seeded). The drawing itself:
`facesim.pipeline.pairs`; the faces and the CSVs as the other stages read them:
`facesim.pipeline.faces`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from facesim.core.atomic import staged_outputs
from facesim.core.paths import natural_key
from facesim.core.params import require
from facesim.mlops.runs import NULL_RUN, Run
from facesim.pipeline.faces import Face, SampleError, list_faces
from facesim.pipeline.pairs import make_pairs, make_triplets, train_val_tables

SPLITS = ("train", "val", "test")
LAYOUTS = ("split", "people")


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


def held_out_rng(seed: int) -> np.random.Generator:
    """The stream that draws held-out people: the third child of `seed`, beside the two of `build_samples`
    (spawning three gives the same first two as spawning two, so ORL's pairs do not move)."""
    return np.random.default_rng(np.random.SeedSequence(seed).spawn(3)[2])


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
