"""facesim.train: params, embedding rows, the training loop, early stopping, checkpoints.

Every fit runs on the tiny synthetic faces of conftest (10x12 PGMs, 8 training subjects) at
16x16 with a two-block CNN, a few epochs: well under a second each on a CPU.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import write_faces_dir
from facesim.data import FaceSet
from facesim.models import EnsembleNet, ModelConfig, build_embedding_net
from facesim.params import ParamsError, parse_section
from facesim.sample import SampleParams, build_samples
from facesim.tracking import NullRun
from facesim.train import (
    member_seed,
    HISTORY_COLUMNS,
    Objective,
    TrainParams,
    embed_rows,
    fit,
    resolve_device,
    train_and_save,
)
from facesim.models import embed_all, load_checkpoint

pytestmark = pytest.mark.usefixtures("torch_global_state")

TINY = TrainParams(
    seed=3, device="cpu", input_height=16, input_width=16, channels=(4, 8), embedding_dim=8,
    epochs=3, batch_size=16, augment=False,
)
# 1 same + 1 different pair and 1 triplet per training image: 128 + 32 pairs, 64 + 16 triplets
SMALL_SAMPLES = SampleParams(similar_per_image=1, dissimilar_per_image=1, triplets_per_image=1)
TABLE_NAMES = ("pairs_train", "pairs_val", "triplets_train", "triplets_val")


def with_triplet(params: TrainParams, **changes) -> TrainParams:
    return dataclasses.replace(params, triplet=dataclasses.replace(params.triplet, **changes))


def quiet(_line: str) -> None:
    pass


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory):
    """(faces_dir, tables, faces): the sampled tables and their faces prepared at 16x16."""
    faces_dir = write_faces_dir(tmp_path_factory.mktemp("train") / "faces")
    samples = build_samples(SMALL_SAMPLES, faces_dir)
    tables = {name: samples[name.split("_")[0]][name.split("_")[1]] for name in TABLE_NAMES}
    paths = pd.concat([tables[n][c] for n in tables for c in tables[n].columns
                       if c in ("image1", "image2", "anchor", "positive", "negative")])
    return faces_dir, tables, FaceSet.load(faces_dir, paths, TINY.preprocess())


def run_fit(data, model_name: str, params: TrainParams, **kwargs):
    _, tables, faces = data
    return fit(model_name, params, tables, faces, log=quiet, **kwargs)


def assert_stopping_rule(history: pd.DataFrame, patience: int, epochs: int) -> None:
    """Training stops exactly when `patience` epochs in a row failed to beat the best val loss."""
    best, streak = math.inf, 0
    for i, val_loss in enumerate(history["val_loss"]):
        assert streak < patience, f"epoch {i + 1} ran after {streak} epochs without improvement"
        best, streak = (val_loss, 0) if val_loss < best else (best, streak + 1)
    assert len(history) == epochs or streak == patience


# ---- params -----------------------------------------------------------------------


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
        ({"channels": [4, 0]}, "train.channels"),
        ({"input_height": 8}, "train.input_height"),
        ({"lr_schedule": "step"}, "train.lr_schedule"),
    ],
)
def test_train_params_refuse_bad_values_naming_the_key(raw, key):
    with pytest.raises(ParamsError, match=key.replace(".", r"\.")):
        parse_section(TrainParams, raw, "train")


def test_resolved_config_holds_the_models_loss_only():
    resolved = TINY.resolved("triplet")
    assert resolved["model"] == "triplet" and resolved["loss"] == dataclasses.asdict(TINY.triplet)
    assert "contrastive" not in resolved and "triplet" not in resolved
    assert resolved["channels"] == [4, 8]
    with pytest.raises(ParamsError, match="unknown model 'siamese'"):
        TINY.resolved("siamese")


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_resolve_device_cuda_without_cuda_is_a_params_error():
    with pytest.raises(ParamsError, match="train.device is 'cuda'"):
        resolve_device("cuda")
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")


# ---- embedding rows ---------------------------------------------------------------


class CountingNet(torch.nn.Module):
    """Wraps an embedding net and records the batch size of every forward call."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net
        self.batch_sizes: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batch_sizes.append(x.shape[0])
        return self.net(x)


def tiny_net() -> CountingNet:
    torch.manual_seed(0)
    return CountingNet(build_embedding_net(ModelConfig(embedding_dim=8, input_height=16, input_width=16,
                                                       channels=(4, 8)))).eval()


