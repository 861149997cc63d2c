"""facesim.pipeline.cv: subject folds, fold tables, unseen-subject metrics, a fold's run and its files."""

from __future__ import annotations

import contextlib
import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from helpers import RecordingRun, repo_params, tiny_fit_params, write_faces_dir
from facesim.core.metrics import equal_error_rate, roc_auc
from facesim.core.retrieval import retrieval_metrics
from facesim.core.params import ParamsError
from facesim.pipeline.cv import (calibration_gap, fold_tables, load_fold, run_fold, run_fold_seeds, subject_folds,
                                 unseen_metrics, validation_faces, write_fold)
from facesim.pipeline.cv_params import CVParams
from facesim.pipeline.faces import list_faces

pytestmark = pytest.mark.usefixtures("torch_global_state")


TINY = tiny_fit_params(epochs=2)


def cv_params(**changes) -> CVParams:
    """This repository's cv section with `changes`."""
    return repo_params(CVParams, "cv", **changes)


def test_subject_folds_partition_the_subjects_and_depend_only_on_the_seed():
    subjects = [f"s{i}" for i in range(1, 41) for _ in range(10)]
    folds = subject_folds(subjects, 5, seed=42)
    assert [len(f) for f in folds] == [8] * 5
    flat = sorted(s for f in folds for s in f)
    assert flat == sorted(set(subjects))
    assert folds == subject_folds(list(reversed(subjects)), 5, seed=42)
    assert folds != subject_folds(subjects, 5, seed=43)


def test_subject_folds_refuse_more_folds_than_subjects():
    with pytest.raises(ValueError, match="exceeds the 3 subjects"):
        subject_folds(["a", "b", "c"], 4, seed=0)


@pytest.mark.parametrize("split_by", ["pairs", "subjects"])
def test_fold_tables_hold_only_the_seen_subjects(tmp_path: Path, split_by: str):
    faces_dir = write_faces_dir(tmp_path / "faces")
    faces = list_faces(faces_dir, "training")
    seen = [f for f in faces if f.subject not in ("s1", "s2")]
    params = cv_params(similar_per_image=1, dissimilar_per_image=1, triplets_per_image=1, split_by=split_by,
                      val_size=0.35)
    tables = fold_tables(seen, params, np.random.default_rng(0))
    for name, table in tables.items():
        assert len(table) > 0, name
        subjects = set(table.filter(like="subject").to_numpy().ravel())
        assert not subjects & {"s1", "s2"}, name
    if split_by == "subjects":
        train_people = set(tables["pairs_train"]["subject1"])
        assert not train_people & set(tables["pairs_val"]["subject1"])


def test_unseen_metrics_match_the_metric_functions_on_all_pairs():
    rng = np.random.default_rng(0)
    subjects = ["a"] * 3 + ["b"] * 3 + ["c"] * 2
    centres = {"a": [0.0, 0.0], "b": [3.0, 0.0], "c": [0.0, 3.0]}
    embeddings = np.array([centres[s] for s in subjects]) + rng.normal(0, 0.8, size=(8, 2))
    metrics, (pair_d, pair_same) = unseen_metrics(embeddings, subjects, threshold=1.5, retrieval_k=(1, 5))
    first, second = np.triu_indices(8, k=1)
    same = (np.array(subjects)[first] == np.array(subjects)[second]).astype(int)
    distances = np.linalg.norm(embeddings[first] - embeddings[second], axis=1)
    assert metrics["roc_auc"] == pytest.approx(roc_auc(distances, same))
    assert metrics["eer"] == pytest.approx(equal_error_rate(distances, same))
    assert metrics["accuracy"] == pytest.approx(np.mean((distances <= 1.5) == (same == 1)))
    assert metrics["far"] == pytest.approx(np.mean(distances[same == 0] <= 1.5))
    assert metrics["frr"] == pytest.approx(np.mean(distances[same == 1] > 1.5))
    assert metrics["best_accuracy"] >= metrics["accuracy"]
    assert np.allclose(pair_d, distances) and np.array_equal(pair_same, same)
    retrieval = retrieval_metrics(embeddings, np.array(subjects), ks=(1, 5))
    assert {k: metrics[k] for k in retrieval} == pytest.approx(retrieval)


def test_calibration_gap_is_the_far_miss_at_a_target_and_the_accuracy_loss_at_the_best_accuracy():
    assert calibration_gap({"far": 0.004}, 0.01) == pytest.approx(0.006)
    assert calibration_gap({"far": 0.03}, 0.01) == pytest.approx(0.02)
    assert calibration_gap({"far": 0.03, "accuracy": 0.9, "best_accuracy": 0.95}, None) == pytest.approx(0.05)


