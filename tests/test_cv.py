"""facesim.cv: subject folds, fold tables, unseen-subject metrics, the report and its JSON."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import write_faces_dir
from facesim.cv import CVParams, cross_validate, load_cv_params, fold_tables, subject_folds, summarise, unseen_metrics, write_report
from facesim.metrics import equal_error_rate, retrieval_metrics, roc_auc
from facesim.params import ParamsError, parse_section
from facesim.sample import list_faces
from facesim.train import TrainParams

pytestmark = pytest.mark.usefixtures("torch_global_state")

TINY = TrainParams(seed=3, device="cpu", threads=1, input_height=16, input_width=16, channels=(4, 8),
                   embedding_dim=8, epochs=2, batch_size=16, augment=False)


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
    metrics = unseen_metrics(embeddings, subjects, threshold=1.5, retrieval_k=(1, 5))
    first, second = np.triu_indices(8, k=1)
    same = (np.array(subjects)[first] == np.array(subjects)[second]).astype(int)
    distances = np.linalg.norm(embeddings[first] - embeddings[second], axis=1)
    assert metrics["roc_auc"] == pytest.approx(roc_auc(distances, same))
    assert metrics["eer"] == pytest.approx(equal_error_rate(distances, same))
    assert metrics["accuracy"] == pytest.approx(np.mean((distances <= 1.5) == (same == 1)))
    retrieval = retrieval_metrics(embeddings, np.array(subjects), ks=(1, 5))
    assert {k: metrics[k] for k in retrieval} == pytest.approx(retrieval)


def test_summarise_gives_mean_and_population_std():
    summary = summarise([{"fold": 1, "eer": 0.1, "map": 1.0}, {"fold": 2, "eer": 0.3, "map": 0.5}])
    assert summary["mean"] == pytest.approx({"eer": 0.2, "map": 0.75})
    assert summary["std"] == pytest.approx({"eer": 0.1, "map": 0.25})


def test_cv_params_refuse_bad_values_naming_the_key():
    with pytest.raises(ParamsError, match="cv.folds"):
        parse_section(CVParams, {"folds": 1}, "cv")
    with pytest.raises(ParamsError, match="cv.models"):
        parse_section(CVParams, {"models": ["siamese"]}, "cv")


def write_params(tmp_path: Path, cv: dict) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({
        "train": {"epochs": 30, "lr": 0.001, "triplet": {"epochs": 60, "people_per_batch": 16}},
        "cv": {"folds": 5, **cv},
    }))
    return path


def test_load_cv_params_puts_cv_train_over_the_train_section_key_by_key(tmp_path: Path):
    path = write_params(tmp_path, {"train": {"lr_schedule": "cosine", "triplet": {"epochs": 150}}})
    cv, train = load_cv_params(path)
    assert cv.folds == 5
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


class RecordingRun:
    def __init__(self):
        self.metrics, self.artifacts = [], []

    def log_metrics(self, metrics, step=None):
        self.metrics.append((dict(metrics), step))

    def log_artifact(self, path, artifact_path=None):
        self.artifacts.append(Path(path).name)


def test_cross_validate_scores_every_model_on_every_fold_and_writes_the_report(tmp_path: Path):
    faces_dir = write_faces_dir(tmp_path / "faces")
    faces = list_faces(faces_dir, "training") + list_faces(faces_dir, "testing")  # 11 subjects
    cv = CVParams(folds=3, similar_per_image=1, dissimilar_per_image=1, triplets_per_image=1)
    train = dataclasses.replace(TINY, epochs=1)
    run = RecordingRun()
    report = cross_validate(cv, train, faces, faces_dir, run, log=lambda line: None)
    assert sorted(report["models"]) == ["contrastive", "triplet"]
    assert sorted(s for fold in report["folds"] for s in fold) == sorted({f.subject for f in faces})
    for summary in report["models"].values():
        assert [row["fold"] for row in summary["per_fold"]] == [1, 2, 3]
        assert all(row["epochs_run"] == 1 for row in summary["per_fold"])
        for key in ("roc_auc", "eer", "precision_at_1", "precision_at_5", "map"):
            values = [row[key] for row in summary["per_fold"]]
            assert summary["mean"][key] == pytest.approx(np.mean(values))
            assert summary["std"][key] == pytest.approx(np.std(values))
            assert 0.0 <= summary["mean"][key] <= 1.0
    assert [step for _, step in run.metrics] == [1, 1, 2, 2, 3, 3]

    out = tmp_path / "reports" / "cv.json"
    write_report(report, out, run)
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    logged = {k for metrics, _ in run.metrics[-2:] for k in metrics}
    assert {"contrastive.mean.eer", "triplet.std.precision_at_1"} <= logged and run.artifacts == ["cv.json"]
    # seeded: the same params give the same numbers
    again = cross_validate(cv, train, faces, faces_dir, log=lambda line: None)
    assert again["models"]["triplet"]["mean"]["eer"] == report["models"]["triplet"]["mean"]["eer"]