def test_embed_rows_embeds_each_distinct_image_once():
    model = tiny_net()
    images = torch.randn(5, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    rows = torch.tensor([[0, 3], [3, 4], [0, 4], [4, 4]])  # distinct rows: 0, 3, 4
    with torch.no_grad():
        embeddings = embed_rows(model, images, rows)
        expected = model.net(images[rows.flatten()]).view(4, 2, 8)
    assert model.batch_sizes == [3]
    assert embeddings.shape == (4, 2, 8)
    assert torch.allclose(embeddings, expected, atol=1e-6)


@pytest.mark.parametrize("shape", [(7,), (2, 3), (2, 2, 3)])
def test_embed_rows_keeps_the_shape_of_rows(shape):
    model = tiny_net()
    images = torch.randn(5, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    rows = torch.randint(0, 5, shape, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        embeddings = embed_rows(model, images, rows)
    assert embeddings.shape == (*shape, 8)
    assert model.batch_sizes == [len(torch.unique(rows))]


def test_embed_rows_augments_each_distinct_image_once():
    model = tiny_net()
    images = torch.randn(5, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    seen: list[torch.Tensor] = []

    def brighten(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        seen.append(batch)
        return batch + 1.0

    rows = torch.tensor([[1, 2], [2, 1], [1, 1]])
    with torch.no_grad():
        embeddings = embed_rows(model, images, rows, brighten, torch.Generator())
        expected = model.net(images[[1, 2]] + 1.0)
    assert len(seen) == 1 and torch.equal(seen[0], images[[1, 2]])
    # the same augmented face wherever a row repeats
    assert torch.allclose(embeddings[0, 0], expected[0], atol=1e-6)
    assert torch.allclose(embeddings[1, 0], expected[1], atol=1e-6)
    assert torch.equal(embeddings[2, 0], embeddings[2, 1])


def test_embed_all_batches_every_image_in_order_without_grad():
    model = tiny_net().train()
    images = torch.randn(7, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    embeddings = embed_all(model, images, batch_size=3)
    assert model.batch_sizes == [3, 3, 1] and not model.training
    assert embeddings.shape == (7, 8) and not embeddings.requires_grad
    with torch.no_grad():
        assert torch.allclose(embeddings, model.net(images), atol=1e-6)


# ---- fit --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "model_name, params",
    [
        ("contrastive", TINY),
        ("triplet", with_triplet(TINY, mining="none")),
        ("triplet", with_triplet(TINY, mining="semihard", people_per_batch=4, faces_per_person=4)),
        ("contrastive", dataclasses.replace(TINY, contrastive=dataclasses.replace(
            TINY.contrastive, mining="all", people_per_batch=4, faces_per_person=3))),
    ],
    ids=["contrastive", "triplet-none", "triplet-semihard", "contrastive-all"],
)
def test_fit_trains_each_model(data, model_name, params):
    _, _, faces = data
    result = run_fit(data, model_name, params)
    history = result.history
    assert list(history.columns) == HISTORY_COLUMNS
    assert 1 <= len(history) <= params.epochs and history["epoch"].tolist() == list(range(1, len(history) + 1))
    assert np.isfinite(history[["train_loss", "val_loss", "val_roc_auc"]].to_numpy()).all()
    assert history["val_roc_auc"].between(0, 1).all() and (history["seconds"] > 0).all()
    # the kept epoch is the one with the lowest validation loss
    assert result.best_epoch == int(history["val_loss"].idxmin()) + 1
    assert result.best_val_loss == history["val_loss"].min()
    assert_stopping_rule(history, params.patience, params.epochs)

    checkpoint = result.checkpoint
    assert checkpoint["model_name"] == model_name and checkpoint["epoch"] == result.best_epoch
    assert checkpoint["params"] == params.resolved(model_name)
    assert checkpoint["model_config"] == params.model_config(model_name).to_dict()
    assert checkpoint["preprocess"] == params.preprocess().to_dict()
    assert {"model_state", "optimizer_state", "best_val_loss"} <= set(checkpoint)

    embeddings = embed_all(result.model, faces.tensor)
    assert embeddings.shape == (len(faces.paths), params.embedding_dim)
    if params.loss_params(model_name).normalize:
        assert torch.allclose(embeddings.norm(dim=1), torch.ones(len(embeddings)), atol=1e-5)


def test_fit_lowers_the_contrastive_training_loss(data):
    history = run_fit(data, "contrastive", dataclasses.replace(TINY, epochs=5, patience=5)).history
    assert len(history) == 5
    assert history["train_loss"].iloc[-1] < history["train_loss"].iloc[0]
    assert history["train_loss"].min() < 0.9 * history["train_loss"].iloc[0]


def test_fit_is_deterministic(data):
    params = dataclasses.replace(TINY, augment=True)  # augmentation draws from the seeded generator too
    first, second = run_fit(data, "contrastive", params), run_fit(data, "contrastive", params)
    columns = ["train_loss", "val_loss", "val_roc_auc"]
    pd.testing.assert_frame_equal(first.history[columns], second.history[columns], check_exact=True)
    assert first.checkpoint["model_state"].keys() == second.checkpoint["model_state"].keys()
    for name, tensor in first.checkpoint["model_state"].items():
        assert torch.equal(tensor, second.checkpoint["model_state"][name]), name
    # and the seed matters: another seed gives other numbers
    other = run_fit(data, "contrastive", dataclasses.replace(params, seed=params.seed + 1))
    assert not np.allclose(other.history["train_loss"], first.history["train_loss"])


@pytest.mark.parametrize(
    "schedule, rates",
    [
        # epoch e (from 0) of 4 trains at lr * (1 + cos(pi * e / 4)) / 2
        ("cosine", [0.01, 0.01 * (1 + 2 ** -0.5) / 2, 0.005, 0.01 * (1 - 2 ** -0.5) / 2]),
        ("constant", [0.01] * 4),
    ],
)
def test_fit_follows_the_learning_rate_schedule(data, monkeypatch, schedule, rates):
    seen = []
    real_step = torch.optim.Adam.step

    def step(self, *args, **kwargs):
        seen.append(self.param_groups[0]["lr"])
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", step)
    params = dataclasses.replace(TINY, epochs=4, patience=10, lr=0.01, lr_schedule=schedule)
    history = run_fit(data, "contrastive", params).history
    steps_per_epoch = len(seen) // len(history)
    assert len(history) == 4 and len(seen) == 4 * steps_per_epoch
    assert seen[::steps_per_epoch] == pytest.approx(rates)
    assert all(len(set(seen[i:i + steps_per_epoch])) == 1 for i in range(0, len(seen), steps_per_epoch))


def test_fit_refuses_an_unknown_model(data):
    with pytest.raises(ParamsError, match="unknown model 'quadruplet'"):
        run_fit(data, "quadruplet", TINY)


# ---- early stopping ---------------------------------------------------------------


def scripted_validation(monkeypatch: pytest.MonkeyPatch, val_losses: list[float]) -> list[torch.Tensor]:
    """Make Objective.validate return `val_losses` in turn; returns the embeddings it was given."""
    script = iter(val_losses)
    seen: list[torch.Tensor] = []

    def validate(self, embeddings: torch.Tensor) -> dict[str, float]:
        seen.append(embeddings.clone())
        return {"val_loss": next(script), "val_roc_auc": 0.5}

    monkeypatch.setattr(Objective, "validate", validate)
    return seen


@pytest.mark.parametrize(
    "patience, val_losses, epochs_run, best_epoch",
    [
        # best at 4, then 5 and 6 are worse: two epochs without a gain stop it after epoch 6
        (2, [3.0, 2.0, 2.5, 1.0, 1.5, 1.0, 0.1, 0.1], 6, 4),
        # one worse epoch (3) is tolerated with patience 2; equal is not better
        (2, [3.0, 2.0, 2.5, 1.0, 0.5, 0.5, 0.4, 0.3], 8, 8),
        (1, [3.0, 2.0, 2.5, 1.0, 0.5, 0.5, 0.4, 0.3], 3, 2),
        (3, [1.0, 1.1, 1.2, 1.3, 0.0, 0.0, 0.0, 0.0], 4, 1),
    ],
)
def test_early_stopping_honours_patience(data, monkeypatch, patience, val_losses, epochs_run, best_epoch):
    seen = scripted_validation(monkeypatch, val_losses)
    params = dataclasses.replace(TINY, epochs=8, patience=patience)
    result = run_fit(data, "contrastive", params)
    assert len(result.history) == epochs_run
    assert result.stopped_early == (epochs_run < params.epochs)
    assert result.best_epoch == best_epoch and result.checkpoint["epoch"] == best_epoch
    assert result.best_val_loss == val_losses[best_epoch - 1]
    assert result.history["val_loss"].tolist() == val_losses[:epochs_run]
    assert_stopping_rule(result.history, patience, params.epochs)
    # the model that comes back has the best epoch's weights, not the last epoch's
    _, _, faces = data
    assert torch.allclose(embed_all(result.model, faces.tensor), seen[best_epoch - 1], atol=1e-6)
    if best_epoch != epochs_run:
        assert not torch.allclose(seen[best_epoch - 1], seen[-1], atol=1e-6)


@pytest.mark.parametrize(
    "patience, val_losses, epochs_run",
    [
        # never stops early with patience 0, however long the loss fails to improve
        (0, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 6),
        # keep: last still stops early with patience: it then keeps the epoch it stopped at
        (2, [1.0, 2.0, 3.0, 0.5, 0.4, 0.3], 3),
    ],
)
def test_keep_last_returns_the_last_epoch_run(data, monkeypatch, patience, val_losses, epochs_run):
    seen = scripted_validation(monkeypatch, val_losses)
    params = dataclasses.replace(TINY, epochs=6, patience=patience, keep="last")
    result = run_fit(data, "contrastive", params)
    assert len(result.history) == epochs_run
    assert result.best_epoch == epochs_run and result.checkpoint["epoch"] == epochs_run
    assert result.best_val_loss == val_losses[epochs_run - 1]
    _, _, faces = data
    assert torch.allclose(embed_all(result.model, faces.tensor), seen[-1], atol=1e-6)
    assert not torch.allclose(seen[0], seen[-1], atol=1e-6)


# ---- train_and_save and checkpoints -------------------------------------------------


def write_tables(data, directory: Path) -> dict[str, Path]:
    _, tables, _ = data
    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, table in tables.items():
        paths[name] = directory / f"{name}.csv"
        table.to_csv(paths[name], index=False)
    return paths


class RecordingRun(NullRun):
    def __init__(self, fail_on_log_model: bool = False):
        self.metrics: list[tuple[dict, int | None]] = []
        self.models: list[dict] = []
        self.fail_on_log_model = fail_on_log_model

    def log_metrics(self, metrics, step=None):
        self.metrics.append((dict(metrics), step))

    def log_model(self, model, input_example, metadata):
        if self.fail_on_log_model:
            raise RuntimeError("model registry is down")
        self.models.append(dict(metadata))


def test_train_and_save_writes_checkpoint_and_history(data, tmp_path: Path):
    faces_dir, _, faces = data
    checkpoint_path, history_path = tmp_path / "models" / "contrastive.pt", tmp_path / "plots" / "history.csv"
    run = RecordingRun()
    result = train_and_save("contrastive", TINY, faces_dir, write_tables(data, tmp_path / "samples"),
                            checkpoint_path, history_path, run)
    assert checkpoint_path.is_file() and history_path.is_file()

    history = pd.read_csv(history_path)
    assert list(history.columns) == ["epoch", "train_loss", "val_loss", "val_roc_auc"]  # no wall-clock seconds
    assert history["epoch"].tolist() == list(range(1, len(result.history) + 1))
    assert np.allclose(history["val_loss"], result.history["val_loss"], rtol=1e-5)

    # one metrics row per epoch, then the summary
    steps = [step for _, step in run.metrics]
    assert steps == list(range(1, len(history) + 1)) + [None]
    summary = run.metrics[-1][0]
    assert summary["best_epoch"] == result.best_epoch and summary["epochs_run"] == len(history)
    assert summary["best_val_roc_auc"] == result.history["val_roc_auc"][result.best_epoch - 1]
    assert run.models == [result.checkpoint]

    # round trip: the loaded network gives the very same embeddings
    model, checkpoint = load_checkpoint(checkpoint_path)
    assert not model.training
    assert checkpoint["epoch"] == result.best_epoch and checkpoint["params"] == TINY.resolved("contrastive")
    assert torch.equal(embed_all(model, faces.tensor), embed_all(result.model, faces.tensor))


def test_train_and_save_writes_nothing_when_logging_the_model_fails(data, tmp_path: Path):
    faces_dir = data[0]
    checkpoint_path, history_path = tmp_path / "out" / "model.pt", tmp_path / "out" / "history.csv"
    with pytest.raises(RuntimeError, match="model registry is down"):
        train_and_save("contrastive", TINY, faces_dir, write_tables(data, tmp_path / "samples"),
                       checkpoint_path, history_path, RecordingRun(fail_on_log_model=True))
    assert not checkpoint_path.exists() and not history_path.exists()
    assert list((tmp_path / "out").iterdir()) == []  # no staged leftovers either


def test_train_and_save_keeps_old_outputs_when_it_fails(data, tmp_path: Path):
    faces_dir = data[0]
    checkpoint_path, history_path = tmp_path / "model.pt", tmp_path / "history.csv"
    checkpoint_path.write_bytes(b"old checkpoint")
    history_path.write_text("old history\n")
    with pytest.raises(RuntimeError):
        train_and_save("contrastive", TINY, faces_dir, write_tables(data, tmp_path / "samples"),
                       checkpoint_path, history_path, RecordingRun(fail_on_log_model=True))
    assert checkpoint_path.read_bytes() == b"old checkpoint" and history_path.read_text() == "old history\n"


def test_train_and_save_names_a_missing_table(data, tmp_path: Path):
    tables = write_tables(data, tmp_path / "samples")
    tables["pairs_val"] = tmp_path / "samples" / "nowhere.csv"
    with pytest.raises(FileNotFoundError, match="nowhere.csv"):
        train_and_save("contrastive", TINY, data[0], tables, tmp_path / "m.pt", tmp_path / "h.csv")
    assert not (tmp_path / "m.pt").exists()


def test_load_checkpoint_names_a_missing_or_foreign_file(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="absent.pt"):
        load_checkpoint(tmp_path / "absent.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pt"):
        load_checkpoint(junk)
    foreign = tmp_path / "foreign.pt"
    torch.save({"model_state": {}}, foreign)
    with pytest.raises(ValueError, match="missing epoch, model_config, preprocess"):
        load_checkpoint(foreign)


# ---- ensembles ---------------------------------------------------------------------------


def test_an_ensemble_is_its_members_trained_apart_side_by_side(data):
    params = with_triplet(dataclasses.replace(TINY, epochs=2, patience=0, keep="last"), members=3)
    result = run_fit(data, "triplet", params)
    _, _, faces = data
    assert isinstance(result.model, EnsembleNet) and len(result.model.members) == 3
    # each member is exactly the single network its own seed trains
    for i, member in enumerate(result.model.members):
        alone = run_fit(data, "triplet", with_triplet(dataclasses.replace(params, seed=member_seed(params.seed, i)),
                                                      members=1))
        assert torch.allclose(embed_all(member, faces.tensor), embed_all(alone.model, faces.tensor), atol=1e-6)
    assert member_seed(params.seed, 0) == params.seed
    # side by side, scaled so that squared distances are the members' mean
    whole = embed_all(result.model, faces.tensor)
    parts = [embed_all(m, faces.tensor) for m in result.model.members]
    assert whole.shape == (len(faces.tensor), 3 * params.embedding_dim)
    d_whole = torch.cdist(whole[:5], whole[5:10]) ** 2
    d_parts = sum(torch.cdist(p[:5], p[5:10]) ** 2 for p in parts) / 3
    assert torch.allclose(d_whole, d_parts, atol=1e-5)
    # normalised members make a unit-length whole
    assert torch.allclose(whole.norm(dim=1), torch.ones(len(whole)), atol=1e-5)
    assert result.checkpoint["model_config"]["members"] == 3 and result.checkpoint["member_epochs"] == [2, 2, 2]
    assert list(result.history["epoch"]) == [1, 2]


def test_an_ensemble_checkpoint_loads_back(data, tmp_path: Path):
    params = dataclasses.replace(TINY, epochs=1, contrastive=dataclasses.replace(TINY.contrastive, members=2))
    result = train_and_save("contrastive", params, data[0], write_tables(data, tmp_path / "samples"),
                            tmp_path / "model.pt", tmp_path / "history.csv")
    model, checkpoint = load_checkpoint(tmp_path / "model.pt")
    _, _, faces = data
    assert isinstance(model, EnsembleNet) and checkpoint["epoch"] == 1
    assert torch.allclose(embed_all(model, faces.tensor), embed_all(result.model, faces.tensor), atol=1e-6)
