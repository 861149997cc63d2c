"""The training loop: one network of either model, or an ensemble of them, on faces in memory.

A batch is a tensor of row numbers (`facesim.training.objectives`); the images
it needs are embedded once each, augmented as a whole batch. Validation runs
after every epoch; the best epoch's weights are kept (or the last epoch's,
`keep: last`) and training stops after `patience` epochs without a better
validation loss (never, with patience 0).

With `world` (several processes, `facesim.training.distributed`) each process runs
this same loop on the same batches, embedding its share of each batch's faces; only
rank 0 logs. With `train.precision` bf16 or fp16 the network's forward pass runs
under autocast (fp16 with a loss scaler); validation always runs in float32.
"""

from __future__ import annotations

import copy
import math
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd
import torch

from facesim.core.data import Augment, FaceSet
from facesim.core.models import EmbeddingNet, EnsembleNet, ModelConfig, build_embedding_net
from facesim.core.params import ParamsError
from facesim.mlops.runs import NULL_RUN, Run
from facesim.training.distributed import SINGLE, World, rank_device, training_forward
from facesim.training.objectives import OBJECTIVES, Batch, Objective
from facesim.training.train_params import TrainParams

HISTORY_COLUMNS = ["epoch", "train_loss", "val_loss", "val_roc_auc", "seconds"]

Log = Callable[[str], None]
# Called after every training step with the objective and the batch (benchmarks count with it).
OnStep = Callable[[Objective, Batch], None]


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _silent(_line: str) -> None:
    pass


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ParamsError("train.device is 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    """Same params, same machine, same numbers."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # needed by deterministic cuBLAS
    torch.manual_seed(seed)
    torch.set_deterministic_debug_mode("warn")  # use_deterministic_algorithms(True, warn_only=True), no inductor import
    torch.backends.cudnn.benchmark = False


@dataclass
class TrainResult:
    model: EmbeddingNet | EnsembleNet
    checkpoint: dict[str, Any]
    history: pd.DataFrame
    kept_epoch: int
    kept_val_loss: float
    stopped_early: bool
    # seconds of the training steps of each epoch (validation excluded): for benchmarks
    train_seconds: list[float] = field(default_factory=list)


@dataclass
class EarlyStopping:
    """Counts epochs without a better validation loss; `patience` 0 never stops."""

    patience: int
    best: float = math.inf
    waited: int = 0

    def update(self, val_loss: float) -> tuple[bool, bool]:
        """(improved, stop) after an epoch with this validation loss."""
        if val_loss < self.best:
            self.best, self.waited = val_loss, 0
            return True, False
        self.waited += 1
        return False, self.patience > 0 and self.waited >= self.patience


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
    `params.<model>.members` networks one after the other, each with its own seed, joined into one
    `EnsembleNet` (a member's per-epoch MLflow metrics are then `member<k>.train_loss`, ...).
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
    results = [_fit_network(model_name, objective, replace(params, seed=member_seed(params.seed, i)), tables, faces,
                            run, log, on_step, member=i + 1, world=world, validate=validate)
               for i in range(members)]
    return join_members(model_name, params, results)


def join_members(model_name: str, params: TrainParams, results: list[TrainResult]) -> TrainResult:
    """One ensemble from its trained members: their weights in one network, their histories averaged
    epoch by epoch, their training seconds added up epoch by epoch (an ensemble epoch is every member's
    epoch; a member that stopped early adds nothing to the later ones)."""
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


@dataclass
class _Network:
    """One network and what trains it: built by `_start_network` in the order that fixes its random numbers."""

    model: EmbeddingNet
    config: ModelConfig  # the network's own shape (members=1)
    objective: Objective
    forward: torch.nn.Module  # what embeds a training batch: the model itself (one process, float32), else through
    # autocast and DDP (`training_forward`)
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler  # fp16's loss scaling; disabled (a no-op) otherwise
    scheduler: torch.optim.lr_scheduler.LRScheduler | None  # cosine, or None for a constant learning rate
    generator: torch.Generator  # batch order and augmentation


def _start_network(model_name: str, objective_class: type[Objective], params: TrainParams,
                   tables: dict[str, pd.DataFrame], faces: FaceSet, world: World) -> _Network:
    """Seed, then build the objective, the network, its optimiser and schedule, in this order: the network's
    initial weights come from the seeded global stream, its batches and augmentation from its own generator."""
    seed_everything(params.seed)
    device = rank_device(resolve_device(params.device), world)
    params.check_precision_on(device.type)
    objective = objective_class(params, tables, faces)
    config = replace(params.model_config(model_name), members=1)
    model = build_embedding_net(config).to(device)
    forward = training_forward(model, params.precision, device, world)
    scaler = torch.amp.GradScaler(device.type, enabled=params.precision == "fp16")
    # fused: one kernel whose square root is exact; the default (foreach) one differs by CPU model
    optimizer = torch.optim.Adam(model.parameters(), lr=params.lr, weight_decay=params.weight_decay, fused=True)
    scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=params.max_epochs(model_name))
                 if params.lr_schedule == "cosine" else None)
    return _Network(model=model, config=config, objective=objective, forward=forward, optimizer=optimizer,
                    scaler=scaler, scheduler=scheduler, generator=torch.Generator().manual_seed(params.seed))