# One fold of 11 people (s1-s11) with 6 faces each in 3 groups, trained one epoch: the smallest fold that
# still has validation people of its own to calibrate on.
FOLD_CV = cv_params(subject_groups=3, folds=(1, 2, 3), seeds=(1, 2), similar_per_image=1, dissimilar_per_image=1,
                   triplets_per_image=1, val_size=0.3)
FOLD_TRAIN = dataclasses.replace(TINY, epochs=1)
FACES_PER_PERSON = 6


@pytest.fixture(scope="module")
def fold_faces(tmp_path_factory: pytest.TempPathFactory):
    """(faces_dir, faces): the tiny faces, 6 per person, training and testing folders alike."""
    faces_dir = write_faces_dir(tmp_path_factory.mktemp("cv") / "faces", images_per_subject=FACES_PER_PERSON)
    return faces_dir, list_faces(faces_dir, "training") + list_faces(faces_dir, "testing")


def fold_data(fold_faces, number: int = 2):
    faces_dir, faces = fold_faces
    return load_fold(FOLD_CV, FOLD_TRAIN, number, faces, faces_dir)


def fold(fold_faces, number: int = 2, seed: int = 1):
    # 2 validation people of 6 faces: 36 different-person pairs resolve a FAR of 1/20
    return run_fold(FOLD_CV, FOLD_TRAIN, "triplet", fold_data(fold_faces, number), seed, target_far=0.05,
                    log=lambda line: None)


@pytest.fixture(scope="module")
def fold2_seed1(fold_faces):
    return fold(fold_faces)


def test_run_fold_holds_out_one_group_and_calibrates_on_unseen_validation_people(fold_faces, fold2_seed1):
    result = fold2_seed1
    unseen = subject_folds([f.subject for f in fold_faces[1]], 3, FOLD_CV.seed)[1]
    n_unseen = FACES_PER_PERSON * len(unseen)
    assert result.metrics["model"] == "triplet" and (result.metrics["fold"], result.metrics["seed"]) == (2, 1)
    assert result.epochs_run == 1
    for key in ("roc_auc", "eer", "accuracy", "best_accuracy", "far", "frr", "precision_at_1", "map"):
        assert 0.0 <= result.metrics[key] <= 1.0
    assert result.metrics["best_accuracy"] >= result.metrics["accuracy"]
    # calibrated for a FAR of 5% on the validation people (against the training people too); the gap is how far
    # the unseen people's FAR fell from it
    assert result.metrics["target_far"] == 0.05 and result.metrics["calibration_far"] <= 0.05
    assert result.metrics["calibration_gap"] == pytest.approx(abs(result.metrics["far"] - 0.05))
    assert 0.0 <= result.metrics["tar_at_far_1e-3"] <= result.metrics["tar_at_far_1e-2"] <= 1.0
    assert list(result.roc.columns) == ["fpr", "tpr", "threshold"] and result.roc["fpr"].iloc[-1] == 1.0
    assert n_unseen * (n_unseen - 1) // 2 >= len(result.roc) - 1  # the ROC of the unseen people's pairs


def test_a_fold_run_again_gives_the_same_numbers_and_another_seed_other_ones(fold_faces, fold2_seed1):
    """Determinism of one fold, as cheap as it gets: the same fold and seed twice, and another seed once."""
    again = fold(fold_faces)
    assert again.metrics == fold2_seed1.metrics
    pd.testing.assert_frame_equal(again.roc, fold2_seed1.roc, check_exact=True)
    other = fold(fold_faces, seed=2)  # same people, same pairs: only the training seed differs
    assert (other.metrics["fold"], other.metrics["seed"]) == (2, 2)
    assert not other.roc["threshold"].equals(fold2_seed1.roc["threshold"])


def test_fold_validation_people_are_neither_trained_on_nor_tested(tmp_path: Path):
    faces_dir = write_faces_dir(tmp_path / "faces")
    faces = list_faces(faces_dir, "training")
    cv = cv_params(similar_per_image=1, dissimilar_per_image=1, triplets_per_image=1, val_size=0.3)
    seen = [f for f in faces if f.subject not in ("s1", "s2")]
    tables = fold_tables(seen, cv, np.random.default_rng(0))
    calibration_people = {path.split("/")[1] for path in validation_faces(tables)}
    trained = set(tables["pairs_train"]["subject1"]) | set(tables["triplets_train"]["anchor_subject"])
    assert calibration_people and not calibration_people & trained
    assert not calibration_people & {"s1", "s2"}


