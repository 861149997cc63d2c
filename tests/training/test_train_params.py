"""facesim.training.train_params: the `train` section of params.yaml, and every section of the repository's own."""

from __future__ import annotations

import dataclasses

import pytest

from helpers import REPO, tiny_fit_params
from facesim.core.params import ParamsError, load_section, parse_section
from facesim.training.train_params import TrainParams

TINY = tiny_fit_params()


def test_train_params_parse_from_a_section():
    params = parse_section(
        TrainParams, {"channels": [4, 8], "lr": "1e-2", "triplet": {"mining": "hard", "margin": 0.5}}, "train")
    assert params.channels == (4, 8) and params.lr == 0.01
    assert params.triplet.mining == "hard" and params.triplet.margin == 0.5
    assert params.triplet.people_per_batch == 16  # untouched defaults stay
    assert params.contrastive == TrainParams().contrastive


@pytest.mark.parametrize(
    "raw, key",
    [
        ({"epochs": -1}, "train.epochs"),
        ({"epochs": 0}, "train.epochs"),
        ({"patience": -1}, "train.patience"),
        ({"lr": 0}, "train.lr"),
        ({"contrastive": {"margin": 0}}, "train.contrastive.margin"),
        ({"contrastive": {"margin": -1.0}}, "train.contrastive.margin"),
        ({"triplet": {"margin": 0.0}}, "train.triplet.margin"),
        ({"triplet": {"margin": -0.2}}, "train.triplet.margin"),
        ({"backbone": "vgg16"}, "train.backbone"),
        ({"triplet": {"mining": "random"}}, "train.triplet.mining"),
        ({"triplet": {"marign": 0.3}}, "train.triplet.marign"),
        ({"contrastive": {"normalise": True}}, "train.contrastive.normalise"),
        ({"epoch": 3}, "train.epoch"),
        ({"triplet": {"people_per_batch": 1}}, "train.triplet.people_per_batch"),
        ({"contrastive": {"faces_per_person": 1}}, "train.contrastive.faces_per_person"),
        ({"contrastive": {"mining": "hard"}}, "train.contrastive.mining"),
        ({"triplet": {"members": 0}}, "train.triplet.members"),
        ({"channels": [4, 0]}, "train.channels"),
        ({"input_height": 8}, "train.input_height"),
        ({"lr_schedule": "step"}, "train.lr_schedule"),
        ({"augmentation": {"max_scale": 1.0}}, "train.augmentation.max_scale"),
        ({"processes": 0}, "train.processes"),
        ({"processes": -2}, "train.processes"),
        ({"processes": 1.5}, "train.processes"),
        ({"processes": True}, "train.processes"),
        ({"precision": "fp64"}, "train.precision"),
        ({"precision": "fp16", "device": "cpu"}, "train.precision"),
    ],
)
def test_train_params_refuse_bad_values_naming_the_key(raw, key):
    with pytest.raises(ParamsError, match=key.replace(".", r"\.")):
        parse_section(TrainParams, raw, "train")


def test_one_process_in_float32_is_the_default_and_is_recorded():
    params = parse_section(TrainParams, {}, "train")
    assert (params.processes, params.precision) == (1, "fp32")
    assert TINY.resolved("contrastive")["processes"] == 1 and TINY.resolved("contrastive")["precision"] == "fp32"
    parse_section(TrainParams, {"processes": 4, "precision": "bf16", "device": "cpu"}, "train")
    parse_section(TrainParams, {"precision": "fp16", "device": "auto"}, "train")  # CUDA checked when training


def test_resolved_config_holds_the_models_loss_only():
    resolved = TINY.resolved("triplet")
    assert resolved["model"] == "triplet" and resolved["loss"] == dataclasses.asdict(TINY.triplet)
    assert "contrastive" not in resolved and "triplet" not in resolved
    assert resolved["channels"] == [4, 8]
    with pytest.raises(ParamsError, match="unknown model 'siamese'"):
        TINY.resolved("siamese")


def test_each_model_takes_its_own_epoch_limit_normalisation_and_members():
    params = dataclasses.replace(TINY, epochs=30, triplet=dataclasses.replace(TINY.triplet, epochs=60, members=3))
    assert (params.max_epochs("triplet"), params.max_epochs("contrastive")) == (60, 30)  # 0: train.epochs
    assert params.model_config("triplet").normalize and not params.model_config("contrastive").normalize
    assert (params.model_config("triplet").members, params.model_config("contrastive").members) == (3, 1)
    preprocess = dataclasses.replace(TINY, normalization="per_image", trim_borders=True).preprocess()
    assert (preprocess.height, preprocess.width, preprocess.normalization, preprocess.trim_borders) == (
        16, 16, "per_image", True)


def test_the_repositorys_params_yaml_parses():
    from facesim.pipeline.cv_params import load_cv_params
    from facesim.pipeline.evaluate import EvaluateParams
    from facesim.pipeline.fetch import FetchParams
    from facesim.pipeline.render import RenderParams
    from facesim.pipeline.runtime import RuntimeParams
    from facesim.pipeline.sample import SampleParams

    path = REPO / "params.yaml"
    assert load_section(FetchParams, path, "fetch").digest.startswith("sha256:")
    assert load_section(SampleParams, path, "sample").val_size == 0.2
    train = load_section(TrainParams, path, "train")
    assert train.epochs >= 1 and set(train.resolved("triplet")["loss"]) == set(dataclasses.asdict(train.triplet))
    for cls, section in ((EvaluateParams, "evaluate"), (RenderParams, "render"), (RuntimeParams, "runtime")):
        assert isinstance(load_section(cls, path, section), cls)
    cv, cv_train = load_cv_params(path)
    assert cv.folds and isinstance(cv_train, TrainParams)

