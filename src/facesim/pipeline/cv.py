"""Subject-disjoint k-fold cross-validation: every model meets people it never saw.

The three held-out subjects of the original split are too easy to tell good
models apart. Here the 40 subjects are shuffled (seeded by `cv.seed`) into
`cv.subject_groups` groups; fold k trains on the faces of the other groups'
people (pairs and triplets drawn and split train/validation exactly as the
sample stage does), calibrates its threshold on its validation people exactly
as the evaluate stage does, and scores every unordered pair and every
retrieval query among group k's faces. Each (backbone, model, fold) is one DVC
stage of `cv/dvc.yaml` that trains and scores it once per training seed in one
process (`run_fold_seeds`); `facesim.pipeline.cv_summary` gathers them.
Its params: `facesim.pipeline.cv_params`.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd

from facesim.core.atomic import staged_outputs
from facesim.core.data import FaceSet
from facesim.core.embedding import embed_all
from facesim.core.metrics import best_accuracy, roc_points, unordered_pair_distances, verification_metrics
from facesim.core.models import require_backbone
from facesim.core.retrieval import retrieval_metrics
from facesim.core.params import ParamsError, load_section
from facesim.mlops.runs import NULL_RUN, Run
from facesim.pipeline.calibration import calibration_pairs, threshold_on_pairs
from facesim.pipeline.cv_params import FOLD_METRICS, CVParams
from facesim.pipeline.faces import Face, all_faces
from facesim.pipeline.pairs import train_val_tables
from facesim.pipeline.sample import SampleParams
from facesim.training.fit import fit
from facesim.training.train_params import TrainParams


def fold_faces(params_path: str | os.PathLike, faces_dir: str | os.PathLike) -> list[Face]:
    """Every face of every person, in the layout the params file's `sample.layout` names: the folds deal the
    people into groups themselves."""
    return all_faces(faces_dir, load_section(SampleParams, params_path, "sample").layout)


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


@dataclass(frozen=True)
class FoldData:
    """One fold's faces, loaded once and shared by all its training seeds."""

    fold: int
    tables: dict[str, pd.DataFrame]  # the pairs and triplets of the seen people (`fold_tables`)
    seen: FaceSet  # every face of the other groups' people: what the model trains (and validates) on
    calibration: FaceSet  # the faces of the validation pairs: the threshold is calibrated on these people
    training: FaceSet  # the seen faces that are not calibration faces
    test: FaceSet  # the faces of the held-out group's people: scored


def load_fold(cv: CVParams, train: TrainParams, fold: int, faces: list[Face],
              faces_dir: str | os.PathLike) -> FoldData:
    """Fold `fold`'s split of `faces` (every person of the data) and its faces, preprocessed as `train`'s backbone
    needs them."""
    require_backbone(train)  # a missing ImageNet file or dlib stops the fold before any work
    split = fold_split(cv, fold, faces)  # whatever the training seed: all seeds of a fold share it
    everyone = FaceSet.load(faces_dir, [f.path for f in faces], train.preprocess())
    calibration = everyone.subset(validation_faces(split.tables))
    return FoldData(fold=fold, tables=split.tables, seen=everyone.subset([f.path for f in split.seen]),
                    calibration=calibration,
                    training=everyone.subset(sorted({f.path for f in split.seen} - set(calibration.paths))),
                    test=everyone.subset([f.path for f in split.unseen]))


