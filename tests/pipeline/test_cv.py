"""facesim.pipeline.cv: subject folds, fold tables, unseen-subject metrics, the report and its JSON."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from helpers import RecordingRun, tiny_fit_params, write_faces_dir
from facesim.pipeline.cv import (
    CVParams,
    calibration_gap,
    fold_tables,
    load_cv_params,
    load_operating_point,
    read_fold_results,
    run_fold,
    subject_folds,
    summarise_folds,
    unseen_metrics,
    validation_faces,
    write_summary,
)
from facesim.core.metrics import equal_error_rate, retrieval_metrics, roc_auc
from facesim.core.params import ParamsError, parse_section
from facesim.pipeline.sample import list_faces

pytestmark = pytest.mark.usefixtures("torch_global_state")

TINY = tiny_fit_params(epochs=2)


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
    params = CVParams(similar_per_image=1, dissimilar_per_image=1, triplets_per_image=1, split_by=split_by,
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


def test_calibration_gap_is_the_far_miss_at_a_target_and_the_accuracy_loss_at_the_best_accuracy():
    assert calibration_gap({"far": 0.004}, 0.01) == pytest.approx(0.006)
    assert calibration_gap({"far": 0.03}, 0.01) == pytest.approx(0.02)
    assert calibration_gap({"far": 0.03, "accuracy": 0.9, "best_accuracy": 0.95}, None) == pytest.approx(0.05)


def test_cv_params_refuse_bad_values_naming_the_key():
    with pytest.raises(ParamsError, match="cv.subject_groups"):
        parse_section(CVParams, {"subject_groups": 1}, "cv")
    with pytest.raises(ParamsError, match="cv.folds"):
        parse_section(CVParams, {"subject_groups": 5, "folds": [1, 6]}, "cv")
    with pytest.raises(ParamsError, match="cv.folds"):
        parse_section(CVParams, {"folds": [2, 2]}, "cv")
    with pytest.raises(ParamsError, match="cv.seeds"):
        parse_section(CVParams, {"seeds": []}, "cv")
    with pytest.raises(ParamsError, match="cv.models"):
        parse_section(CVParams, {"models": ["siamese"]}, "cv")


def write_params(tmp_path: Path, cv: dict) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({
        "train": {"epochs": 30, "lr": 0.001, "triplet": {"epochs": 60, "people_per_batch": 16}},
        "backbones": {"compact": {"backbone": "compact"}},
        "cv": {"subject_groups": 5, **cv},
    }))
    return path


def test_load_cv_params_puts_cv_train_over_the_train_section_key_by_key(tmp_path: Path):
    path = write_params(tmp_path, {"train": {"lr_schedule": "cosine", "triplet": {"epochs": 150}}})
    cv, train = load_cv_params(path)
    assert cv.subject_groups == 5
    assert (train.epochs, train.lr, train.lr_schedule) == (30, 0.001, "cosine")
    # the nested section keeps the keys cv.train does not name
    assert (train.triplet.epochs, train.triplet.people_per_batch) == (150, 16)


def test_load_cv_params_without_cv_train_is_the_train_section(tmp_path: Path):
    _, train = load_cv_params(write_params(tmp_path, {}))
    assert (train.epochs, train.triplet.epochs, train.lr_schedule) == (30, 60, "constant")


@pytest.mark.parametrize(("override", "named"), [
    ({"epochz": 3}, "cv.train.epochz"),
    ({"triplet": {"mining": "softest"}}, "cv.train.triplet.mining"),
    ({"epochs": 0}, "train.epochs"),
])
def test_load_cv_params_names_a_bad_cv_train_key(tmp_path: Path, override: dict, named: str):
    with pytest.raises(ParamsError, match=named.replace(".", r"\.")):
        load_cv_params(write_params(tmp_path, {"train": override}))


def test_load_cv_params_puts_a_backbones_keys_over_cv_train(tmp_path: Path):
    path = write_params(tmp_path, {"train": {"lr": 0.01, "triplet": {"epochs": 150}}, "backbones": ["compact", "dlib"]})
    data = yaml.safe_load(path.read_text())
    data["backbones"]["dlib"] = {"backbone": "dlib", "lr": 0.0001, "triplet": {"margin": 0.3}}
    path.write_text(yaml.safe_dump(data))
    _, compact = load_cv_params(path, "compact")
    assert (compact.backbone, compact.lr, compact.triplet.epochs) == ("compact", 0.01, 150)
    _, dlib = load_cv_params(path, "dlib")
    assert (dlib.backbone, dlib.lr, dlib.triplet.epochs, dlib.triplet.margin) == ("dlib", 0.0001, 150, 0.3)
    assert load_cv_params(path)[1] == compact  # no backbone named: cv.train over train only


@pytest.mark.parametrize(("cv", "backbones", "backbone", "named"), [
    ({"backbones": ["compact"]}, None, "dlib", "cv.backbones has no 'dlib'"),
    ({"backbones": ["compact", "dlib"]}, None, "dlib", "backbones has no 'dlib'"),
    ({"backbones": ["dlib"]}, {"dlib": {"lrr": 1}}, "dlib", "backbones.dlib.lrr"),
    ({"backbones": ["compact"]}, ["compact"], "compact", "backbones must map a name"),
    ({"backbones": "compact"}, None, "compact", "cv.backbones"),
])
def test_load_cv_params_names_a_bad_backbone(tmp_path: Path, cv: dict, backbones, backbone: str, named: str):
    path = write_params(tmp_path, cv)
    if backbones is not None:
        data = yaml.safe_load(path.read_text())
        data["backbones"] = backbones
        path.write_text(yaml.safe_dump(data))
    with pytest.raises(ParamsError, match=named.replace(".", r"\.").replace("(", r"\(")):
        load_cv_params(path, backbone)


def test_load_operating_point_reads_the_evaluate_sections_two_keys(tmp_path: Path):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"evaluate": {"operating_point": "target_far", "target_far": 0.05,
                                                 "retrieval_k": [1]}}))
    assert load_operating_point(path).target() == 0.05
    path.write_text(yaml.safe_dump({"evaluate": {"operating_point": "best_accuracy", "target_far": 0.05}}))
    assert load_operating_point(path).target() is None
    path.write_text(yaml.safe_dump({"evaluate": {"target_far": 1.5}}))
    with pytest.raises(ParamsError, match=r"evaluate\.target_far must lie strictly between 0 and 1"):
        load_operating_point(path)


# One fold of 11 people (s1-s11) with 6 faces each in 3 groups, trained one epoch: the smallest fold that
# still has validation people of its own to calibrate on.
FOLD_CV = CVParams(subject_groups=3, folds=(1, 2, 3), seeds=(1, 2), similar_per_image=1, dissimilar_per_image=1,
                   triplets_per_image=1, val_size=0.3)
FOLD_TRAIN = dataclasses.replace(TINY, epochs=1)
FACES_PER_PERSON = 6


@pytest.fixture(scope="module")
def fold_faces(tmp_path_factory: pytest.TempPathFactory):
    """(faces_dir, faces): the tiny faces, 6 per person, training and testing folders alike."""
    faces_dir = write_faces_dir(tmp_path_factory.mktemp("cv") / "faces", images_per_subject=FACES_PER_PERSON)
    return faces_dir, list_faces(faces_dir, "training") + list_faces(faces_dir, "testing")


def fold(fold_faces, number: int = 2, seed: int = 1):
    faces_dir, faces = fold_faces
    # 2 validation people of 6 faces: 36 different-person pairs resolve a FAR of 1/20
    return run_fold(FOLD_CV, FOLD_TRAIN, "triplet", number, seed, faces, faces_dir, target_far=0.05,
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
    cv = CVParams(similar_per_image=1, dissimilar_per_image=1, triplets_per_image=1, val_size=0.3)
    seen = [f for f in faces if f.subject not in ("s1", "s2")]
    tables = fold_tables(seen, cv, np.random.default_rng(0))
    calibration_people = {path.split("/")[1] for path in validation_faces(tables)}
    trained = set(tables["pairs_train"]["subject1"]) | set(tables["triplets_train"]["anchor_subject"])
    assert calibration_people and not calibration_people & trained
    assert not calibration_people & {"s1", "s2"}


def test_run_fold_refuses_a_fold_beyond_the_groups(tmp_path: Path):
    faces_dir = write_faces_dir(tmp_path / "faces")
    faces = list_faces(faces_dir, "training")
    with pytest.raises(ParamsError, match="fold 4"):
        run_fold(CVParams(subject_groups=3, folds=(1, 2, 3)), TINY, "triplet", 4, 1, faces, faces_dir)


def test_run_fold_stops_before_any_work_without_the_imagenet_weights(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    train = dataclasses.replace(TINY, backbone="efficientnet_b0", pretrained="imagenet")
    with pytest.raises(FileNotFoundError, match=r"train.pretrained: imagenet needs .*efficientnet_b0_rwightman"):
        run_fold(CVParams(subject_groups=3, folds=(1, 2, 3)), train, "triplet", 1, 1, [], tmp_path / "no_faces")


def write_fold_files(folder: Path, rows: list[dict]) -> None:
    for row in rows:
        path = folder / row["model"] / f"fold{row['fold']}-seed{row['seed']}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(row))


def test_write_summary_reads_exactly_the_runs_asked_for(tmp_path: Path):
    cv = CVParams(subject_groups=2, folds=(1, 2), seeds=(1,), models=("triplet",))
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
    cv = CVParams(subject_groups=2, folds=(1, 2), seeds=(1,), models=("triplet",))
    write_fold_files(tmp_path / "folds", [fold_row("triplet", 1, 1, 0.1)])
    out, details = tmp_path / "triplet.json", tmp_path / "triplet_details.json"
    with pytest.raises(FileNotFoundError, match="triplet fold 2 seed 1.*dvc repro cv/dvc.yaml"):
        write_summary(cv, "triplet", tmp_path / "folds", out, details)
    assert not out.exists() and not details.exists()
    assert len(read_fold_results(CVParams(subject_groups=2, folds=(1,), seeds=(1,), models=("triplet",)),
                                 tmp_path / "folds", "triplet")) == 1


def test_write_summary_refuses_a_foreign_json(tmp_path: Path):
    (tmp_path / "folds").mkdir()
    (tmp_path / "folds" / "notes.json").write_text('{"hello": 1}')
    with pytest.raises(ValueError, match="notes.json: not a fold metrics file"):
        read_fold_results(CVParams(), tmp_path / "folds", "triplet")
