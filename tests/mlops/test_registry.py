"""facesim.mlops.registry: the champion rule by hand, the tags of a version, and the evaluate stage
registering the pair-verifying model into a real (sqlite) MLflow registry.

Everything that logs shares one temporary store (`registry` of conftest, module scope): the evaluate
stage registers version 1 of a tiny untrained model, two more registrations exercise the champion
rule. Serving the champion over HTTP is in test_serving.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import REGISTERED, REGISTERED_MODEL, TESTING, needs_orl, write_tiny_model
from facesim.app import api
from facesim.core.inference import file_digest
from facesim.mlops.registry import (
    CHAMPION,
    champion_key,
    register_model,
    registered_name,
    should_promote,
    version_tags,
)
from facesim.mlops.runs import NULL_RUN
from facesim.mlops.tracking import stage_run


def client(registry):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=registry["uri"], registry_uri=registry["uri"])


def register(registry, metrics):
    with stage_run("evaluate", {"model": REGISTERED_MODEL}, root=registry["root"]) as run:
        return register_model(run, REGISTERED_MODEL, registry["checkpoint"], metrics)


def with_validation(metrics: dict, **values: float) -> dict:
    return {**metrics, "validation": {**metrics["validation"], **values}}


# ---- the champion rule, by hand ---------------------------------------------------------------------------


def tags(auc: float, accuracy: float) -> dict[str, str]:
    return {"validation.roc_auc": repr(auc), "validation.accuracy": repr(accuracy)}


@pytest.mark.parametrize("candidate, champion, promote", [
    (tags(0.95, 0.90), None, True),  # no champion yet
    (tags(0.96, 0.80), tags(0.95, 0.90), True),  # higher AUC wins, whatever the accuracy
    (tags(0.94, 0.99), tags(0.95, 0.90), False),  # lower AUC loses, whatever the accuracy
    (tags(0.95, 0.91), tags(0.95, 0.90), True),  # equal AUC: accuracy breaks the tie
    (tags(0.95, 0.89), tags(0.95, 0.90), False),
    (tags(0.95, 0.90), tags(0.95, 0.90), True),  # a full tie goes to the newer version
    (tags(0.5, 0.5), {"note": "registered by hand"}, True),  # a champion without the metrics is replaced
])
def test_should_promote(candidate, champion, promote):
    assert should_promote(candidate, champion) is promote


def test_the_rule_reads_validation_auc_then_accuracy_from_the_tags_a_version_gets():
    metrics = {"threshold": 0.5, "validation": {"roc_auc": 0.9, "accuracy": 0.8, "f1": 0.7},
               "test": {"roc_auc": 0.99, "accuracy": 0.98}}
    # the tags `register_model` writes are what the rule compares: validation AUC, then accuracy
    assert champion_key(version_tags(metrics)) == (0.9, 0.8)
    assert champion_key({**tags(0.9, 0.8), "test.roc_auc": "1.0"}) == (0.9, 0.8)  # test metrics play no part
    assert champion_key({"validation.roc_auc": "0.9"}) is None  # a version without both is no contender
    assert champion_key(tags(0.9, 0.8) | {"validation.accuracy": "n/a"}) is None
    with pytest.raises(ValueError, match="validation.roc_auc"):
        should_promote({"test.accuracy": "1.0"}, None)
    assert registered_name("dlib-triplet") == "facesim-dlib-triplet"  # facesim-<backbone>-<loss>


def test_version_tags_keep_numbers_exact():
    metrics = {"threshold": 0.1 + 0.2, "kept_epoch": 3,
               "validation": {"roc_auc": 2 / 3, "accuracy": 0.5, "tp": 4},
               "test": {"accuracy": 1 / 3}, "retrieval": {"map": 0.25}}
    written = version_tags(metrics)
    assert float(written["threshold"]) == 0.1 + 0.2 and float(written["validation.roc_auc"]) == 2 / 3
    assert written["kept_epoch"] == "3" and written["retrieval.map"] == "0.25" and "validation.tp" not in written


def test_register_model_does_nothing_for_a_run_that_logs_nowhere(tmp_path: Path, monkeypatch):
    """The evaluate stage as a library call (NullRun): no MLflow store is touched, or created."""
    import mlflow

    def refuse(*args, **kwargs):
        raise AssertionError("a NullRun must not log or register a model")

    monkeypatch.setattr("facesim.mlops.registry.log_and_register", refuse)
    monkeypatch.setattr(mlflow, "register_model", refuse)
    monkeypatch.chdir(tmp_path)
    checkpoint = write_tiny_model(tmp_path / "tiny.pt")
    assert NULL_RUN.run_id is None
    assert register_model(NULL_RUN, "compact-contrastive", checkpoint, {"threshold": 0.5}) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.json", "tiny.pt"]  # no mlflow.db, no mlruns


# ---- the registry ---------------------------------------------------------------------------------------------


def test_evaluate_registers_the_model_with_its_threshold_and_metrics(registry):
    registered = client(registry)
    version = registered.get_model_version(REGISTERED, "1")
    metrics = registry["metrics"]
    assert float(version.tags["threshold"]) == metrics["threshold"]
    for key in ("test.accuracy", "test.roc_auc", "validation.roc_auc", "all_pairs.eer", "retrieval.precision_at_1"):
        pair_set, name = key.split(".")
        assert float(version.tags[key]) == metrics[pair_set][name], key
    assert version.run_id == registry["run_id"]  # logged into the evaluate stage's own run
    assert str(registered.get_model_version_by_alias(REGISTERED, CHAMPION).version) == "1"  # the first is champion


def test_evaluate_registers_the_onnx_exports_verifier_beside_the_checkpoints(registry):
    import mlflow

    registered = client(registry)
    version = registered.get_model_version_by_alias(f"{REGISTERED}-onnx", CHAMPION)
    assert str(version.version) == "1" and version.run_id == registry["run_id"]  # the same evaluate run
    assert float(version.tags["threshold"]) == registry["metrics"]["threshold"]
    assert version.tags["validation.roc_auc"] == registered.get_model_version(REGISTERED, "1").tags["validation.roc_auc"]
    verifier = mlflow.models.get_model_info(f"models:/{REGISTERED}-onnx@{CHAMPION}")
    assert verifier.flavors["python_function"]["artifacts"].keys() == {"onnx"}  # the exported file, alone
    requirements = Path(mlflow.pyfunc.get_model_dependencies(f"models:/{REGISTERED}-onnx@{CHAMPION}")).read_text()
    assert "onnxruntime==" in requirements and "torch" not in requirements
    # the file registered is the one the stage published
    logged = mlflow.artifacts.download_artifacts(f"models:/{REGISTERED}-onnx/1")
    assert (Path(logged) / "artifacts" / "model.onnx").read_bytes() == registry["outputs"]["onnx"].read_bytes()


def test_champion_moves_only_when_validation_metrics_are_at_least_as_good(registry):
    registered = client(registry)
    metrics = registry["metrics"]
    worse = with_validation(metrics, roc_auc=metrics["validation"]["roc_auc"] - 0.01, accuracy=1.0)
    second = register(registry, worse)  # version 2: lower validation AUC, whatever its accuracy
    assert (second.name, second.version, second.champion, second.previous_champion) == (REGISTERED, "2", False, "1")
    assert registered.get_model_version(REGISTERED, "2").tags["validation.accuracy"] == "1.0"
    assert str(registered.get_model_version_by_alias(REGISTERED, CHAMPION).version) == "1"
    third = register(registry, metrics)  # version 3: as good as the champion
    assert (third.version, third.champion, third.previous_champion) == ("3", True, "1")
    assert str(registered.get_model_version_by_alias(REGISTERED, CHAMPION).version) == "3"


@needs_orl
def test_the_api_loads_a_registered_model_by_uri(registry):
    # What is served is looked at like a photo: the face is found first (facesim.core.detect). The synthetic
    # faces of the registry fixture are patterns no detector takes for faces, so this uses real ORL faces.
    a, b = TESTING / "s5" / "1.pgm", TESTING / "s6" / "2.pgm"
    by_uri = api.verify(a, b, f"models:/{REGISTERED}@{CHAMPION}")
    by_path = api.verify(a, b, str(registry["checkpoint"]), threshold=registry["metrics"]["threshold"])
    assert by_uri.model == f"models:/{REGISTERED}@{CHAMPION}"
    assert by_uri.threshold_source == ("calibrated on people unseen in training, logged with "
                                       f"models:/{REGISTERED}@{CHAMPION}")
    assert (by_uri.distance, by_uri.threshold, by_uri.same_person) == (by_path.distance, by_path.threshold,
                                                                        by_path.same_person)
    # the same checkpoint bytes: the same embedding cache
    assert api.load_model(f"models:/{REGISTERED}/1").digest == file_digest(registry["checkpoint"])
    with pytest.raises(api.ModelError, match="facesim-nobody@champion: cannot load the MLflow model"):
        api.load_model("models:/facesim-nobody@champion")
