"""facesim.pipeline.cv_params: the cv section, the train params a fold trains with, the operating point."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from helpers import REPO, repo_params
from facesim.core.params import ParamsError
from facesim.pipeline.cv_params import CVParams, load_cv_params, load_operating_point
from facesim.training.train_params import merge


def test_cv_params_refuse_bad_values_naming_the_key():
    with pytest.raises(ParamsError, match="cv.subject_groups"):
        repo_params(CVParams, "cv", subject_groups=1)
    with pytest.raises(ParamsError, match="cv.folds"):
        repo_params(CVParams, "cv", subject_groups=5, folds=[1, 6])
    with pytest.raises(ParamsError, match="cv.folds"):
        repo_params(CVParams, "cv", folds=[2, 2])
    with pytest.raises(ParamsError, match="cv.seeds"):
        repo_params(CVParams, "cv", seeds=[])
    with pytest.raises(ParamsError, match="cv.models"):
        repo_params(CVParams, "cv", models=["siamese"])


def write_params(tmp_path: Path, cv: dict) -> Path:
    """This repository's params.yaml with a train section of 30 epochs at a constant rate (the triplet model 60
    epochs of batches of 16 people), the compact backbone only, and `cv`'s keys in the cv section (none in cv.train
    unless it names them)."""
    repo = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    repo["train"] = merge(repo["train"], {"epochs": 30, "lr": 0.001, "lr_schedule": "constant",
                                          "triplet": {"epochs": 60, "people_per_batch": 16}})
    repo["backbones"] = {"compact": {"backbone": "compact"}}
    repo["cv"] = {**{k: v for k, v in repo["cv"].items() if k != "train"}, "subject_groups": 5,
                  "backbones": ["compact"], **cv}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(repo))
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
    path.write_text(yaml.safe_dump({"evaluate": {"operating_point": "target_far", "target_far": 1.5}}))
    with pytest.raises(ParamsError, match=r"evaluate\.target_far must lie strictly between 0 and 1"):
        load_operating_point(path)
    path.write_text(yaml.safe_dump({"evaluate": {"target_far": 0.01}}))
    with pytest.raises(ParamsError, match=r"missing key evaluate\.operating_point"):
        load_operating_point(path)
