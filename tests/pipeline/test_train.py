"""facesim.pipeline.train: the train stage's work (`train_and_save`): the sample CSVs in, the checkpoint and
the loss history out (all or none), both logged to the run. The loop itself is tested in test_fit.py."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from helpers import RecordingRun, tiny_fit_params, train_samples, write_tiny_inputs
from facesim.core.data import FaceSet
from facesim.core.checkpoint import load_checkpoint
from facesim.core.embedding import embed_all
from facesim.core.models import EnsembleNet
from facesim.core.params import ParamsError
from facesim.pipeline.train import train_and_save

pytestmark = pytest.mark.usefixtures("torch_global_state")

TINY = tiny_fit_params()


@pytest.fixture(scope="module")
def stage_inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """(faces_dir, the CSVs of the sample stage) on the tiny faces."""
    return write_tiny_inputs(tmp_path_factory.mktemp("train"))


def test_train_and_save_writes_checkpoint_and_history(stage_inputs, tmp_path: Path):
    faces_dir, samples = stage_inputs
    checkpoint_path, history_path = tmp_path / "models" / "contrastive.pt", tmp_path / "plots" / "history.csv"
    run = RecordingRun()
    result = train_and_save("contrastive", TINY, faces_dir, train_samples(samples), checkpoint_path, history_path,
                            run)
    assert checkpoint_path.is_file() and history_path.is_file()

    history = pd.read_csv(history_path)
    assert list(history.columns) == ["epoch", "train_loss", "val_loss", "val_roc_auc"]  # no wall-clock seconds
    assert history["epoch"].tolist() == list(range(1, len(result.history) + 1))
    assert np.allclose(history["val_loss"], result.history["val_loss"], rtol=1e-5)

    # one metrics row per epoch, then the summary
    steps = [step for _, step in run.metrics]
    assert steps == list(range(1, len(history) + 1)) + [None]
    summary = run.metrics[-1][0]
    assert summary["kept_epoch"] == result.kept_epoch and summary["epochs_run"] == len(history)
    assert summary["kept_val_roc_auc"] == result.history["val_roc_auc"][result.kept_epoch - 1]
    # the network itself, two prepared faces as its input example, and what the checkpoint says of it
    ((model, example, metadata),) = run.models
    assert model is result.model and example.shape == (2, 1, 16, 16) and example.dtype == np.float32
    assert metadata == {"model_name": "contrastive", "epoch": result.kept_epoch,
                        "kept_val_loss": result.kept_val_loss}
    assert [(path.suffix, folder) for path, folder in run.artifacts] == [(".csv", "plots")]

    # round trip: the loaded network gives the very same embeddings
    faces = FaceSet.load(faces_dir, [f"testing/s5/{i}.pgm" for i in range(1, 11)], TINY.preprocess())
    model, checkpoint = load_checkpoint(checkpoint_path)
    assert not model.training
    assert checkpoint["epoch"] == result.kept_epoch and checkpoint["params"] == TINY.resolved("contrastive")
    assert torch.equal(embed_all(model, faces.tensor), embed_all(result.model, faces.tensor))


def test_train_and_save_trains_a_triplet_model_from_its_own_csvs(stage_inputs, tmp_path: Path):
    faces_dir, samples = stage_inputs
    params = dataclasses.replace(TINY, epochs=1, triplet=dataclasses.replace(TINY.triplet, mining="none"))
    result = train_and_save("triplet", params, faces_dir, train_samples(samples, "triplet"), tmp_path / "t.pt",
                            tmp_path / "history.csv")
    assert load_checkpoint(tmp_path / "t.pt")[1]["model_name"] == "triplet"
    assert 0.0 <= result.history["val_roc_auc"].iloc[0] <= 1.0  # ROC AUC of the validation pairs


def test_train_and_save_writes_nothing_when_logging_the_model_fails(stage_inputs, tmp_path: Path):
    faces_dir, samples = stage_inputs
    checkpoint_path, history_path = tmp_path / "out" / "model.pt", tmp_path / "out" / "history.csv"
    with pytest.raises(RuntimeError, match="model registry is down"):
        train_and_save("contrastive", TINY, faces_dir, train_samples(samples), checkpoint_path, history_path,
                       RecordingRun(fail_on_log_model=True))
    assert not checkpoint_path.exists() and not history_path.exists()
    assert list((tmp_path / "out").iterdir()) == []  # no staged leftovers either


def test_train_and_save_keeps_old_outputs_when_it_fails(stage_inputs, tmp_path: Path):
    faces_dir, samples = stage_inputs
    checkpoint_path, history_path = tmp_path / "model.pt", tmp_path / "history.csv"
    checkpoint_path.write_bytes(b"old checkpoint")
    history_path.write_text("old history\n")
    with pytest.raises(RuntimeError):
        train_and_save("contrastive", TINY, faces_dir, train_samples(samples), checkpoint_path, history_path,
                       RecordingRun(fail_on_log_model=True))
    assert checkpoint_path.read_bytes() == b"old checkpoint" and history_path.read_text() == "old history\n"


def test_train_and_save_names_a_missing_table(stage_inputs, tmp_path: Path):
    faces_dir, samples = stage_inputs
    inputs = {**train_samples(samples, "triplet"), "val_pairs": tmp_path / "nowhere.csv"}
    with pytest.raises(FileNotFoundError, match=r"nowhere\.csv: not found \(run the sample stage first\)"):
        train_and_save("triplet", TINY, faces_dir, inputs, tmp_path / "m.pt", tmp_path / "h.csv")
    assert not (tmp_path / "m.pt").exists()


def test_train_and_save_stops_before_any_work_without_the_imagenet_weights(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    params = dataclasses.replace(TINY, backbone="resnet18", pretrained="imagenet")
    nowhere = {role: tmp_path / "no.csv" for role in ("train", "val", "val_pairs")}  # never read
    with pytest.raises(FileNotFoundError, match=r"train.pretrained: imagenet needs .*torch_home/hub/checkpoints/"
                                                r"resnet18-f37072fd.pth"):
        train_and_save("contrastive", params, tmp_path / "no_faces", nowhere, tmp_path / "m.pt", tmp_path / "h.csv")
    assert not (tmp_path / "m.pt").exists()


def test_train_and_save_stops_before_any_work_without_dlib(tmp_path: Path, monkeypatch):
    from facesim.core import dlib_face

    monkeypatch.setitem(sys.modules, "dlib", None)  # import dlib now raises ImportError
    dlib_face.dlib_faces.cache_clear()
    params = dataclasses.replace(TINY, backbone="dlib", embedding_dim=128)
    nowhere = {role: tmp_path / "no.csv" for role in ("train", "val", "val_pairs")}  # never read
    try:
        with pytest.raises(dlib_face.DlibUnavailable, match=r"train.backbone 'dlib' needs dlib: pip install"):
            train_and_save("contrastive", params, tmp_path / "no_faces", nowhere, tmp_path / "m.pt", tmp_path / "h.csv")
    finally:
        dlib_face.dlib_faces.cache_clear()
    assert not (tmp_path / "m.pt").exists()


def test_the_dlib_backbone_trains_a_head_on_descriptors(stage_inputs, tmp_path: Path, monkeypatch):
    pytest.importorskip("dlib", reason="the dlib extra is not installed (pip install -e '.[dlib]')")
    monkeypatch.setenv("FACESIM_CACHE", str(tmp_path / "cache"))
    faces_dir, samples = stage_inputs
    params = dataclasses.replace(TINY, backbone="dlib", embedding_dim=16, augment=True)
    train_and_save("triplet", params, faces_dir, train_samples(samples, "triplet"), tmp_path / "m.pt",
                   tmp_path / "h.csv")
    model, checkpoint = load_checkpoint(tmp_path / "m.pt")
    assert checkpoint["preprocess"]["features"] == "dlib"
    assert checkpoint["model_config"]["backbone"] == "dlib"
    assert model(torch.zeros(3, 128)).shape == (3, 16)
    assert len(list((tmp_path / "cache").rglob("*.npy"))) > 0  # every face described once, kept


def test_contrastive_validates_on_the_validation_pairs_only(stage_inputs, tmp_path: Path):
    faces_dir, samples = stage_inputs
    inputs = {**train_samples(samples), "val_pairs": samples["pairs"]["test"]}
    with pytest.raises(ValueError, match="contrastive validates on pairs: its validation CSV and the validation "
                                         "pairs must be one file"):
        train_and_save("contrastive", TINY, faces_dir, inputs, tmp_path / "m.pt", tmp_path / "h.csv")
    with pytest.raises(ParamsError, match="unknown model 'siamese'"):
        train_and_save("siamese", TINY, faces_dir, train_samples(samples), tmp_path / "m.pt", tmp_path / "h.csv")
    assert not (tmp_path / "m.pt").exists()


def test_an_ensemble_checkpoint_loads_back(stage_inputs, tmp_path: Path):
    faces_dir, samples = stage_inputs
    params = dataclasses.replace(TINY, epochs=1, contrastive=dataclasses.replace(TINY.contrastive, members=2))
    result = train_and_save("contrastive", params, faces_dir, train_samples(samples), tmp_path / "model.pt",
                            tmp_path / "history.csv")
    model, checkpoint = load_checkpoint(tmp_path / "model.pt")
    faces = FaceSet.load(faces_dir, [f"testing/s6/{i}.pgm" for i in range(1, 11)], params.preprocess())
    assert isinstance(model, EnsembleNet) and checkpoint["epoch"] == 1
    assert torch.allclose(embed_all(model, faces.tensor), embed_all(result.model, faces.tensor), atol=1e-6)


def test_the_train_stage_without_dlib_names_the_extra_and_how_to_leave_the_backbone_out(tmp_path: Path):
    import yaml

    stub = tmp_path / "stub"
    stub.mkdir()
    (stub / "dlib.py").write_text("raise ImportError('dlib is not installed here')\n")  # as if the extra were missing
    repo = Path(__file__).resolve().parents[2]
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"]["device"], params["runtime"]["threads"] = "cpu", 1
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    args = [sys.executable, str(repo / "stages" / "train.py"), "--backbone", "dlib", "--model", "triplet",
            "--faces", "faces", "--checkpoint", "models/dlib-triplet.pt", "--history", "history.csv"]
    for kind in ("pairs", "triplets"):
        args += [f"--{kind}-train", f"{kind}_train.csv", f"--{kind}-val", f"{kind}_val.csv"]
    done = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": f"{stub}{os.pathsep}{repo / 'src'}",
                               "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"})
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "pip install -e '.[dlib]'" in lines[0] and "pipeline.backbones=[compact]" in lines[0]
    assert not (tmp_path / "models").exists() and not (tmp_path / "mlflow.db").exists()  # stopped before any work
