"""facesim.training.train_params: the `train` section of params.yaml (every section of the repository's own:
tests/test_params_yaml.py)."""

from __future__ import annotations

import dataclasses

import pytest

from helpers import repo_params, tiny_fit_params
from facesim.core.params import ParamsError
from facesim.training.train_params import TrainParams

TINY = tiny_fit_params()


def test_train_params_parse_from_a_section():
    params = repo_params(TrainParams, "train", lr="1e-2", triplet={"mining": "hard", "margin": 0.3, "channels": [4, 8]})
    assert params.triplet.channels == (4, 8) and params.lr == 0.01
    assert params.triplet.mining == "hard" and params.triplet.margin == 0.3
    repo = repo_params(TrainParams, "train")
    assert params.triplet.people_per_batch == repo.triplet.people_per_batch  # the keys not given stay
    assert params.contrastive == repo.contrastive


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
        ({"contrastive": {"channels": [4, 0]}}, "train.contrastive.channels"),
        ({"triplet": {"channels": []}}, "train.triplet.channels"),
        ({"channels": [4, 8]}, "train.channels"),  # each loss has its own
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
        repo_params(TrainParams, "train", **raw)


def test_one_process_in_float32_is_the_repositorys_choice_and_is_recorded():
    params = repo_params(TrainParams, "train")
    assert (params.processes, params.precision) == (1, "fp32")
    assert TINY.resolved("contrastive")["processes"] == 1 and TINY.resolved("contrastive")["precision"] == "fp32"
    repo_params(TrainParams, "train", processes=4, precision="bf16", device="cpu")
    repo_params(TrainParams, "train", precision="fp16", device="auto")  # CUDA checked when training


def test_fp16_needs_cuda_when_training_starts():
    params = repo_params(TrainParams, "train", precision="fp16", device="auto")
    with pytest.raises(ParamsError, match="train.precision fp16 needs a CUDA device"):
        params.check_precision_on("cpu")
    params.check_precision_on("cuda")
    for precision in ("bf16", "fp32"):
        repo_params(TrainParams, "train", precision=precision, device="cpu").check_precision_on("cpu")


def test_resolved_config_holds_the_models_loss_only():
    resolved = TINY.resolved("triplet")
    assert resolved["model"] == "triplet" and resolved["loss"] == {**dataclasses.asdict(TINY.triplet), "channels": [4, 8]}
    assert "contrastive" not in resolved and "triplet" not in resolved
    assert resolved["loss"]["channels"] == [4, 8] and "channels" not in resolved
    with pytest.raises(ParamsError, match="unknown model 'siamese'"):
        TINY.resolved("siamese")


def test_each_model_takes_its_own_epoch_limit_normalisation_members_and_widths():
    params = dataclasses.replace(TINY, epochs=30, triplet=dataclasses.replace(TINY.triplet, epochs=60, members=3,
                                                                              channels=(2, 6)))
    assert (params.max_epochs("triplet"), params.max_epochs("contrastive")) == (60, 30)  # 0: train.epochs
    assert params.model_config("triplet").normalize and not params.model_config("contrastive").normalize
    assert (params.model_config("triplet").members, params.model_config("contrastive").members) == (3, 1)
    assert (params.model_config("triplet").channels, params.model_config("contrastive").channels) == ((2, 6), (4, 8))
    preprocess = dataclasses.replace(TINY, normalization="per_image", trim_borders=True).preprocess()
    assert (preprocess.height, preprocess.width, preprocess.normalization, preprocess.trim_borders) == (
        16, 16, "per_image", True)
