"""Subject-disjoint k-fold cross-validation: every model meets people it never saw.

The three held-out subjects of the original split are too easy to tell good
models apart. Here the 40 subjects are shuffled (seeded by `cv.seed`) into
`cv.subject_groups` groups; fold k trains on the faces of the other groups'
people (pairs and triplets drawn and split train/validation exactly as the
sample stage does), calibrates its threshold on its validation people exactly
as the evaluate stage does, and scores every unordered pair and every
retrieval query among group k's faces. Each (model, fold, training seed) is
one DVC stage of `cv/dvc.yaml` (`run_fold`); `summarise_folds` gathers them.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from facesim.core.atomic import staged_outputs
from facesim.core.data import FaceSet
from facesim.core.metrics import (
    REPORTED_FARS,
    best_accuracy,
    headline,
    retrieval_metrics,
    roc_points,
    unordered_pair_distances,
    verification_metrics,
)
from facesim.core.model_files import MODELS
from facesim.core.embedding import embed_all
from facesim.core.models import require_backbone
from facesim.core.params import ParamsError, load_params_file, parse_section, require
from facesim.pipeline.sample import Face, train_val_tables
from facesim.mlops.tracking import NULL_RUN, Run
from facesim.pipeline.calibration import OperatingPoint, calibrate, calibration_pairs
from facesim.pipeline.fit import fit
from facesim.pipeline.train_params import TrainParams, backbone_keys, merge

# The figures of one fold the summary averages (all in [0, 1]; lower is better for eer, far, frr).
FOLD_METRICS = ("roc_auc", "eer", "accuracy", "best_accuracy", "far", "frr",
                *(f"tar_at_far_{name}" for name in REPORTED_FARS),
                "precision_at_1", "precision_at_5", "map")


@dataclass(frozen=True)
class CVParams:
    seed: int = 42  # which subjects share a group, and every fold's pairs and triplets
    subject_groups: int = 5  # 40 subjects / 5 = 8 unseen subjects per fold
    folds: tuple[int, ...] = (1, 2, 3, 4, 5)  # which groups to hold out, one fold each (1-based)
    seeds: tuple[int, ...] = (1, 2, 3)  # training seeds (train.seed): each fold is trained once per seed
    models: tuple[str, ...] = MODELS
    similar_per_image: int = 3  # training pairs per image, as in the sample stage
    dissimilar_per_image: int = 3
    triplets_per_image: int = 3
    val_size: float = 0.2
    # "subjects": validation (calibration) people unseen in training, as in the sample stage
    split_by: Literal["pairs", "subjects"] = "subjects"
    retrieval_k: tuple[int, ...] = (1, 5)
    backbones: tuple[str, ...] = ("compact",)  # names of the top-level backbones section, each one cross-validated

    def validate(self) -> None:
        require(self.subject_groups >= 2, f"cv.subject_groups must be >= 2, got {self.subject_groups}")
        require(len(self.folds) > 0 and all(1 <= f <= self.subject_groups for f in self.folds)
                and len(set(self.folds)) == len(self.folds),
                f"cv.folds must be distinct group numbers from 1 to cv.subject_groups ({self.subject_groups}), "
                f"got {list(self.folds)}")
        require(len(self.seeds) > 0 and len(set(self.seeds)) == len(self.seeds),
                f"cv.seeds must be a non-empty list of distinct integers, got {list(self.seeds)}")
        require(len(self.models) > 0 and all(m in MODELS for m in self.models),
                f"cv.models must be a non-empty list of {', '.join(MODELS)}, got {list(self.models)}")
        require(0 < self.val_size < 1, f"cv.val_size must be between 0 and 1 (exclusive), got {self.val_size}")
        require(len(self.retrieval_k) > 0 and all(k >= 1 for k in self.retrieval_k),
                f"cv.retrieval_k must be a non-empty list of integers >= 1, got {list(self.retrieval_k)}")
        require(len(self.backbones) > 0 and len(set(self.backbones)) == len(self.backbones),
                f"cv.backbones must be a non-empty list of distinct backbone names, got {list(self.backbones)}")


def load_cv_params(path: str | os.PathLike, backbone: str | None = None) -> tuple[CVParams, TrainParams]:
    """The `cv` section, and the `train` section with the keys of `cv.train` put over it, then those of
    `backbones.<backbone>` (when `backbone` is given: one of `cv.backbones`).

    Cross-validation need not fit the pipeline's time budget, so `cv.train` may
    train the same recipe longer (or change any other train key); nested
    sections (`triplet`, `contrastive`) are overridden key by key. The
    top-level `backbones` section names each backbone with the train keys it
    needs (the dlib backbone: its head's size and learning rate), for the
    pipeline and the CV alike.
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
    for name in cv.backbones:
        backbone_keys(data, name, str(path))  # each named backbone exists and sets train keys only
    if backbone is not None:
        if backbone not in cv.backbones:
            raise ParamsError(f"{path}: cv.backbones has no {backbone!r}; it names {', '.join(cv.backbones)}")
        overrides = merge(overrides, backbone_keys(data, backbone, str(path)))
    train = parse_section(TrainParams, merge(data["train"], overrides), "train", source=str(path))
    return cv, train


def load_operating_point(path: str | os.PathLike) -> OperatingPoint:
    """The evaluate section's operating point (`evaluate.operating_point`, `evaluate.target_far`): every fold
    calibrates its threshold as the evaluate stage does."""
    section = load_params_file(path).get("evaluate") or {}
    keys = {k: section[k] for k in ("operating_point", "target_far") if k in section}
    return parse_section(OperatingPoint, keys, "evaluate", source=str(path))


def subject_folds(subjects: list[str], folds: int, seed: int) -> list[list[str]]:
    """Subjects shuffled by `seed` and dealt into `folds` groups of (nearly) equal size."""
    unique = sorted(set(subjects))
    if folds > len(unique):
        raise ValueError(f"cv.subject_groups={folds} exceeds the {len(unique)} subjects")
    order = np.random.default_rng(seed).permutation(unique).tolist()
    return [sorted(order[i::folds]) for i in range(folds)]


def fold_tables(train_faces: list[Face], params: CVParams, rng: np.random.Generator) -> dict[str, pd.DataFrame]:
    """Training and validation pairs and triplets of one fold, drawn the way the sample stage draws them."""
    return train_val_tables(train_faces, params.similar_per_image, params.dissimilar_per_image,
                            params.triplets_per_image, params.val_size, params.split_by, rng)


@dataclass(frozen=True)
class FoldSplit:
    """What one fold trains on and what it scores: the same for every training seed of the fold."""

    seen: list[Face]  # the faces of the other groups' people: training and validation
    unseen: list[Face]  # the faces of the held-out group's people: scored
    tables: dict[str, pd.DataFrame]  # the pairs and triplets of the seen faces (`fold_tables`)


def fold_split(cv: CVParams, fold: int, faces: list[Face]) -> FoldSplit:
    """Fold `fold`'s split of `faces` (every person of the data): `cv.seed` deals the people into
    `cv.subject_groups` groups, and draws each fold's tables from a random stream of its own."""
    if not 1 <= fold <= cv.subject_groups:
        raise ParamsError(f"fold {fold} is not among the cv.subject_groups={cv.subject_groups} groups")
    groups = subject_folds([f.subject for f in faces], cv.subject_groups, cv.seed)
    rng = np.random.default_rng(np.random.SeedSequence(cv.seed).spawn(cv.subject_groups)[fold - 1])
    unseen = set(groups[fold - 1])
    seen_faces = [f for f in faces if f.subject not in unseen]
    return FoldSplit(seen=seen_faces, unseen=[f for f in faces if f.subject in unseen],
                     tables=fold_tables(seen_faces, cv, rng))


def validation_faces(tables: dict[str, pd.DataFrame]) -> list[str]:
    """The faces of the validation pairs, sorted: the people the threshold is calibrated on."""
    val = tables["pairs_val"]
    return sorted(set(val["image1"]) | set(val["image2"]))


def unseen_metrics(embeddings: np.ndarray, subjects: list[str], threshold: float,
                   retrieval_k: tuple[int, ...]) -> tuple[dict[str, float], tuple[np.ndarray, np.ndarray]]:
    """Verification over every unordered pair of the unseen faces at `threshold`, and retrieval among them.

    Returns the metrics and the (distances, labels) of the pairs, for the ROC curve.
    """
    _, _, same, distances = unordered_pair_distances(embeddings, np.asarray(subjects))
    verification = verification_metrics(distances, same, threshold)
    metrics = {
        **{k: verification[k] for k in FOLD_METRICS if k in verification},
        "best_accuracy": best_accuracy(distances, same),
        "threshold": float(threshold),
        **retrieval_metrics(embeddings, np.asarray(subjects), ks=retrieval_k),
    }
    return metrics, (distances, same)


def calibration_gap(metrics: dict[str, Any], target_far: float | None) -> float:
    """How far the unseen people's figures fell from what calibration promised: |realised FAR - target| at a
    target FAR; at the best-accuracy point, how far accuracy fell below the best any threshold reached."""
    if target_far is None:
        return float(metrics["best_accuracy"] - metrics["accuracy"])
    return float(abs(metrics["far"] - target_far))


@dataclass
class FoldResult:
    metrics: dict[str, Any]  # FOLD_METRICS, the threshold, and which fold, model and seed
    roc: pd.DataFrame  # fpr, tpr, threshold of every unordered pair of the unseen faces
    epochs_run: int
    seconds: float  # wall-clock time of the fold, for MLflow only (it differs on every run)


def run_fold(
    cv: CVParams,
    train: TrainParams,
    model_name: str,
    fold: int,
    seed: int,
    faces: list[Face],
    faces_dir: str | os.PathLike,
    target_far: float | None = 0.004,
    log: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True),
) -> FoldResult:
    """Train `model_name` with training seed `seed` on every group but `fold`'s, calibrate its threshold on
    the fold's validation people for `target_far` (None: the best accuracy), and score it on that group."""
    require_backbone(train)  # a missing ImageNet file or dlib stops the fold before any work
    split = fold_split(cv, fold, faces)  # whatever the training seed: all seeds of a fold share it
    tables = split.tables
    params = replace(train, seed=seed, processes=1)  # a fold trains in one process: folds run side by side
    everyone = FaceSet.load(faces_dir, [f.path for f in faces], params.preprocess())
    seen = everyone.subset([f.path for f in split.seen])
    test = everyone.subset([f.path for f in split.unseen])
    calibration = everyone.subset(validation_faces(tables))
    training = everyone.subset(sorted({f.path for f in split.seen} - set(calibration.paths)))
    unseen = {f.subject for f in split.unseen}

    started = time.perf_counter()
    result = fit(model_name, params, tables, seen, log=lambda line: None)
    calibration_embeddings = embed_all(result.model, calibration.tensor).numpy()
    calibration_people = np.asarray(calibration.subjects)
    training_embeddings = embed_all(result.model, training.tensor).numpy()
    threshold = calibrate(calibration_embeddings, calibration_people, target_far, training_embeddings)
    metrics, (distances, same) = unseen_metrics(embed_all(result.model, test.tensor).numpy(), test.subjects,
                                                threshold, cv.retrieval_k)
    calibration_distances, calibration_same = calibration_pairs(calibration_embeddings, calibration_people,
                                                                target_far, training_embeddings)
    # the FAR the threshold promised on its calibration pairs, and how far the unseen people's fell from it
    metrics.update(target_far=target_far,
                   calibration_far=verification_metrics(calibration_distances, calibration_same, threshold)["far"],
                   calibration_gap=calibration_gap(metrics, target_far))
    fpr, tpr, thresholds = roc_points(distances, same)
    log(f"cv@{model_name} fold {fold} seed {seed} (unseen {', '.join(sorted(unseen))}): "
        f"AUC {metrics['roc_auc']:.4f}  EER {metrics['eer']:.4f}  FAR {metrics['far']:.4f}  FRR {metrics['frr']:.4f}  "
        f"accuracy {metrics['accuracy']:.4f} "
        f"(best {metrics['best_accuracy']:.4f})  P@1 {metrics['precision_at_1']:.3f}  mAP {metrics['map']:.3f}")
    return FoldResult(metrics={"model": model_name, "fold": fold, "seed": seed, **metrics},
                      roc=pd.DataFrame({"fpr": fpr, "tpr": tpr, "threshold": thresholds}),
                      epochs_run=len(result.history), seconds=time.perf_counter() - started)


