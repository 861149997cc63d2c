"""facesim.training.distributed: several training processes (DDP on gloo) and mixed precision.

The 2-process tests start `tests/training/ddp_worker.py` under torchrun on the tiny
faces (two gloo processes, one thread each, about 10 s) and compare with one process in this one.
Tolerance: two processes compute one process's steps with float sums in another order, so the
per-epoch losses agree to 1e-5 (relative) and the weights to 1e-5 after 3 epochs; except the
contrastive model's last bias, on which a contrastive loss does not depend (it cancels in every
difference of two embeddings): its gradient is float noise that Adam scales up to steps of lr,
so it differs by up to 3 epochs x lr, and every distance between faces still agrees.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.distributed as dist
from torch import nn

from helpers import REPO, TINY_RECIPE, model_config, tiny_fit_params, tiny_training_data, write_tiny_samples
from ddp_worker import CASES, train_cases
from facesim.core.losses import pairwise_euclidean
from facesim.core.embedding import embed_all
from facesim.core.models import build_embedding_net
from facesim.core.params import ParamsError
from facesim.training.distributed import (
    SINGLE,
    MixedPrecision,
    SyncedBatchNorm2d,
    World,
    process_group,
    relaunch_if_needed,
    shard_bounds,
    torchrun_command,
    training_forward,
    with_synced_batchnorm,
)
from facesim.training.fit import fit
from facesim.training.train_params import merge

pytestmark = pytest.mark.usefixtures("torch_global_state")

WORKER = Path(__file__).with_name("ddp_worker.py")
RTOL = 1e-5  # per-epoch losses, 2 processes against 1
ATOL_WEIGHTS = 1e-5
UNCONSTRAINED = {"contrastive": ("backbone.head.bias",), "triplet": ()}  # see the module doc


def torchrun(out: Path, processes: int = 2) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    out.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(torchrun_command(processes, [str(WORKER), str(out)]), env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return done


def load(out: Path, case: str, rank: int) -> dict:
    return torch.load(out / f"{case}-rank{rank}.pt", weights_only=False)


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder of one 2-process run of every case (and of train_and_save)."""
    out = tmp_path_factory.mktemp("ddp")
    torchrun(out)
    return out


