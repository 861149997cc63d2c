"""facesim.training.fit: the training loop, early stopping, learning-rate schedules, ensembles.

Every fit runs on the tiny synthetic faces of helpers.py (10x12 PGMs, 8 training subjects) at
16x16 with a two-block CNN, a few epochs: well under a second each on a CPU.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest
import torch

from helpers import tiny_fit_params, tiny_training_data
from facesim.core.data import FaceSet
from facesim.core.embedding import embed_all
from facesim.core.models import EnsembleNet
from facesim.core.params import ParamsError
from facesim.training.fit import fit, join_members, member_seed
from facesim.training.network import HISTORY_COLUMNS, EarlyStopping, TrainResult, resolve_device
from facesim.training.objectives import OBJECTIVES, ContrastiveObjective, Objective
from facesim.training.train_params import TrainParams

pytestmark = pytest.mark.usefixtures("torch_global_state")

TINY = tiny_fit_params()


def with_triplet(params: TrainParams, **changes) -> TrainParams:
    return dataclasses.replace(params, triplet=dataclasses.replace(params.triplet, **changes))


def quiet(_line: str) -> None:
    pass


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory):
    """(faces_dir, tables, faces): the sampled tables and their faces prepared at 16x16."""
    return tiny_training_data(tmp_path_factory.mktemp("fit"))


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


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_resolve_device_cuda_without_cuda_is_a_params_error():
    with pytest.raises(ParamsError, match="train.device is 'cuda'"):
        resolve_device("cuda")
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")


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
    assert len(result.train_seconds) == len(history) and all(s > 0 for s in result.train_seconds)
    # the kept epoch is the one with the lowest validation loss
    assert result.kept_epoch == int(history["val_loss"].idxmin()) + 1
    assert result.kept_val_loss == history["val_loss"].min()
    assert_stopping_rule(history, params.patience, params.epochs)

    checkpoint = result.checkpoint
    assert checkpoint["model_name"] == model_name and checkpoint["epoch"] == result.kept_epoch
    assert checkpoint["params"] == params.resolved(model_name)
    assert checkpoint["model_config"] == params.model_config(model_name).to_dict()
    assert checkpoint["preprocess"] == params.preprocess().to_dict()
    assert {"model_state", "optimizer_state", "kept_val_loss"} <= set(checkpoint)

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


@pytest.mark.parametrize("model_name, params", [
    ("contrastive", TINY),
    ("triplet", with_triplet(TINY, mining="semihard", people_per_batch=4, faces_per_person=3)),
], ids=["contrastive-csv", "triplet-pk"])
def test_on_step_sees_every_batch_of_every_epoch(data, model_name, params):
    """What benchmarks count with: one call per training step, whose batches add up to an epoch's data."""
    _, tables, _ = data
    steps: list[tuple[int, int, int]] = []

    def on_step(objective: Objective, batch) -> None:
        steps.append((objective.batch_size(batch), objective.examples_in(batch), objective.faces_in(batch)))

    params = dataclasses.replace(params, epochs=2, patience=0)
    result = run_fit(data, model_name, params, on_step=on_step)
    assert len(result.history) == 2 and len(steps) % 2 == 0
    epoch = steps[: len(steps) // 2]
    if model_name == "contrastive":  # every training pair once an epoch, in batches of batch_size
        assert [size for size, _, _ in epoch] == [16] * (len(tables["pairs_train"]) // 16)
        assert sum(examples for _, examples, _ in epoch) == len(tables["pairs_train"]) == 128
    else:  # P x K batches of 4 people x 3 faces: 4 * 3 * 2 (anchor, positive) triplets each
        assert all(size == faces == 12 and examples == 24 for size, examples, faces in epoch)


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


@pytest.mark.parametrize("patience, losses, verdicts", [
    # (improved, stop) after each epoch; equal is not better
    (2, [3.0, 2.0, 2.5, 2.0, 1.0], [(True, False), (True, False), (False, False), (False, True), (True, False)]),
    (1, [1.0, 1.0], [(True, False), (False, True)]),
    (0, [1.0, 2.0, 3.0, 4.0], [(True, False)] + [(False, False)] * 3),  # 0: never stops
])
def test_early_stopping_counts_epochs_without_a_better_loss(patience, losses, verdicts):
    stopping = EarlyStopping(patience)
    assert [stopping.update(loss) for loss in losses] == verdicts
    assert stopping.best == min(losses)


def scripted_validation(monkeypatch: pytest.MonkeyPatch, val_losses: list[float]) -> list[torch.Tensor]:
    """Make Objective.validate return `val_losses` in turn; returns the embeddings it was given, each with the
    rows it reads (those of `val_rows`) set to the model's embedding of those faces (`validated`)."""
    script = iter(val_losses)
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def validate(self, embeddings: torch.Tensor) -> dict[str, float]:
        seen.append((self.val_rows, embeddings.clone()))
        return {"val_loss": next(script), "val_roc_auc": 0.5}

    monkeypatch.setattr(Objective, "validate", validate)
    return seen


def validated(model: torch.nn.Module, faces: FaceSet, seen: tuple[torch.Tensor, torch.Tensor]) -> bool:
    """Whether validation was given `model`'s embeddings of the faces it reads."""
    rows, embeddings = seen
    return torch.allclose(embed_all(model, faces.tensor)[rows], embeddings[rows], atol=1e-6)


@pytest.mark.parametrize(
    "patience, val_losses, epochs_run, kept_epoch",
    [
        # best at 4, then 5 and 6 are worse: two epochs without a gain stop it after epoch 6
        (2, [3.0, 2.0, 2.5, 1.0, 1.5, 1.0, 0.1, 0.1], 6, 4),
        # one worse epoch (3) is tolerated with patience 2; equal is not better
        (2, [3.0, 2.0, 2.5, 1.0, 0.5, 0.5, 0.4, 0.3], 8, 8),
        (1, [3.0, 2.0, 2.5, 1.0, 0.5, 0.5, 0.4, 0.3], 3, 2),
        (3, [1.0, 1.1, 1.2, 1.3, 0.0, 0.0, 0.0, 0.0], 4, 1),
    ],
)
def test_early_stopping_honours_patience(data, monkeypatch, patience, val_losses, epochs_run, kept_epoch):
    seen = scripted_validation(monkeypatch, val_losses)
    params = dataclasses.replace(TINY, epochs=8, patience=patience)
    result = run_fit(data, "contrastive", params)
    assert len(result.history) == epochs_run
    assert result.stopped_early == (epochs_run < params.epochs)
    assert result.kept_epoch == kept_epoch and result.checkpoint["epoch"] == kept_epoch
    assert result.kept_val_loss == val_losses[kept_epoch - 1]
    assert result.history["val_loss"].tolist() == val_losses[:epochs_run]
    assert_stopping_rule(result.history, patience, params.epochs)
    # the model that comes back has the best epoch's weights, not the last epoch's
    _, _, faces = data
    assert validated(result.model, faces, seen[kept_epoch - 1])
    if kept_epoch != epochs_run:
        assert not validated(result.model, faces, seen[-1])


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
    assert result.kept_epoch == epochs_run and result.checkpoint["epoch"] == epochs_run
    assert result.kept_val_loss == val_losses[epochs_run - 1]
    _, _, faces = data
    assert validated(result.model, faces, seen[-1])
    assert not validated(result.model, faces, seen[0])


# ---- ensembles ---------------------------------------------------------------------------


def test_member_seeds_keep_the_first_and_share_none_across_nearby_seeds():
    assert member_seed(7, 0) == 7
    seeds = {member_seed(seed, member) for seed in (1, 2, 3) for member in range(5)}
    assert len(seeds) == 15


def test_an_ensemble_is_its_members_trained_apart_side_by_side(data):
    params = with_triplet(dataclasses.replace(TINY, epochs=2, patience=0, keep="last"), members=3)
    result = run_fit(data, "triplet", params)
    _, _, faces = data
    assert isinstance(result.model, EnsembleNet) and len(result.model.members) == 3
    # each member is exactly the single network its own seed trains on one thread (members train one thread each)
    torch.set_num_threads(1)
    for i, member in enumerate(result.model.members):
        alone = run_fit(data, "triplet", with_triplet(dataclasses.replace(params, seed=member_seed(params.seed, i)),
                                                      members=1))
        assert all(torch.equal(a, b) for a, b in zip(member.state_dict().values(), alone.model.state_dict().values()))
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
    assert len(result.train_seconds) == 2  # an ensemble's epoch: every member's epoch, added up


def test_fit_trains_with_the_objective_it_is_given(data):
    """Benchmarks swap in their own Objective through `objectives`; the pipeline's stays the default."""
    seen: list[str] = []

    class Recording(ContrastiveObjective):
        def train_loss(self, model, images, batch, augment, generator):
            seen.append(type(self).__name__)
            return super().train_loss(model, images, batch, augment, generator)

    params = dataclasses.replace(TINY, epochs=1)
    swapped = run_fit(data, "contrastive", params, objectives={**OBJECTIVES, "contrastive": Recording})
    assert seen and set(seen) == {"Recording"}
    calls = len(seen)
    plain = run_fit(data, "contrastive", params)
    assert len(seen) == calls  # the default run used the pipeline's own objective
    assert plain.history["train_loss"].tolist() == swapped.history["train_loss"].tolist()


def test_an_ensemble_epoch_adds_the_seconds_of_the_members_that_ran_it(data):
    """A member that stopped early adds nothing to the later epochs; no member's epoch is dropped."""
    single = run_fit(data, "triplet", with_triplet(dataclasses.replace(TINY, epochs=1, patience=0), members=1))
    results = [dataclasses.replace(single, train_seconds=seconds) for seconds in ([1.0, 2.0], [10.0], [100.0, 200.0])]
    joined = join_members("triplet", with_triplet(TINY, members=3), results)
    assert joined.train_seconds == [111.0, 202.0]
    assert isinstance(joined, TrainResult)


@pytest.mark.parametrize("model_name, params", [
    ("contrastive", dataclasses.replace(TINY, augment=True, normalization="per_image")),
    ("triplet", with_triplet(TINY, mining="semihard", people_per_batch=4, faces_per_person=3)),
], ids=["contrastive-csv", "triplet-pk"])
def test_fit_on_memory_mapped_faces_trains_the_same_model(data, tmp_path, model_name, params):
    from facesim.core.data import FacePixels, FaceSet

    faces_dir, tables, _ = data
    kw = dict(log=quiet)
    in_memory = FaceSet.load(faces_dir, _faces_of(tables), params.preprocess())
    mapped = FaceSet.load(faces_dir, _faces_of(tables), params.preprocess(), memory_limit_mb=0,
                          cache_dir=tmp_path)
    assert isinstance(mapped.tensor, FacePixels)
    first = fit(model_name, params, tables, in_memory, **kw)
    second = fit(model_name, params, tables, mapped, **kw)
    pd.testing.assert_frame_equal(first.history.drop(columns="seconds"), second.history.drop(columns="seconds"),
                                  check_exact=True)
    for name, tensor in first.checkpoint["model_state"].items():
        assert torch.equal(tensor, second.checkpoint["model_state"][name]), name


def _faces_of(tables) -> list[str]:
    return sorted({path for table in tables.values() for column in ("image1", "image2", "anchor", "positive",
                                                                    "negative") if column in table
                   for path in table[column]})


@pytest.mark.parametrize("model_name", ["contrastive", "triplet"])
def test_without_validation_the_same_model_trains(data, monkeypatch, model_name):
    params = dataclasses.replace(TINY, epochs=3, patience=0, keep="last")
    validated_fit = run_fit(data, model_name, params)
    monkeypatch.setattr(Objective, "validate", lambda self, embeddings: pytest.fail("validated"))
    skipped = run_fit(data, model_name, params, validate=False)
    _, _, faces = data
    assert torch.equal(embed_all(skipped.model, faces.tensor), embed_all(validated_fit.model, faces.tensor))
    assert skipped.history["epoch"].tolist() == [1, 2, 3]
    assert skipped.history["train_loss"].tolist() == validated_fit.history["train_loss"].tolist()
    assert skipped.history[["val_loss", "val_roc_auc"]].isna().all().all()


@pytest.mark.parametrize("changes", [{"patience": 2}, {"keep": "best"}])
def test_early_stopping_and_keep_best_validate_anyway(data, monkeypatch, changes):
    seen = scripted_validation(monkeypatch, [3.0, 2.0, 1.0])
    result = run_fit(data, "contrastive", dataclasses.replace(TINY, epochs=3, **changes), validate=False)
    assert len(seen) == 3 and result.history["val_loss"].tolist() == [3.0, 2.0, 1.0]


def test_members_side_by_side_give_the_bits_of_members_in_turn(data):
    """Two threads train two members at once, one thread each; one thread trains them in turn: the same numbers."""
    params = dataclasses.replace(TINY, epochs=2, patience=0, keep="last")
    params = dataclasses.replace(params, contrastive=dataclasses.replace(params.contrastive, members=3))
    torch.set_num_threads(2)
    side_by_side = run_fit(data, "contrastive", params)
    assert torch.get_num_threads() == 2  # put back after training
    torch.set_num_threads(1)
    in_turn = run_fit(data, "contrastive", params)
    first, second = side_by_side.model.state_dict(), in_turn.model.state_dict()
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    pd.testing.assert_frame_equal(side_by_side.history.drop(columns="seconds"), in_turn.history.drop(columns="seconds"))


def test_a_failing_member_stops_the_ensemble_with_its_error(data, monkeypatch):
    params = dataclasses.replace(TINY, epochs=50, patience=0, keep="last")
    params = dataclasses.replace(params, contrastive=dataclasses.replace(params.contrastive, members=2))
    original, calls = ContrastiveObjective.train_loss, []

    def train_loss(self, *args, **kwargs):  # the member whose thread comes second fails at its first step
        calls.append(self)
        if self is not calls[0]:
            raise FloatingPointError("member 2 diverged")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ContrastiveObjective, "train_loss", train_loss)
    torch.set_num_threads(2)
    with pytest.raises(FloatingPointError, match="member 2 diverged"):
        run_fit(data, "contrastive", params)
    # the other member gave up at its next step rather than training its 50 epochs
    steps_per_epoch = sum(1 for _ in calls[0].batches(torch.Generator().manual_seed(0)))
    assert sum(1 for objective in calls if objective is calls[0]) < 10 * steps_per_epoch
    assert torch.get_num_threads() == 2
