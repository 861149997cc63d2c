"""Training one network: its start (seeded weights, optimiser, schedule, its own random stream), its epochs,
each epoch's validation and logging, and the epoch kept as its checkpoint. `facesim.training.fit` trains a model
with it: one network, or an ensemble's members.

A batch is a tensor of row numbers (`facesim.training.objectives`); the images
it needs are embedded once each, augmented as a whole batch. Validation runs
after every epoch; the best epoch's weights are kept (or the last epoch's,
`keep: last`) and training stops after `patience` epochs without a better
validation loss (never, with patience 0).
"""

from __future__ import annotations

import copy
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import pandas as pd
import torch

from facesim.core.data import Augment, FaceSet
from facesim.core.models import EmbeddingNet, EnsembleNet, ModelConfig, build_embedding_net
from facesim.core.params import ParamsError
from facesim.mlops.runs import Run
from facesim.training.distributed import World, rank_device, training_forward
from facesim.training.objectives import Batch, Objective
from facesim.training.side_by_side import Stopped
from facesim.training.train_params import TrainParams

HISTORY_COLUMNS = ["epoch", "train_loss", "val_loss", "val_roc_auc", "seconds"]

Log = Callable[[str], None]
# Called after every training step with the objective and the batch (benchmarks count with it).
OnStep = Callable[[Objective, Batch], None]


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


@dataclass
class Network:
    """One network and what trains it: built by `start_network` in the order that fixes its random numbers."""

    model: EmbeddingNet
    config: ModelConfig  # the network's own shape (members=1)
    objective: Objective
    forward: torch.nn.Module  # what embeds a training batch: the model itself (one process, float32), else through
    # autocast and DDP (`training_forward`)
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler  # fp16's loss scaling; disabled (a no-op) otherwise
    scheduler: torch.optim.lr_scheduler.LRScheduler | None  # cosine, or None for a constant learning rate
    generator: torch.Generator  # batch order and augmentation


def start_network(model_name: str, objective_class: type[Objective], params: TrainParams,
                   tables: dict[str, pd.DataFrame], faces: FaceSet, world: World) -> Network:
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
    return Network(model=model, config=config, objective=objective, forward=forward, optimizer=optimizer,
                    scaler=scaler, scheduler=scheduler, generator=torch.Generator().manual_seed(params.seed))


def train_epoch(net: Network, images: torch.Tensor, augment: Augment | None,
                 on_step: OnStep | None, halt: threading.Event | None = None) -> tuple[float, int]:
    """One pass over the objective's batches, a step each: (the loss summed over the epoch's pairs, triplets or
    faces, their number). `halt`, once set, ends it with `Stopped` (another member of the ensemble failed)."""
    net.forward.train()
    total, count = 0.0, 0
    for batch in net.objective.batches(net.generator):
        if halt is not None and halt.is_set():
            raise Stopped("stopped: another member of the ensemble did not finish")
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


def snapshot(net: Network, epoch: int, val_loss: float) -> dict[str, Any]:
    """The weights and optimiser state of this epoch, copied: what the checkpoint keeps."""
    return {"val_loss": val_loss, "epoch": epoch, "model_state": copy.deepcopy(net.model.state_dict()),
            "optimizer_state": copy.deepcopy(net.optimizer.state_dict())}


def train_network(model_name: str, params: TrainParams, net: Network, faces: FaceSet, run: Run, log: Log,
                   on_step: OnStep | None, member: int | None, world: World, validate: bool,
                   halt: threading.Event | None = None) -> TrainResult:
    """The epochs of one started network (`start_network`), its validation, logging and checkpoint."""
    validate = validate or params.patience > 0 or params.keep == "best"  # early stopping and keep: best read it
    prefix, label = (f"member{member}.", f"train@{model_name} member {member}") if member else ("", f"train@{model_name}")
    max_epochs, augment, images = params.max_epochs(model_name), params.augmentation_applied(), faces.tensor
    history: list[dict[str, float]] = []
    train_seconds: list[float] = []
    stopping = EarlyStopping(params.patience)
    kept: dict[str, Any] = {}  # the checkpointed epoch: the best one (keep: best) or the last (keep: last)
    for epoch in range(1, max_epochs + 1):
        started = time.perf_counter()
        total, count = train_epoch(net, images, augment, on_step, halt)
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
            kept = snapshot(net, epoch, scores["val_loss"])
        if stop:
            log(f"{label}: no better validation loss for {params.patience} epochs; stopping")
            break
    return network_result(model_name, params, net, kept, history, max_epochs, train_seconds)


def network_result(model_name: str, params: TrainParams, net: Network, kept: dict[str, Any],
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
