"""facesim.pipeline.cv_summary: every fold run of a model gathered into the summary and its JSON files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from helpers import RecordingRun, repo_params
from facesim.pipeline.cv import calibration_gap
from facesim.pipeline.cv_params import CVParams
from facesim.pipeline.cv_summary import read_fold_results, summarise_folds, write_summary


def cv_params(**changes) -> CVParams:
    """This repository's cv section with `changes`."""
    return repo_params(CVParams, "cv", **changes)


def fold_row(model: str, fold: int, seed: int, eer: float, accuracy: float = 0.9, best: float = 0.92,
             far: float = 0.012) -> dict:
    row = {k: 0.5 for k in ("roc_auc", "frr", "tar_at_far_1e-2", "tar_at_far_1e-3", "precision_at_1",
                            "precision_at_5", "map")}
    return {"model": model, "fold": fold, "seed": seed, **row, "eer": eer, "accuracy": accuracy, "far": far,
            "best_accuracy": best, "threshold": 1.0, "target_far": 0.01,
            "calibration_gap": calibration_gap({"far": far}, 0.01)}


def test_summarise_folds_by_hand():
    # seed 1: folds 0.1, 0.3 (mean 0.2); seed 2: folds 0.2, 0.6 (mean 0.4)
    rows = [fold_row("triplet", 1, 1, 0.1), fold_row("triplet", 2, 1, 0.3),
            fold_row("triplet", 1, 2, 0.2, accuracy=0.85, far=0.035), fold_row("triplet", 2, 2, 0.6)]
    summary = summarise_folds(rows)["triplet"]
    assert summary["mean"]["eer"] == pytest.approx(0.3)
    assert summary["std"]["eer"] == pytest.approx(np.std([0.1, 0.3, 0.2, 0.6]))
    assert summary["seed_std"]["eer"] == pytest.approx(0.1)  # std of 0.2 and 0.4
    assert summary["fold_eer"] == pytest.approx({"fold1": 0.15, "fold2": 0.45})
    assert summary["worst_calibration_gap"] == pytest.approx(0.025)  # FAR 0.035 at a target of 0.01
    assert summary["target_far"] == 0.01 and summary["mean"]["far"] == pytest.approx((3 * 0.012 + 0.035) / 4)
    assert summary["runs"] == 4


def write_fold_files(folder: Path, rows: list[dict]) -> None:
    for row in rows:
        path = folder / row["model"] / f"fold{row['fold']}" / f"seed{row['seed']}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(row))


def test_write_summary_reads_exactly_the_runs_asked_for(tmp_path: Path):
    cv = cv_params(subject_groups=2, folds=(1, 2), seeds=(1,), models=("triplet",))
    rows = [fold_row("triplet", 1, 1, 0.1), fold_row("triplet", 2, 1, 0.3)]
    # left behind by an earlier run with another seed: not part of this summary
    write_fold_files(tmp_path / "folds", rows + [fold_row("triplet", 1, 9, 0.9)])
    run = RecordingRun()
    details = write_summary(cv, "triplet", tmp_path / "folds", tmp_path / "out" / "triplet.json",
                            tmp_path / "out" / "triplet_details.json", run)
    assert details["mean"]["eer"] == pytest.approx(0.2) and details["runs"] == 2
    assert json.loads((tmp_path / "out" / "triplet_details.json").read_text()) == json.loads(json.dumps(details))
    # the DVC metric: the evaluate stage's headline keys, and the spread of the EER
    headline = json.loads((tmp_path / "out" / "triplet.json").read_text())
    assert set(headline) == {"far", "frr", "accuracy", "tar_at_far_1e-2", "tar_at_far_1e-3", "auc", "eer", "p_at_1",
                             "map", "eer_std"}
    assert headline["eer"] == pytest.approx(0.2) and headline["eer_std"] == pytest.approx(0.1)
    assert headline["auc"] == details["mean"]["roc_auc"] and headline["p_at_1"] == details["mean"]["precision_at_1"]
    logged, _ = run.metrics[0]  # nested: MLflow's wrapper flattens it to triplet.mean.eer
    assert logged["triplet.mean"]["eer"] == pytest.approx(0.2) and logged["triplet.runs"] == 2
    assert [(path.name, folder) for path, folder in run.artifacts] == [("triplet_details.json", "metrics")]


def test_write_summary_names_a_missing_run_and_writes_nothing(tmp_path: Path):
    cv = cv_params(subject_groups=2, folds=(1, 2), seeds=(1,), models=("triplet",))
    write_fold_files(tmp_path / "folds", [fold_row("triplet", 1, 1, 0.1)])
    out, details = tmp_path / "triplet.json", tmp_path / "triplet_details.json"
    with pytest.raises(FileNotFoundError, match="triplet fold 2 seed 1.*dvc repro cv/dvc.yaml"):
        write_summary(cv, "triplet", tmp_path / "folds", out, details)
    assert not out.exists() and not details.exists()
    assert len(read_fold_results(cv_params(subject_groups=2, folds=(1,), seeds=(1,), models=("triplet",)),
                                 tmp_path / "folds", "triplet")) == 1


def test_write_summary_refuses_a_foreign_json(tmp_path: Path):
    (tmp_path / "folds").mkdir()
    (tmp_path / "folds" / "notes.json").write_text('{"hello": 1}')
    with pytest.raises(ValueError, match="notes.json: not a fold metrics file"):
        read_fold_results(cv_params(), tmp_path / "folds", "triplet")