@pytest.fixture(scope="module")
def one_process(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    torch.set_num_threads(1)
    return train_cases(tmp_path_factory.mktemp("one"))


# ---- two processes train one process's model ---------------------------------------------------------------


@pytest.mark.parametrize("case", list(CASES))
def test_two_processes_train_the_model_of_one(two_processes, one_process, case):
    model = CASES[case][0]
    two, one = load(two_processes, case, 0), one_process[case]
    columns = ["train_loss", "val_loss", "val_roc_auc"]
    pd.testing.assert_frame_equal(two["history"][columns], one["history"][columns], rtol=RTOL, atol=0)
    for key, weights in one["state"].items():
        if key not in UNCONSTRAINED[model]:
            torch.testing.assert_close(two["state"][key], weights, rtol=0, atol=ATOL_WEIGHTS, msg=key)
    # every distance between the validation faces (what the model is for) agrees too
    faces = torch.randn(24, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    distances = []
    for state in (two["state"], one["state"]):
        net = build_embedding_net(CASES[case][1].model_config(model))
        net.load_state_dict(state)
        distances.append(pairwise_euclidean(embed_all(net, faces)))
    torch.testing.assert_close(distances[0], distances[1], rtol=1e-4, atol=1e-5)
    assert two["params"]["processes"] == 2 and one["params"]["processes"] == 1


@pytest.mark.parametrize("case", list(CASES))
def test_every_process_ends_with_the_same_model(two_processes, case):
    rank0, rank1 = load(two_processes, case, 0), load(two_processes, case, 1)
    assert all(torch.equal(rank0["state"][k], rank1["state"][k]) for k in rank0["state"])
    pd.testing.assert_frame_equal(rank0["history"].drop(columns="seconds"), rank1["history"].drop(columns="seconds"),
                                  check_exact=True)


def test_only_rank_0_writes_outputs_and_logs(two_processes):
    assert (two_processes / "written-rank0" / "model.pt").exists()
    assert (two_processes / "written-rank0" / "history.csv").exists()
    assert not (two_processes / "written-rank1").exists()
    metrics, models, artifacts = (two_processes / "logged-rank0.txt").read_text().split()
    assert int(metrics) > 0 and int(models) == 1 and int(artifacts) == 1
    assert (two_processes / "logged-rank1.txt").read_text().split() == ["0", "0", "0"]


@pytest.mark.integration
def test_two_process_runs_are_reproducible(two_processes, tmp_path):
    torchrun(tmp_path)
    for case in CASES:
        first, again = load(two_processes, case, 0), load(tmp_path, case, 0)
        assert all(torch.equal(first["state"][k], again["state"][k]) for k in first["state"]), case
        pd.testing.assert_frame_equal(first["history"].drop(columns="seconds"),
                                      again["history"].drop(columns="seconds"), check_exact=True)


# ---- the parts ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n, size", [(1, 1), (7, 2), (8, 2), (128, 3), (5, 5)])
def test_shard_bounds_cover_the_batch_in_near_equal_chunks(n, size):
    bounds = shard_bounds(n, World(rank=0, size=size))
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
    lengths = [stop - start for start, stop in bounds]
    assert max(lengths) - min(lengths) <= 1 and lengths == sorted(lengths, reverse=True)


def test_one_process_outside_torchrun_needs_no_group(monkeypatch):
    for name in ("LOCAL_RANK", "WORLD_SIZE", "RANK"):
        monkeypatch.delenv(name, raising=False)
    with process_group(1, torch.device("cpu")) as world:
        assert world == SINGLE and world.is_main and not dist.is_initialized()
        assert world.agree(True) and not world.agree(False)
    with pytest.raises(ParamsError, match="train.processes"), process_group(2, torch.device("cpu")):
        pass


def test_processes_must_match_torchruns_count(monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    with pytest.raises(ParamsError, match=r"train.processes is 2 but torchrun started 1"):
        with process_group(2, torch.device("cpu")):
            pass
    relaunch_if_needed(2)  # already under torchrun: returns, starts nothing


def test_relaunch_runs_the_same_script_under_torchrun(monkeypatch):
    for name in ("LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    started = []
    monkeypatch.setattr(os, "execv", lambda path, argv: started.append((path, argv)))
    relaunch_if_needed(1, ["stages/train.py", "--model", "triplet"])
    assert started == []
    relaunch_if_needed(3, ["stages/train.py", "--model", "triplet"])
    assert started == [(sys.executable, [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                         "--nproc-per-node=3", "stages/train.py", "--model", "triplet"])]


def test_one_process_in_float32_trains_the_network_itself():
    """The loop then runs exactly the operations it ran before there were several processes."""
    net = nn.Linear(2, 2)
    assert training_forward(net, "fp32", torch.device("cpu"), SINGLE) is net


def test_synced_batchnorm_copies_share_the_weights_and_leave_the_network_alone():
    net = build_embedding_net(model_config(embedding_dim=8, input_height=16, input_width=16, channels=(4, 8)))
    synced = with_synced_batchnorm(net)
    assert not any(isinstance(m, SyncedBatchNorm2d) for m in net.modules())
    assert sum(isinstance(m, SyncedBatchNorm2d) for m in synced.modules()) == 2
    assert [id(p) for p in synced.parameters()] == [id(p) for p in net.parameters()]
    assert [id(b) for b in synced.buffers()] == [id(b) for b in net.buffers()]


def test_synced_batchnorm_in_one_process_is_batchnorm(tmp_path):
    """In a group of one, SyncedBatchNorm2d computes BatchNorm2d's outputs, gradients and running statistics."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        plain = nn.BatchNorm2d(3)
        with torch.no_grad():
            plain.weight.uniform_(0.5, 1.5)
            plain.bias.uniform_(-0.5, 0.5)
        synced = with_synced_batchnorm(nn.BatchNorm2d(3))
        synced.load_state_dict(plain.state_dict())
        x = (torch.randn(6, 3, 5, 4) * 3 + 1).requires_grad_()
        x2 = x.detach().clone().requires_grad_()
        out, out2 = plain(x), synced(x2)
        torch.testing.assert_close(out2, out, rtol=1e-5, atol=1e-5)
        (out * torch.arange(out.numel()).view_as(out).sin()).sum().backward()
        (out2 * torch.arange(out.numel()).view_as(out).sin()).sum().backward()
        torch.testing.assert_close(x2.grad, x.grad, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(synced.weight.grad, plain.weight.grad, rtol=1e-4, atol=1e-5)
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            torch.testing.assert_close(getattr(synced, name), getattr(plain, name), rtol=1e-5, atol=1e-6)
        synced.eval(), plain.eval()
        torch.testing.assert_close(synced(x), plain(x))
    finally:
        dist.destroy_process_group()


# ---- mixed precision ------------------------------------------------------------------------------------


def test_bf16_embeds_under_autocast_and_returns_float32():
    net = build_embedding_net(model_config(embedding_dim=8, input_height=16, input_width=16, channels=(4, 8))).train()
    forward = training_forward(net, "bf16", torch.device("cpu"), SINGLE)
    assert isinstance(forward, MixedPrecision) and forward.network is net
    seen = []
    net.backbone.head.register_forward_hook(lambda module, args, output: seen.append(output.dtype))
    out = forward(torch.randn(4, 1, 16, 16))
    assert seen == [torch.bfloat16] and out.dtype == torch.float32


def test_bf16_training_on_a_cpu_stays_close_to_float32(tmp_path):
    torch.set_num_threads(1)
    _, tables, faces = tiny_training_data(tmp_path)
    params = tiny_fit_params(epochs=2)
    runs = {p: fit("contrastive", dataclasses.replace(params, precision=p), tables, faces, log=lambda line: None)
            for p in ("fp32", "bf16")}
    assert runs["bf16"].checkpoint["params"]["precision"] == "bf16"
    assert all(v.dtype in (torch.float32, torch.int64) for v in runs["bf16"].checkpoint["model_state"].values())
    assert not runs["bf16"].history.equals(runs["fp32"].history)  # autocast ran
    pd.testing.assert_frame_equal(runs["bf16"].history[["train_loss", "val_loss"]],
                                  runs["fp32"].history[["train_loss", "val_loss"]], rtol=1e-2)


# ---- the stage, started plainly with train.processes: 2 -----------------------------------------------------


@pytest.mark.integration
def test_the_train_stage_starts_itself_under_torchrun(tmp_path):
    """stages/train.py with train.processes 2 runs two processes; one MLflow run, one set of outputs."""
    import yaml

    faces = tmp_path / "faces"
    _, _, _ = tiny_training_data(tmp_path)
    samples = write_tiny_samples(faces, tmp_path / "samples")
    train = merge(yaml.safe_load((REPO / "params.yaml").read_text())["train"], {
        **TINY_RECIPE, "device": "cpu", "processes": 2, "input_height": 16, "input_width": 16,
        "embedding_dim": 8, "augment": True, "epochs": 2, "batch_size": 16,
        "contrastive": {**TINY_RECIPE["contrastive"], "mining": "all", "people_per_batch": 4}})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"train": train, "runtime": {"threads": 1},
                                                          "backbones": {"compact": {"backbone": "compact"}}}))
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    done = subprocess.run(
        [sys.executable, str(REPO / "stages" / "train.py"), "--backbone", "compact", "--model", "contrastive",
         "--faces", str(faces), "--pairs-train", str(samples["pairs"]["train"]),
         "--pairs-val", str(samples["pairs"]["val"]), "--triplets-train", str(samples["triplets"]["train"]),
         "--triplets-val", str(samples["triplets"]["val"]), "--checkpoint", "models/contrastive.pt",
         "--history", "history.csv"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    assert done.stdout.count("train@compact-contrastive: kept epoch") == 1
    checkpoint = torch.load(tmp_path / "models" / "contrastive.pt", weights_only=False)
    assert checkpoint["params"]["processes"] == 2
    import mlflow

    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    runs = mlflow.search_runs(experiment_names=["facesim"])
    assert len(runs) == 1 and runs["params.processes"].iloc[0] == "2"