def run_fold(
    cv: CVParams,
    train: TrainParams,
    model_name: str,
    data: FoldData,
    seed: int,
    target_far: float | None = 0.004,
    log: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True),
) -> FoldResult:
    """Train `model_name` with training seed `seed` on every group but the fold's (`data`, from `load_fold`),
    calibrate its threshold on the fold's validation people for `target_far` (None: the best accuracy), and
    score it on the held-out group."""
    params = replace(train, seed=seed, processes=1)  # a fold trains in one process: folds run side by side
    started = time.perf_counter()
    # no validation after each epoch: a fold reads only the trained model (keep: last, no early stopping)
    result = fit(model_name, params, data.tables, data.seen, log=lambda line: None, validate=False)
    calibration_embeddings = embed_all(result.model, data.calibration.tensor).numpy()
    calibration_people = np.asarray(data.calibration.subjects)
    training_embeddings = embed_all(result.model, data.training.tensor).numpy()
    calibration_distances, calibration_same = calibration_pairs(calibration_embeddings, calibration_people,
                                                                target_far, training_embeddings)
    threshold = threshold_on_pairs(calibration_distances, calibration_same, target_far)
    metrics, (distances, same) = unseen_metrics(embed_all(result.model, data.test.tensor).numpy(),
                                                data.test.subjects, threshold, cv.retrieval_k)
    # the FAR the threshold promised on its calibration pairs, and how far the unseen people's fell from it
    metrics.update(target_far=target_far,
                   calibration_far=verification_metrics(calibration_distances, calibration_same, threshold)["far"],
                   calibration_gap=calibration_gap(metrics, target_far))
    fpr, tpr, thresholds = roc_points(distances, same)
    unseen = sorted(set(data.test.subjects))
    log(f"cv@{model_name} fold {data.fold} seed {seed} (unseen {', '.join(unseen)}): "
        f"AUC {metrics['roc_auc']:.4f}  EER {metrics['eer']:.4f}  FAR {metrics['far']:.4f}  FRR {metrics['frr']:.4f}  "
        f"accuracy {metrics['accuracy']:.4f} "
        f"(best {metrics['best_accuracy']:.4f})  P@1 {metrics['precision_at_1']:.3f}  mAP {metrics['map']:.3f}")
    return FoldResult(metrics={"model": model_name, "fold": data.fold, "seed": seed, **metrics},
                      roc=pd.DataFrame({"fpr": fpr, "tpr": tpr, "threshold": thresholds}),
                      epochs_run=len(result.history), seconds=time.perf_counter() - started)


def run_fold_seeds(
    cv: CVParams,
    train: TrainParams,
    model_name: str,
    data: FoldData,
    metrics_dir: str | os.PathLike,
    roc_dir: str | os.PathLike,
    target_far: float | None = 0.004,
    open_run: Callable[[int], contextlib.AbstractContextManager[Run]] = lambda seed: contextlib.nullcontext(NULL_RUN),
    log: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True),
) -> list[FoldResult]:
    """The fold stage: `run_fold` once per training seed of `cv.seeds`, each inside its own run
    (`open_run(seed)`), written as `seed<seed>.json` under `metrics_dir` and `seed<seed>.csv` under `roc_dir`.
    Both folders appear only once every seed has run (all or none); one process for all seeds spares each
    seed starting Python, torch and MLflow again."""
    results = []
    with staged_outputs(metrics_dir, roc_dir) as (metrics_staged, roc_staged):
        for seed in cv.seeds:
            with open_run(seed) as run:
                result = run_fold(cv, train, model_name, data, seed, target_far, log)
                write_fold(result, metrics_staged / f"seed{seed}.json", roc_staged / f"seed{seed}.csv", run)
            results.append(result)
    return results


def write_fold(result: FoldResult, metrics_out: str | os.PathLike, roc_out: str | os.PathLike,
               run: Run = NULL_RUN) -> None:
    """The fold stage's outputs (all or none): its metrics (JSON) and the ROC points of its unseen pairs (CSV, a
    DVC plot), both logged to MLflow with the fold's epochs and seconds."""
    with staged_outputs(metrics_out, roc_out) as (metrics_path, roc_path):
        metrics_path.write_text(json.dumps(result.metrics, indent=2) + "\n", encoding="utf-8")
        result.roc.to_csv(roc_path, index=False, lineterminator="\n", float_format="%.6g")
        run.log_metrics({k: v for k, v in result.metrics.items() if k != "model"})
        run.log_metrics({"epochs_run": result.epochs_run, "seconds": result.seconds})
        run.log_artifact(roc_path, "plots")