def test_load_fold_refuses_a_fold_beyond_the_groups(tmp_path: Path):
    faces_dir = write_faces_dir(tmp_path / "faces")
    faces = list_faces(faces_dir, "training")
    with pytest.raises(ParamsError, match="fold 4"):
        load_fold(cv_params(subject_groups=3, folds=(1, 2, 3)), TINY, 4, faces, faces_dir)


def test_load_fold_stops_before_any_work_without_the_imagenet_weights(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    train = dataclasses.replace(TINY, backbone="efficientnet_b0", pretrained="imagenet")
    with pytest.raises(FileNotFoundError, match=r"train.pretrained: imagenet needs .*efficientnet_b0_rwightman"):
        load_fold(cv_params(subject_groups=3, folds=(1, 2, 3)), train, 1, [], tmp_path / "no_faces")


def test_write_fold_writes_and_logs_the_metrics_and_the_roc_points(fold2_seed1, tmp_path: Path):
    run = RecordingRun()
    write_fold(fold2_seed1, tmp_path / "out" / "fold2-seed1.json", tmp_path / "roc" / "fold2-seed1.csv", run)
    assert json.loads((tmp_path / "out" / "fold2-seed1.json").read_text()) == json.loads(
        json.dumps(fold2_seed1.metrics))
    roc = pd.read_csv(tmp_path / "roc" / "fold2-seed1.csv")
    assert list(roc.columns) == ["fpr", "tpr", "threshold"] and len(roc) == len(fold2_seed1.roc)
    assert [set(logged) for logged, _ in run.metrics] == [set(fold2_seed1.metrics) - {"model"},
                                                          {"epochs_run", "seconds"}]
    assert [(path.name, folder) for path, folder in run.artifacts] == [("fold2-seed1.csv", "plots")]


def test_run_fold_seeds_runs_every_seed_in_its_own_run_and_writes_one_file_each(fold_faces, fold2_seed1,
                                                                                 tmp_path: Path):
    runs: list[tuple[int, RecordingRun]] = []

    @contextlib.contextmanager
    def open_run(seed: int):
        runs.append((seed, RecordingRun()))
        yield runs[-1][1]

    results = run_fold_seeds(FOLD_CV, FOLD_TRAIN, "triplet", fold_data(fold_faces), tmp_path / "folds" / "fold2",
                             tmp_path / "roc" / "fold2", target_far=0.05, open_run=open_run, log=lambda line: None)
    assert [r.metrics["seed"] for r in results] == [seed for seed, _ in runs] == list(FOLD_CV.seeds) == [1, 2]
    # the same numbers as the fold run alone: the seeds of one process do not disturb each other
    assert results[0].metrics == fold2_seed1.metrics
    assert sorted(p.name for p in (tmp_path / "folds" / "fold2").iterdir()) == ["seed1.json", "seed2.json"]
    assert sorted(p.name for p in (tmp_path / "roc" / "fold2").iterdir()) == ["seed1.csv", "seed2.csv"]
    for result, (seed, run) in zip(results, runs):
        assert json.loads((tmp_path / "folds" / "fold2" / f"seed{seed}.json").read_text()) == json.loads(
            json.dumps(result.metrics))
        assert [(path.name, folder) for path, folder in run.artifacts] == [(f"seed{seed}.csv", "plots")]


def test_run_fold_seeds_writes_nothing_when_a_later_seed_fails(fold_faces, tmp_path: Path):
    (tmp_path / "folds" / "fold2").mkdir(parents=True)
    (tmp_path / "folds" / "fold2" / "seed1.json").write_text("the previous run's")

    @contextlib.contextmanager
    def open_run(seed: int):
        if seed == 2:
            raise RuntimeError("the store went away")
        yield RecordingRun()

    with pytest.raises(RuntimeError, match="the store went away"):
        run_fold_seeds(FOLD_CV, FOLD_TRAIN, "triplet", fold_data(fold_faces), tmp_path / "folds" / "fold2",
                       tmp_path / "roc" / "fold2", target_far=0.05, open_run=open_run, log=lambda line: None)
    assert [p.name for p in (tmp_path / "folds" / "fold2").iterdir()] == ["seed1.json"]
    assert (tmp_path / "folds" / "fold2" / "seed1.json").read_text() == "the previous run's"
    assert not (tmp_path / "roc").exists() or not any((tmp_path / "roc").rglob("*.csv"))