def _train_epoch(net: _Network, images: torch.Tensor, augment: Augment | None,
                 on_step: OnStep | None) -> tuple[float, int]:
    """One pass over the objective's batches, a step each: (the loss summed over the epoch's pairs, triplets or
    faces, their number)."""
    net.forward.train()
    total, count = 0.0, 0
    for batch in net.objective.batches(net.generator):
        loss = net.objective.train_loss(net.forward, images, batch, augment, net.generator)
        net.optimizer.zero_grad(set_to_none=True)
        net.scaler.scale(loss).backward()
        net.scaler.step(net.optimizer)
        net.scaler.update()
        n = net.objective.batch_size(batch)
        total, count = total + loss.item() * n, count + n
        if on_step is not None:
            on_step(net.objective, batch)
    return total, count


def _snapshot(net: _Network, epoch: int, val_loss: float) -> dict[str, Any]:
    """The weights and optimiser state of this epoch, copied: what the checkpoint keeps."""
    return {"val_loss": val_loss, "epoch": epoch, "model_state": copy.deepcopy(net.model.state_dict()),
            "optimizer_state": copy.deepcopy(net.optimizer.state_dict())}


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
    validate = validate or params.patience > 0 or params.keep == "best"  # early stopping and keep: best read it
    net = _start_network(model_name, objective_class, params, tables, faces, world)
    prefix, label = (f"member{member}.", f"train@{model_name} member {member}") if member else ("", f"train@{model_name}")
    max_epochs, augment, images = params.max_epochs(model_name), params.augmentation_applied(), faces.tensor
    history: list[dict[str, float]] = []
    train_seconds: list[float] = []
    stopping = EarlyStopping(params.patience)
    kept: dict[str, Any] = {}  # the checkpointed epoch: the best one (keep: best) or the last (keep: last)
    for epoch in range(1, max_epochs + 1):
        started = time.perf_counter()
        total, count = _train_epoch(net, images, augment, on_step)
        train_seconds.append(time.perf_counter() - started)
        if net.scheduler is not None:
            net.scheduler.step()
        if not math.isfinite(total):
            raise FloatingPointError(f"train@{model_name} diverged in epoch {epoch} (loss is {total}); "
                                     f"lower train.lr (now {params.lr})")
        scores = (net.objective.validate(net.objective.validation_embeddings(net.model, images)) if validate
                  else {"val_loss": math.nan, "val_roc_auc": math.nan})
        row = {"epoch": epoch, "train_loss": total / count, **scores, "seconds": time.perf_counter() - started}
        history.append(row)
        run.log_metrics({f"{prefix}{k}": v for k, v in row.items() if k != "epoch"}, step=epoch)
        improved, stop = stopping.update(scores["val_loss"])
        stop = world.agree(stop)  # every process stops when rank 0 does
        log(f"{label} epoch {epoch:3d}/{max_epochs}  train_loss {row['train_loss']:.4f}  "
            f"val_loss {scores['val_loss']:.4f}  val_auc {scores['val_roc_auc']:.4f}  "
            f"{row['seconds']:.1f}s{'  *' if improved else ''}")
        # Checkpoint only when validation improves (keep: best), or once, at the end (keep: last).
        if (params.keep == "best" and improved) or (params.keep == "last" and (stop or epoch == max_epochs)):
            kept = _snapshot(net, epoch, scores["val_loss"])
        if stop:
            log(f"{label}: no better validation loss for {params.patience} epochs; stopping")
            break
    return _network_result(model_name, params, net, kept, history, max_epochs, train_seconds)


def _network_result(model_name: str, params: TrainParams, net: _Network, kept: dict[str, Any],
                    history: list[dict[str, float]], max_epochs: int, train_seconds: list[float]) -> TrainResult:
    """The trained network with the kept epoch's weights, in eval mode, and its checkpoint and history."""
    net.model.load_state_dict(kept["model_state"])
    net.model.eval()
    checkpoint = {
        "model_name": model_name,
        "model_state": kept["model_state"],
        "optimizer_state": kept["optimizer_state"],
        "epoch": kept["epoch"],
        "kept_val_loss": kept["val_loss"],
        "model_config": net.config.to_dict(),
        "preprocess": params.preprocess().to_dict(),
        "params": params.resolved(model_name),
    }
    return TrainResult(
        model=net.model,
        checkpoint=checkpoint,
        history=pd.DataFrame(history, columns=HISTORY_COLUMNS),
        kept_epoch=kept["epoch"],
        kept_val_loss=kept["val_loss"],
        stopped_early=len(history) < max_epochs,
        train_seconds=train_seconds,
    )
