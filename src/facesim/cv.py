"""Subject-disjoint k-fold cross-validation: every model meets people it never saw.

The three held-out subjects of the original split are too easy to tell good
models apart. Here the 40 subjects are shuffled (seeded) into `folds` groups;
each fold trains on the faces of the other subjects (pairs and triplets drawn
and split train/validation exactly as the sample stage does) and scores every
unordered pair and every retrieval query among the unseen subjects' faces.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch

from facesim.atomic import staged_outputs
from facesim.data import FaceSet
from facesim.metrics import (
    all_unordered_pairs,
    choose_threshold,
    equal_error_rate,
    retrieval_metrics,
    roc_auc,
    verification_metrics,
)
from facesim.models import MODELS, embed_all
from facesim.params import ParamsError, load_params_file, parse_section, require
from facesim.sample import Face, train_val_tables
from facesim.tracking import NULL_RUN, Run
from facesim.train import TrainParams, fit


@dataclass(frozen=True)
class CVParams:
    seed: int = 42  # the subject shuffle and every fold's pairs and triplets
    folds: int = 5  # 40 subjects / 5 = 8 unseen subjects per fold
    models: tuple[str, ...] = MODELS
    similar_per_image: int = 3  # training pairs per image, as in the sample stage
    dissimilar_per_image: int = 3
    triplets_per_image: int = 3
    val_size: float = 0.2
    split_by: Literal["pairs", "subjects"] = "pairs"  # "subjects": validation people unseen in training too
    retrieval_k: tuple[int, ...] = (1, 5)

    def validate(self) -> None:
        require(self.folds >= 2, f"cv.folds must be >= 2, got {self.folds}")
        require(len(self.models) > 0 and all(m in MODELS for m in self.models),
                f"cv.models must be a non-empty list of {', '.join(MODELS)}, got {list(self.models)}")
        require(0 < self.val_size < 1, f"cv.val_size must be between 0 and 1 (exclusive), got {self.val_size}")
        require(len(self.retrieval_k) > 0 and all(k >= 1 for k in self.retrieval_k),
                f"cv.retrieval_k must be a non-empty list of integers >= 1, got {list(self.retrieval_k)}")


def load_cv_params(path: str | os.PathLike) -> tuple[CVParams, TrainParams]:
    """The `cv` section, and the `train` section with the keys of `cv.train` put over it.

    Cross-validation need not fit the pipeline's time budget, so `cv.train` may
    train the same recipe longer (or change any other train key); nested
    sections (`triplet`, `contrastive`) are overridden key by key.
    """
    data = load_params_file(path)
    for section in ("cv", "train"):
        if not isinstance(data.get(section), dict):
            raise ParamsError(f"{path}: missing section '{section}'")
    raw_cv = dict(data["cv"])
    overrides = raw_cv.pop("train", None) or {}
    cv = parse_section(CVParams, raw_cv, "cv", source=str(path))
    # parsed alone first, so that a bad key is named as cv.train.<key>
    parse_section(TrainParams, overrides, "cv.train", source=str(path), validate=False)
    train = parse_section(TrainParams, _merge(data["train"], overrides), "train", source=str(path))
    return cv, train


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        merged[key] = _merge(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return merged


def subject_folds(subjects: list[str], folds: int, seed: int) -> list[list[str]]:
    """Subjects shuffled by `seed` and dealt into `folds` groups of (nearly) equal size."""
    unique = sorted(set(subjects))
    if folds > len(unique):
        raise ValueError(f"cv.folds={folds} exceeds the {len(unique)} subjects")
    order = np.random.default_rng(seed).permutation(unique).tolist()
    return [sorted(order[i::folds]) for i in range(folds)]


def fold_tables(train_faces: list[Face], params: CVParams, rng: np.random.Generator) -> dict[str, pd.DataFrame]:
    """Training and validation pairs and triplets of one fold, drawn the way the sample stage draws them."""
    return train_val_tables(train_faces, params.similar_per_image, params.dissimilar_per_image,
                            params.triplets_per_image, params.val_size, params.split_by, rng)


def subset(faces: FaceSet, paths: list[str]) -> FaceSet:
    """The rows of `faces` for `paths`, without decoding anything again."""
    rows = faces.rows(paths)
    return FaceSet(paths=list(paths), subjects=[faces.subjects[i] for i in rows.tolist()], tensor=faces.tensor[rows])


def unseen_metrics(embeddings: np.ndarray, subjects: list[str], threshold: float,
                   retrieval_k: tuple[int, ...]) -> dict[str, float]:
    """Verification over every unordered pair of the unseen faces, and retrieval among them."""
    first, second, same = all_unordered_pairs(np.asarray(subjects))
    distances = np.linalg.norm(embeddings[first] - embeddings[second], axis=1)
    return {
        "roc_auc": roc_auc(distances, same),
        "eer": equal_error_rate(distances, same),
        "accuracy": verification_metrics(distances, same, threshold)["accuracy"],
        **retrieval_metrics(embeddings, np.asarray(subjects), ks=retrieval_k),
    }


def summarise(per_fold: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Mean and (population) standard deviation of every metric over the folds."""
    keys = [k for k in per_fold[0] if k != "fold"]
    values = {k: np.array([row[k] for row in per_fold], dtype=float) for k in keys}
    return {"mean": {k: float(v.mean()) for k, v in values.items()},
            "std": {k: float(v.std()) for k, v in values.items()}}


