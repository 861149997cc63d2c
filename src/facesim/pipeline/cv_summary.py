"""The summary of a cross-validation (`cv/dvc.yaml`'s summary stages): every fold run of one model gathered into
means, spreads and per-fold figures."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from facesim.core.atomic import staged_outputs
from facesim.core.metrics import headline
from facesim.mlops.runs import NULL_RUN, Run
from facesim.pipeline.cv_params import FOLD_METRICS, CVParams


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


def summary_line(name: str, figures: dict[str, Any]) -> str:
    """The one line a summary stage prints: the means (and the EER's spread) over every run of model `name`."""
    mean, std = figures["mean"], figures["std"]
    return (f"cv@{name}: EER {mean['eer']:.4f} +- {std['eer']:.4f} over {figures['runs']} runs, "
            f"AUC {mean['roc_auc']:.4f}, P@1 {mean['precision_at_1']:.3f}, accuracy {mean['accuracy']:.4f} "
            f"(best {mean['best_accuracy']:.4f}), FAR {mean['far']:.4f}, FRR {mean['frr']:.4f}, "
            f"TAR at FAR 0.1% {mean['tar_at_far_1e-3']:.4f}, "
            f"worst calibration gap {figures['worst_calibration_gap']:.4f}")
