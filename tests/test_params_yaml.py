"""params.yaml is the one source of every value the pipeline reads: the dataclasses of its sections declare the
keys, their types and ranges, and no defaults; a params file that lacks a key is refused naming it.

A default in code is a second value beside params.yaml's, and the two drift apart (they once differed on eight
train keys); the tests that want other values build them from params.yaml (`helpers.repo_params`).
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
import typing
from pathlib import Path

import pytest
import yaml

import facesim
from helpers import REPO
from facesim.core.models import ModelConfig
from facesim.core.params import ParamsError, load_section
from facesim.pipeline.calibration import OperatingPoint
from facesim.pipeline.cv_params import CVParams, load_cv_params, load_operating_point
from facesim.pipeline.evaluate import EvaluateParams
from facesim.pipeline.fetch import FetchParams
from facesim.pipeline.render import RenderParams
from facesim.pipeline.runtime import RuntimeParams
from facesim.pipeline.sample import SampleParams
from facesim.training.train_params import TrainParams, load_train_params

# The sections of params.yaml read into a dataclass, by section (cv: but its `train`, put over the train section).
SECTIONS = {"fetch": FetchParams, "sample": SampleParams, "runtime": RuntimeParams, "train": TrainParams,
            "evaluate": EvaluateParams, "render": RenderParams, "cv": CVParams}


def repo_params_file() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))


def nested_dataclasses(cls: type) -> list[type]:
    """`cls` and every dataclass its fields hold, nested sections included."""
    found = [cls]
    for hint in typing.get_type_hints(cls).values():
        if dataclasses.is_dataclass(hint):
            found += nested_dataclasses(hint)
    return found


def params_dataclasses() -> set[type]:
    """Every dataclass of the package that holds params: the sections' (and their nested sections'), every
    `*Params` class of any module, and the network's shape, which the train params give."""
    found = {c for section in SECTIONS.values() for c in nested_dataclasses(section)} | {ModelConfig, OperatingPoint}
    for module in pkgutil.walk_packages(facesim.__path__, "facesim."):
        for value in vars(importlib.import_module(module.name)).values():
            if isinstance(value, type) and dataclasses.is_dataclass(value) and value.__name__.endswith("Params"):
                found.add(value)
    return found


def test_no_params_dataclass_has_a_default_of_its_own():
    with_defaults = sorted(f"{cls.__module__}.{cls.__name__}.{field.name}" for cls in params_dataclasses()
                           for field in dataclasses.fields(cls)
                           if field.default is not dataclasses.MISSING
                           or field.default_factory is not dataclasses.MISSING)
    assert with_defaults == [], f"defaults beside params.yaml's (give the value in params.yaml): {with_defaults}"


def test_the_check_finds_a_default():
    """The check above can fail: a dataclass with one default is found."""

    @dataclasses.dataclass(frozen=True)
    class DemoParams:
        lr: float
        epochs: int = 3

    assert [f.name for f in dataclasses.fields(DemoParams) if f.default is not dataclasses.MISSING] == ["epochs"]


def test_the_repositorys_params_yaml_parses_every_section():
    path = REPO / "params.yaml"
    for section, cls in SECTIONS.items():
        if section != "cv":
            assert isinstance(load_section(cls, path, section), cls)
    cv, train = load_cv_params(path)
    assert cv.folds and isinstance(train, TrainParams)
    for backbone in repo_params_file()["pipeline"]["backbones"]:
        assert load_train_params(path, backbone).backbone == repo_params_file()["backbones"][backbone]["backbone"]
    assert load_operating_point(path).target() == repo_params_file()["evaluate"]["target_far"]


def keys_of(raw: dict, prefix: str) -> list[str]:
    """Every key of a section, nested ones as `a.b`."""
    keys = []
    for key, value in raw.items():
        keys.append(f"{prefix}{key}")
        if isinstance(value, dict):
            keys += keys_of(value, f"{prefix}{key}.")
    return keys


def without(data: dict, dotted: str) -> dict:
    """A deep copy of `data` without the key `dotted` (`train.triplet.margin`)."""
    copy = yaml.safe_load(yaml.safe_dump(data))
    *parents, last = dotted.split(".")
    inner = copy
    for key in parents:
        inner = inner[key]
    del inner[last]
    return copy


def load(section: str, path: Path):
    """What the stages read of `section`, as they read it."""
    if section == "cv":
        return load_cv_params(path)
    return load_section(SECTIONS[section], path, section)


ALL_KEYS = [key for section, raw in repo_params_file().items() if section in SECTIONS
            for key in keys_of(raw, f"{section}.") if not key.startswith("cv.train")]


@pytest.mark.parametrize("key", ALL_KEYS)
def test_a_params_file_without_a_key_is_refused_naming_it(tmp_path: Path, key: str):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(without(repo_params_file(), key)))
    with pytest.raises(ParamsError, match=rf"params\.yaml: missing key {key.replace('.', r'.')}$"):
        load(key.split(".")[0], path)


def test_a_train_key_left_out_is_named_for_every_backbone_that_does_not_set_it(tmp_path: Path):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(without(repo_params_file(), "train.lr_schedule")))
    for backbone in ("compact", "dlib"):
        with pytest.raises(ParamsError, match=r"missing key train\.lr_schedule"):
            load_train_params(path, backbone)
    # a key a backbone sets need not be in the train section for that backbone
    path.write_text(yaml.safe_dump(without(repo_params_file(), "train.lr")))
    assert load_train_params(path, "dlib").lr == repo_params_file()["backbones"]["dlib"]["lr"]
    with pytest.raises(ParamsError, match=r"missing key train\.lr"):
        load_train_params(path, "compact")
