"""The training loop: one network of either model, or an ensemble of them, on faces in memory.

Each network trains as `facesim.training.network` says (batches, validation, the epoch kept).

An ensemble's members train side by side on the CPU, one thread each, as many at a
time as torch has threads (`_fit_side_by_side`, `facesim.training.side_by_side`): small networks gain little from a
second thread, so two members at once are ~1.5x faster on 2 cores, and each member's
numbers are its single thread's whatever the machine.

With `world` (several processes, `facesim.training.distributed`) each process runs
this same loop on the same batches, embedding its share of each batch's faces; only
rank 0 logs. With `train.precision` bf16 or fp16 the network's forward pass runs
under autocast (fp16 with a loss scaler); validation always runs in float32.
"""

from __future__ import annotations

import functools
import sys
import threading
from collections.abc import Mapping
from dataclasses import replace

import numpy as np
import pandas as pd

from facesim.core.data import FaceSet
from facesim.core.models import build_embedding_net
from facesim.mlops.runs import NULL_RUN, Run
from facesim.training.distributed import SINGLE, World
from facesim.training.network import (HISTORY_COLUMNS, Log, OnStep, TrainResult, resolve_device, start_network,
                                      train_network)
from facesim.training.objectives import OBJECTIVES, Objective
from facesim.training.side_by_side import LockedRun, locked, run_side_by_side
from facesim.training.train_params import TrainParams


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _silent(_line: str) -> None:
    pass


def member_seed(seed: int, member: int) -> int:
    """The training seed of ensemble member `member` (0-based): the first keeps `seed`, the others lie
    far apart, so that the members of nearby seeds (cv.seeds 1, 2, 3) share none."""
    return seed + 1_000_003 * member


def fit(
    model_name: str,
    params: TrainParams,
    tables: dict[str, pd.DataFrame],
    faces: FaceSet,
    run: Run = NULL_RUN,
    log: Log = _to_stderr,
    on_step: OnStep | None = None,
    objectives: Mapping[str, type[Objective]] = OBJECTIVES,
    world: World = SINGLE,
    validate: bool = True,
) -> TrainResult:
    """Train `model_name` ('contrastive' or 'triplet') on faces already in memory: one network, or
    `params.<model>.members` networks, each with its own seed, joined into one `EnsembleNet` (a member's
    per-epoch MLflow metrics are then `member<k>.train_loss`, ...): on the CPU in one process side by side
    (`_fit_side_by_side`), else one after the other.
    `objectives` maps a model name to its Objective class (benchmarks swap one in). `world`: this
    process's place among the processes training together (each returns the same result; only
    rank 0 logs and reports to `run`). `validate` False skips each epoch's validation (the history's val_loss and
    val_roc_auc are then NaN) where nothing reads it: where patience or keep: best need it, it runs anyway."""
    members = params.loss_params(model_name).members  # refuses an unknown model name
    objective = objectives[model_name]
    if not world.is_main:
        run, log = NULL_RUN, _silent
    if members == 1:
        return _fit_network(model_name, objective, params, tables, faces, run, log, on_step, world=world, validate=validate)
    member_params = [replace(params, seed=member_seed(params.seed, i)) for i in range(members)]
    if world is not SINGLE or resolve_device(params.device).type != "cpu":
        results = [_fit_network(model_name, objective, p, tables, faces, run, log, on_step, member=i + 1, world=world,
                                validate=validate) for i, p in enumerate(member_params)]
    else:
        results = _fit_side_by_side(model_name, objective, member_params, tables, faces, run, log, on_step, validate)
    return join_members(model_name, params, results)


def _fit_side_by_side(model_name: str, objective_class: type[Objective], member_params: list[TrainParams],
                      tables: dict[str, pd.DataFrame], faces: FaceSet, run: Run, log: Log, on_step: OnStep | None,
                      validate: bool) -> list[TrainResult]:
    """An ensemble's members on the CPU, one thread each, side by side (`facesim.training.side_by_side`). The
    networks are built first, one after the other: building seeds torch's global stream, training reads only
    each member's own generator."""
    nets = [start_network(model_name, objective_class, p, tables, faces, SINGLE) for p in member_params]
    lock = threading.Lock()
    shared_run, shared_on_step = LockedRun(run, lock), (None if on_step is None else locked(on_step, lock))
    return run_side_by_side([functools.partial(train_network, model_name, p, net, faces, shared_run, log,
                                               shared_on_step, i + 1, SINGLE, validate)
                             for i, (p, net) in enumerate(zip(member_params, nets))])


def join_members(model_name: str, params: TrainParams, results: list[TrainResult]) -> TrainResult:
    """One ensemble from its trained members: their weights in one network, their histories averaged
    epoch by epoch, their training seconds added up epoch by epoch (an ensemble epoch is every member's
    epoch; a member that stopped early adds nothing to the later ones). Added up, they are the time of members
    trained one after the other; side by side their epochs overlap and the sum exceeds the wall clock, which is
    what a rate needs (benchmarks/measure_ours.py times it)."""
    ensemble = build_embedding_net(params.model_config(model_name), load_pretrained=False)  # members' weights next
    for member, result in zip(ensemble.members, results):
        member.load_state_dict(result.model.state_dict())
    ensemble.to(next(results[0].model.parameters()).device).eval()
    epochs = [r.kept_epoch for r in results]
    history = pd.concat([r.history for r in results]).groupby("epoch", as_index=False).mean()[HISTORY_COLUMNS]
    checkpoint = {
        **results[0].checkpoint,
        "model_state": ensemble.state_dict(),
        "optimizer_state": [r.checkpoint["optimizer_state"] for r in results],
        "epoch": max(epochs),
        "member_epochs": epochs,
        "kept_val_loss": float(np.mean([r.kept_val_loss for r in results])),
        "model_config": params.model_config(model_name).to_dict(),
        "params": params.resolved(model_name),
    }
    longest = max(len(r.train_seconds) for r in results)
    return TrainResult(
        model=ensemble,
        checkpoint=checkpoint,
        history=history,
        kept_epoch=checkpoint["epoch"],
        kept_val_loss=checkpoint["kept_val_loss"],
        stopped_early=any(r.stopped_early for r in results),
        train_seconds=[sum(r.train_seconds[e] for r in results if e < len(r.train_seconds)) for e in range(longest)],
    )


def _fit_network(
    model_name: str,
    objective_class: type[Objective],
    params: TrainParams,
    tables: dict[str, pd.DataFrame],
    faces: FaceSet,
    run: Run,
    log: Log,
    on_step: OnStep | None,
    member: int | None = None,
    world: World = SINGLE,
    validate: bool = True,
) -> TrainResult:
    """Train one network of `model_name` with `params.seed`; `member` numbers it within an ensemble."""
    net = start_network(model_name, objective_class, params, tables, faces, world)
    return train_network(model_name, params, net, faces, run, log, on_step, member, world, validate)