def cross_validate(
    cv: CVParams,
    train: TrainParams,
    faces: list[Face],
    faces_dir: str | os.PathLike,
    run: Run = NULL_RUN,
    log: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True),
) -> dict[str, Any]:
    """Train and score every model of `cv.models` on every fold; returns the report dict."""
    everyone = FaceSet.load(faces_dir, [f.path for f in faces], train.preprocess())
    groups = subject_folds([f.subject for f in faces], cv.folds, cv.seed)
    fold_rngs = [np.random.default_rng(s) for s in np.random.SeedSequence(cv.seed).spawn(cv.folds)]
    quiet = lambda line: None  # noqa: E731 - per-epoch lines of 5 x 2 trainings drown the summary
    results: dict[str, list[dict[str, float]]] = {m: [] for m in cv.models}
    for fold, (unseen, rng) in enumerate(zip(groups, fold_rngs), start=1):
        seen_faces = [f for f in faces if f.subject not in unseen]
        test_paths = [f.path for f in faces if f.subject in unseen]
        tables = fold_tables(seen_faces, cv, rng)
        seen = subset(everyone, [f.path for f in seen_faces])
        test = subset(everyone, test_paths)
        val = tables["pairs_val"]
        for model_name in cv.models:
            started = time.perf_counter()
            result = fit(model_name, train, tables, seen, log=quiet)
            seen_embeddings = embed_all(result.model, seen.tensor).numpy()
            val_d = np.linalg.norm(seen_embeddings[seen.rows(val["image1"]).numpy()]
                                   - seen_embeddings[seen.rows(val["image2"]).numpy()], axis=1)
            threshold = choose_threshold(val_d, val["label"].to_numpy())
            metrics = unseen_metrics(embed_all(result.model, test.tensor).numpy(), test.subjects, threshold,
                                     cv.retrieval_k)
            row = {"fold": fold, **metrics, "epochs_run": len(result.history),
                   "seconds": time.perf_counter() - started}
            results[model_name].append(row)
            run.log_metrics({f"{model_name}.{k}": v for k, v in row.items() if k != "fold"}, step=fold)
            log(f"cv@{model_name} fold {fold}/{cv.folds} (unseen {', '.join(unseen)}): "
                f"AUC {metrics['roc_auc']:.4f}  EER {metrics['eer']:.4f}  "
                f"P@1 {metrics['precision_at_1']:.3f}  mAP {metrics['map']:.3f}  "
                f"{len(result.history)} epochs  {row['seconds']:.0f}s")
    report = {
        "protocol": f"{cv.folds}-fold subject-disjoint cross-validation over {len(set(f.subject for f in faces))} "
                    "subjects; all unordered pairs and retrieval among the unseen subjects' faces",
        "config": {"cv": dataclasses.asdict(cv), "train": {m: train.resolved(m) for m in cv.models}},
        "folds": [list(g) for g in groups],
        "models": {m: {**summarise(rows), "per_fold": rows} for m, rows in results.items()},
    }
    return report


def write_report(report: dict[str, Any], out: str | os.PathLike, run: Run = NULL_RUN) -> None:
    """Write the report JSON (atomically) and log its means and standard deviations."""
    with staged_outputs(out) as (path,):
        path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        for model, summary in report["models"].items():
            run.log_metrics({f"{model}.{stat}.{k}": v for stat in ("mean", "std") for k, v in summary[stat].items()})
        run.log_artifact(path, "metrics")