def cv_config(cv: CVParams, train: TrainParams, backbone: str | None = None) -> dict[str, Any]:
    """The resolved config of one cross-validation of one backbone: what its MLflow runs share (and are
    grouped by)."""
    return {"cv": asdict(cv), "backbone": backbone, "train": {m: train.resolved(m) for m in cv.models}}


def summarise_folds(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per model, over all its (fold, seed) runs: the mean of every fold metric; the (population)
    std of the headline ones across runs; `seed_std`, the std of the per-seed 5-fold mean EER (what
    changing only the training seed moves); each fold's EER averaged over the seeds; and the worst
    calibration gap (`calibration_gap` of each run: at a target FAR, how far the unseen people's FAR fell
    from it; at the best-accuracy point, how far accuracy fell below the best any threshold reached)."""
    report: dict[str, Any] = {}
    for model in sorted({row["model"] for row in rows}):
        runs = [r for r in rows if r["model"] == model]
        values = {k: np.array([r[k] for r in runs], dtype=float) for k in FOLD_METRICS}
        seeds, folds = sorted({r["seed"] for r in runs}), sorted({r["fold"] for r in runs})
        seed_means = [np.mean([r["eer"] for r in runs if r["seed"] == s]) for s in seeds]
        report[model] = {
            "mean": {k: float(v.mean()) for k, v in values.items()},
            "std": {k: float(values[k].std()) for k in ("eer", "roc_auc", "precision_at_1")},
            "seed_std": {"eer": float(np.std(seed_means))},
            "fold_eer": {f"fold{f}": float(np.mean([r["eer"] for r in runs if r["fold"] == f])) for f in folds},
            "target_far": runs[0]["target_far"],
            "worst_calibration_gap": float(max(r["calibration_gap"] for r in runs)),
            "runs": len(runs),
        }
    return report


def read_fold_results(cv: CVParams, folder: str | os.PathLike, model: str) -> list[dict[str, Any]]:
    """The fold metrics JSON files under `folder` of exactly the runs of `model` that `cv` asks for
    (files of runs no longer asked for, left behind by DVC, are ignored); a missing one is an error
    naming it."""
    wanted = {(model, f, s) for f in cv.folds for s in cv.seeds}
    found: dict[tuple[str, int, int], dict[str, Any]] = {}
    for path in sorted(Path(folder).rglob("*.json")):
        try:
            row = json.loads(path.read_text(encoding="utf-8"))
            key = (row["model"], int(row["fold"]), int(row["seed"]))
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}: not a fold metrics file of the cv pipeline ({exc!r})") from None
        if key in wanted:
            found[key] = row
    missing = sorted(wanted - set(found))
    if missing:
        listed = ", ".join(f"{m} fold {f} seed {s}" for m, f, s in missing[:5])
        raise FileNotFoundError(f"{folder}: no metrics for {len(missing)} cross-validation run(s) ({listed}); "
                                "run `dvc repro cv/dvc.yaml`")
    return [found[key] for key in sorted(found)]


def write_summary(cv: CVParams, model: str, folds_folder: str | os.PathLike, metrics_out: str | os.PathLike,
                  details_out: str | os.PathLike, run: Run = NULL_RUN) -> dict[str, Any]:
    """The summary stage of one model: its headline (the evaluate stage's keys, means over every run,
    and `eer_std`) as a DVC metrics file, every figure of `summarise_folds` as details beside it, both
    logged to MLflow. Returns the details."""
    figures = summarise_folds(read_fold_results(cv, folds_folder, model))[model]
    details = {
        "protocol": f"{cv.subject_groups}-fold subject-disjoint cross-validation, folds {list(cv.folds)} x "
                    f"training seeds {list(cv.seeds)}; threshold calibrated on each fold's validation people "
                    + (f"for a FAR of {figures['target_far']:g}" if figures["target_far"] is not None else
                       "for the best accuracy"),
        "model": model,
        **figures,
    }
    mean = figures["mean"]
    metrics = {**headline(mean, mean), "eer_std": figures["std"]["eer"]}
    with staged_outputs(metrics_out, details_out) as (metrics_path, details_path):
        metrics_path.write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
        details_path.write_text(json.dumps(details, indent=2) + "\n", encoding="utf-8")
        run.log_metrics({f"{model}.{k}": v for k, v in figures.items()})
        run.log_artifact(details_path, "metrics")
    return details
