"""Stage `train`: one loop for both Siamese models (contrastive pairs, triplets).

Faces are decoded once into a tensor (`FaceSet`); a batch is a tensor of row
numbers, the images it needs are embedded once each, augmented as a whole
batch. Validation runs after every epoch; the best epoch's weights are kept
(or the last epoch's, `keep: last`) and training stops after `patience`
epochs without a better validation loss (never, with patience 0).
"""

from __future__ import annotations

import copy
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch

from facesim.atomic import staged_outputs
from facesim.data import Augment, FaceSet, Preprocess
from facesim.losses import BatchContrastiveLoss, BatchTripletLoss, ContrastiveLoss, TripletLoss, euclidean_distance
from facesim.metrics import roc_auc
from facesim.models import MODELS, EmbeddingNet, EnsembleNet, ModelConfig, build_embedding_net, embed_all
from facesim.params import ParamsError, require
from facesim.tracking import NULL_RUN, Run

HISTORY_COLUMNS = ["epoch", "train_loss", "val_loss", "val_roc_auc", "seconds"]


@dataclass(frozen=True)
class ContrastiveParams:
    margin: float = 2.0  # different people are pushed at least this far apart
    normalize: bool = False  # L2-normalise embeddings (distances then lie in [0, 2])
    epochs: int = 0  # this model's epoch limit; 0 = train.epochs
    # "none": the sampled pair CSV; "all": batches of people_per_batch x faces_per_person
    # faces and every pair among them (same-person and different-person terms weighed equally)
    mining: Literal["none", "all"] = "none"
    people_per_batch: int = 16
    faces_per_person: int = 4
    members: int = 1  # an ensemble of this many networks, each trained with its own seed


@dataclass(frozen=True)
class TripletParams:
    margin: float = 0.2  # d(anchor, negative) must exceed d(anchor, positive) by this much
    normalize: bool = True
    epochs: int = 0  # this model's epoch limit; 0 = train.epochs (P x K epochs are short: ~5 steps)
    # "none": the sampled triplet CSV; "semihard" / "hard" / "all": batches of
    # people_per_batch x faces_per_person faces with triplets mined in the batch (FaceNet).
    mining: Literal["none", "semihard", "hard", "all"] = "semihard"
    people_per_batch: int = 16
    faces_per_person: int = 4
    members: int = 1  # an ensemble of this many networks, each trained with its own seed


@dataclass(frozen=True)
class TrainParams:
    seed: int = 42  # model initialisation, batch order and augmentation
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: CUDA when present
    backbone: Literal["compact", "resnet18"] = "compact"
    embedding_dim: int = 64
    channels: tuple[int, ...] = (16, 32, 64, 128)  # compact backbone: width of each conv block
    convs_per_block: int = 1  # compact backbone: 3x3 convs per block
    input_height: int = 40
    input_width: int = 32
    pixel_mean: float = 0.5  # normalization "fixed": grey levels in [0, 1] minus this, over pixel_std
    pixel_std: float = 0.25
    # "per_image": each face to zero mean, unit variance (exposure and contrast of a photo drop out)
    normalization: Literal["fixed", "per_image"] = "fixed"
    trim_borders: bool = False  # cut uniform rows and columns at a picture's edges before resizing
    epochs: int = 30  # at most; early stopping may end sooner
    batch_size: int = 256  # pairs or triplets per step (P x K faces when mining)
    lr: float = 1e-3
    # "cosine": the learning rate falls from lr to 0 along half a cosine over the epoch limit
    lr_schedule: Literal["constant", "cosine"] = "constant"
    weight_decay: float = 0.0
    patience: int = 5  # epochs without a better validation loss before stopping; 0 = never stop early
    # which weights training ends with: the epoch of the best validation loss, or the last epoch
    # (with validation people unseen in training, their loss bottoms out long before training does)
    keep: Literal["best", "last"] = "best"
    augment: bool = True  # shifts, small rotations and zoom, mirror, brightness/contrast, blur
    augmentation: Augment = field(default_factory=Augment)  # how strong each change may be
    contrastive: ContrastiveParams = field(default_factory=ContrastiveParams)
    triplet: TripletParams = field(default_factory=TripletParams)

    def validate(self) -> None:
        require(self.epochs >= 1, f"train.epochs must be >= 1, got {self.epochs}")
        require(self.batch_size >= 2, f"train.batch_size must be >= 2, got {self.batch_size}")
        require(self.lr > 0, f"train.lr must be positive, got {self.lr}")
        require(self.lr_schedule in ("constant", "cosine"),
                f"train.lr_schedule must be 'constant' or 'cosine', got {self.lr_schedule!r}")
        require(self.weight_decay >= 0, f"train.weight_decay must be >= 0, got {self.weight_decay}")
        require(self.patience >= 0, f"train.patience must be >= 0 (0 = no early stopping), got {self.patience}")
        require(self.pixel_std > 0, f"train.pixel_std must be positive, got {self.pixel_std}")
        require(self.contrastive.margin > 0, f"train.contrastive.margin must be positive, got {self.contrastive.margin}")
        require(self.contrastive.epochs >= 0 and self.triplet.epochs >= 0,
                "train.contrastive.epochs and train.triplet.epochs must be >= 0 (0 = train.epochs)")
        require(self.triplet.margin > 0, f"train.triplet.margin must be positive, got {self.triplet.margin}")
        for name in MODELS:
            loss = self.loss_params(name)
            require(loss.people_per_batch >= 2,
                    f"train.{name}.people_per_batch must be >= 2, got {loss.people_per_batch}")
            require(loss.faces_per_person >= 2,
                    f"train.{name}.faces_per_person must be >= 2, got {loss.faces_per_person}")
            require(loss.members >= 1, f"train.{name}.members must be >= 1, got {loss.members}")
        try:
            self.model_config("contrastive").validate("train")
            self.augmentation.validate()
        except ValueError as exc:
            raise ParamsError(str(exc)) from None

    def max_epochs(self, model: str) -> int:
        return self.loss_params(model).epochs or self.epochs

    def model_config(self, model: str) -> ModelConfig:
        return ModelConfig(
            backbone=self.backbone,
            embedding_dim=self.embedding_dim,
            input_height=self.input_height,
            input_width=self.input_width,
            channels=tuple(self.channels),
            convs_per_block=self.convs_per_block,
            normalize=self.loss_params(model).normalize,
            members=self.loss_params(model).members,
        )

    def preprocess(self) -> Preprocess:
        return Preprocess(height=self.input_height, width=self.input_width, mean=self.pixel_mean, std=self.pixel_std,
                          normalization=self.normalization, trim_borders=self.trim_borders)

    def loss_params(self, model: str) -> ContrastiveParams | TripletParams:
        if model not in MODELS:
            raise ParamsError(f"unknown model {model!r}; expected one of {', '.join(MODELS)}")
        return getattr(self, model)

    def resolved(self, model: str) -> dict[str, Any]:
        """The one config dict of a run: MLflow params, checkpoint and metrics file get this."""
        common = {k: v for k, v in asdict(self).items() if k not in MODELS}
        common["channels"] = list(self.channels)
        return {"model": model, **common, "loss": asdict(self.loss_params(model))}


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
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False


def embed_rows(
    model: EmbeddingNet,
    images: torch.Tensor,
    rows: torch.Tensor,
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Embeddings for a tensor of row numbers of any shape: (*rows.shape, D).

    Each distinct image is embedded (and augmented) once, however often it
    appears in the batch.
    """
    unique, inverse = torch.unique(rows, return_inverse=True)
    x = images[unique]
    if augment is not None:
        x = augment(x, generator)
    device = next(model.parameters()).device
    return model(x.to(device))[inverse.to(device)]


class Objective:
    """What one model learns from: its training batches and its loss on a batch of embeddings."""

    def __init__(self, model_name: str, params: TrainParams, tables: dict[str, pd.DataFrame], faces: FaceSet):
        self.name = model_name
        self.params = params
        self.pairs_val = _pair_rows(tables["pairs_val"], faces)
        self.loss = params.loss_params(model_name)
        self.mined = self.loss.mining != "none"  # P x K batches, pairs or triplets found in each
        if model_name == "contrastive":
            self.train_rows = _pair_rows(tables["pairs_train"], faces)
            self.pair_loss_fn = ContrastiveLoss(margin=params.contrastive.margin)
            self.loss_fn = BatchContrastiveLoss(margin=params.contrastive.margin) if self.mined else self.pair_loss_fn
            pool_rows = self.train_rows[:, :2]
        else:
            self.train_rows = _triplet_rows(tables["triplets_train"], faces)
            self.val_triplets = _triplet_rows(tables["triplets_val"], faces)
            if params.triplet.mining == "none":
                self.loss_fn = TripletLoss(margin=params.triplet.margin)
            else:
                self.loss_fn = BatchTripletLoss(margin=params.triplet.margin, mining=params.triplet.mining)
            pool_rows = self.train_rows
        if self.mined:
            # The faces of the model's training CSV, with their person, for P x K batches.
            subject_ids = faces.subject_ids()
            self.pool = torch.unique(pool_rows.flatten())
            self.pool_labels = subject_ids[self.pool]
            if model_name == "triplet":
                self.val_pool = torch.unique(self.val_triplets.flatten())
                self.val_pool_labels = subject_ids[self.val_pool]

    def batches(self, generator: torch.Generator) -> Iterator[torch.Tensor | tuple[torch.Tensor, torch.Tensor]]:
        if self.mined:
            yield from self._pk_batches(generator)
            return
        order = torch.randperm(len(self.train_rows), generator=generator)
        for start in range(0, len(order), self.params.batch_size):
            yield self.train_rows[order[start : start + self.params.batch_size]]

    def _pk_batches(self, generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        p, k = self.loss.people_per_batch, self.loss.faces_per_person
        people = torch.unique(self.pool_labels)
        p = min(p, len(people))
        for _ in range(math.ceil(len(self.pool) / (p * k))):
            chosen = people[torch.randperm(len(people), generator=generator)[:p]]
            rows, labels = [], []
            for person in chosen:
                own = self.pool[self.pool_labels == person]
                take = own[torch.randperm(len(own), generator=generator)[:k]]
                rows.append(take)
                labels.append(torch.full((len(take),), int(person)))
            yield torch.cat(rows), torch.cat(labels)

    def train_loss(self, model, images, batch, augment, generator) -> torch.Tensor:
        if isinstance(batch, tuple):  # P x K faces with their person labels
            rows, labels = batch
            return self.loss_fn(embed_rows(model, images, rows, augment, generator), labels.to(_device(model)))
        emb = embed_rows(model, images, batch[:, :-1] if self.name == "contrastive" else batch, augment, generator)
        if self.name == "contrastive":
            return self.loss_fn(emb[:, 0], emb[:, 1], batch[:, -1].to(emb))
        return self.loss_fn(emb[:, 0], emb[:, 1], emb[:, 2])

    def examples_in(self, batch) -> int:
        """Pairs or triplets a batch trains on.

        A P x K batch holds P*K*(K-1) (anchor, positive) triplets, or N*(N-1)/2 pairs of its N faces.
        """
        if isinstance(batch, tuple):
            _, labels = batch
            if self.name == "contrastive":
                return len(labels) * (len(labels) - 1) // 2
            counts = torch.unique(labels, return_counts=True)[1]
            return int((counts * (counts - 1)).sum())
        return len(batch)

    def faces_in(self, batch) -> int:
        """Faces a batch passes through the network: each distinct one once."""
        rows = batch[0] if isinstance(batch, tuple) else (batch[:, :-1] if self.name == "contrastive" else batch)
        return int(torch.unique(rows).numel())

    def validate(self, embeddings: torch.Tensor) -> dict[str, float]:
        """Validation loss (the early-stopping criterion) and ROC AUC on the validation pairs."""
        e1, e2 = embeddings[self.pairs_val[:, 0]], embeddings[self.pairs_val[:, 1]]
        labels = self.pairs_val[:, 2]
        distances = euclidean_distance(e1, e2)
        if self.name == "contrastive":
            loss = self.pair_loss_fn(e1, e2, labels.float())
        elif self.params.triplet.mining == "none":
            t = self.val_triplets
            loss = self.loss_fn(embeddings[t[:, 0]], embeddings[t[:, 1]], embeddings[t[:, 2]])
        else:
            # The training objective over all validation faces as one batch: random
            # CSV triplets are too easy to tell one epoch from the next.
            loss = self.loss_fn(embeddings[self.val_pool], self.val_pool_labels)
        return {"val_loss": float(loss), "val_roc_auc": roc_auc(distances.numpy(), labels.numpy())}


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _pair_rows(table: pd.DataFrame, faces: FaceSet) -> torch.Tensor:
    return torch.stack([faces.rows(table["image1"]), faces.rows(table["image2"]),
                        torch.tensor(table["label"].to_numpy(), dtype=torch.long)], dim=1)


def _triplet_rows(table: pd.DataFrame, faces: FaceSet) -> torch.Tensor:
    return torch.stack([faces.rows(table[c]) for c in ("anchor", "positive", "negative")], dim=1)


@dataclass
class TrainResult:
    model: EmbeddingNet | EnsembleNet
    checkpoint: dict[str, Any]
    history: pd.DataFrame
    best_epoch: int
    best_val_loss: float
    stopped_early: bool
    # For benchmarks: seconds of the training steps of each epoch (validation excluded),
    # and per epoch the pairs or triplets trained on and the faces passed through the network.
    train_seconds: list[float] = field(default_factory=list)
    examples_per_epoch: int = 0
    face_passes_per_epoch: int = 0


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
    log: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True),
) -> TrainResult:
    """Train `model_name` ('contrastive' or 'triplet') on faces already in memory: one network, or
    `params.<model>.members` networks one after the other, each with its own seed, joined into one `EnsembleNet`."""
    members = params.loss_params(model_name).members  # refuses an unknown model name
    if members == 1:
        return fit_member(model_name, params, tables, faces, run, log)
    results = [fit_member(model_name, replace(params, seed=member_seed(params.seed, i)), tables, faces, run, log,
                          member=i + 1)
               for i in range(members)]
    return join_members(model_name, params, results)


def join_members(model_name: str, params: TrainParams, results: list[TrainResult]) -> TrainResult:
    """One ensemble from its trained members: their weights in one network, their histories averaged
    epoch by epoch, their training counters added up (an ensemble epoch is every member's epoch)."""
    ensemble = build_embedding_net(params.model_config(model_name))
    for member, result in zip(ensemble.members, results):
        member.load_state_dict(result.model.state_dict())
    ensemble.to(next(results[0].model.parameters()).device).eval()
    epochs = [r.best_epoch for r in results]
    history = pd.concat([r.history for r in results]).groupby("epoch", as_index=False).mean()[HISTORY_COLUMNS]
    checkpoint = {
        **results[0].checkpoint,
        "model_state": ensemble.state_dict(),
        "optimizer_state": [r.checkpoint["optimizer_state"] for r in results],
        "epoch": max(epochs),
        "member_epochs": epochs,
        "best_val_loss": float(np.mean([r.best_val_loss for r in results])),
        "model_config": params.model_config(model_name).to_dict(),
        "params": params.resolved(model_name),
    }
    shortest = min(len(r.train_seconds) for r in results)
    return TrainResult(
        model=ensemble,
        checkpoint=checkpoint,
        history=history,
        best_epoch=checkpoint["epoch"],
        best_val_loss=checkpoint["best_val_loss"],
        stopped_early=any(r.stopped_early for r in results),
        train_seconds=[sum(r.train_seconds[e] for r in results) for e in range(shortest)],
        examples_per_epoch=sum(r.examples_per_epoch for r in results),
        face_passes_per_epoch=sum(r.face_passes_per_epoch for r in results),
    )


def fit_member(
    model_name: str,
    params: TrainParams,
    tables: dict[str, pd.DataFrame],
    faces: FaceSet,
    run: Run = NULL_RUN,
    log: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True),
    member: int | None = None,
) -> TrainResult:
    """Train one network of `model_name` with `params.seed`; `member` numbers it within an ensemble
    (its per-epoch MLflow metrics are then `member<k>.train_loss`, ...)."""
    seed_everything(params.seed)
    device = resolve_device(params.device)
    objective = Objective(model_name, params, tables, faces)
    config = replace(params.model_config(model_name), members=1)
    model = build_embedding_net(config).to(device)
    prefix, label = (f"member{member}.", f"train@{model_name} member {member}") if member else ("", f"train@{model_name}")
    # fused: one kernel whose square root is exact; the default (foreach) one differs by CPU model
    optimizer = torch.optim.Adam(model.parameters(), lr=params.lr, weight_decay=params.weight_decay, fused=True)
    max_epochs = params.max_epochs(model_name)
    scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max_epochs)
                 if params.lr_schedule == "cosine" else None)
    augment = params.augmentation if params.augment else None
    generator = torch.Generator().manual_seed(params.seed)
    images = faces.tensor

    history: list[dict[str, float]] = []
    train_seconds: list[float] = []
    best_val_loss = math.inf
    kept: dict[str, Any] = {}  # the checkpointed epoch: the best one (keep: best) or the last (keep: last)
    epochs_without_gain = 0
    for epoch in range(1, max_epochs + 1):
        started = time.perf_counter()
        model.train()
        total, count, examples, face_passes = 0.0, 0, 0, 0
        for batch in objective.batches(generator):
            loss = objective.train_loss(model, images, batch, augment, generator)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            n = len(batch[0]) if isinstance(batch, tuple) else len(batch)
            total, count = total + loss.item() * n, count + n
            examples += objective.examples_in(batch)
            face_passes += objective.faces_in(batch)
        train_seconds.append(time.perf_counter() - started)
        if scheduler is not None:
            scheduler.step()
        if not math.isfinite(total):
            raise FloatingPointError(f"train@{model_name} diverged in epoch {epoch} (loss is {total}); "
                                     f"lower train.lr (now {params.lr})")
        scores = objective.validate(embed_all(model, images))
        row = {"epoch": epoch, "train_loss": total / count, **scores, "seconds": time.perf_counter() - started}
        history.append(row)
        run.log_metrics({f"{prefix}{k}": v for k, v in row.items() if k != "epoch"}, step=epoch)
        improved = scores["val_loss"] < best_val_loss
        log(f"{label} epoch {epoch:3d}/{max_epochs}  train_loss {row['train_loss']:.4f}  "
            f"val_loss {scores['val_loss']:.4f}  val_auc {scores['val_roc_auc']:.4f}  "
            f"{row['seconds']:.1f}s{'  *' if improved else ''}")
        stopping = False
        if improved:
            best_val_loss, epochs_without_gain = scores["val_loss"], 0
        else:
            epochs_without_gain += 1
            stopping = params.patience > 0 and epochs_without_gain >= params.patience
        # Checkpoint only when validation improves (keep: best), or once, at the end (keep: last).
        if (params.keep == "best" and improved) or (params.keep == "last" and (stopping or epoch == max_epochs)):
            kept = {"val_loss": scores["val_loss"], "epoch": epoch,
                    "model_state": copy.deepcopy(model.state_dict()),
                    "optimizer_state": copy.deepcopy(optimizer.state_dict())}
        if stopping:
            log(f"{label}: no better validation loss for {params.patience} epochs; stopping")
            break

    model.load_state_dict(kept["model_state"])
    model.eval()
    checkpoint = {
        "model_name": model_name,
        "model_state": kept["model_state"],
        "optimizer_state": kept["optimizer_state"],
        "epoch": kept["epoch"],
        "best_val_loss": kept["val_loss"],
        "model_config": config.to_dict(),
        "preprocess": params.preprocess().to_dict(),
        "params": params.resolved(model_name),
    }
    return TrainResult(
        model=model,
        checkpoint=checkpoint,
        history=pd.DataFrame(history, columns=HISTORY_COLUMNS),
        best_epoch=kept["epoch"],
        best_val_loss=kept["val_loss"],
        stopped_early=len(history) < max_epochs,
        train_seconds=train_seconds,
        examples_per_epoch=examples,
        face_passes_per_epoch=face_passes,
    )


def load_tables(paths: dict[str, str | os.PathLike]) -> dict[str, pd.DataFrame]:
    tables = {}
    for name, path in paths.items():
        try:
            tables[name] = pd.read_csv(path)
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: not found (run the sample stage first)") from None
    return tables


def train_and_save(
    model_name: str,
    params: TrainParams,
    faces_dir: str | os.PathLike,
    table_paths: dict[str, str | os.PathLike],
    checkpoint_path: str | os.PathLike,
    history_path: str | os.PathLike,
    run: Run = NULL_RUN,
) -> TrainResult:
    """The train stage: read the CSVs, fit, log to MLflow, then write checkpoint and history (all or none)."""
    tables = load_tables(table_paths)
    paths = pd.concat([tables[n][c] for n in tables for c in tables[n].columns
                       if c in ("image1", "image2", "anchor", "positive", "negative")])
    faces = FaceSet.load(faces_dir, paths, params.preprocess())
    result = fit(model_name, params, tables, faces, run)
    with staged_outputs(checkpoint_path, history_path) as (staged_ckpt, staged_history):
        torch.save(result.checkpoint, staged_ckpt)
        # wall-clock seconds go to MLflow only: in a DVC-tracked file they would change dvc.lock on every run
        result.history.drop(columns="seconds").to_csv(staged_history, index=False, lineterminator="\n",
                                                      float_format="%.6g")
        run.log_metrics({"best_epoch": result.best_epoch, "best_val_loss": result.best_val_loss,
                         "epochs_run": len(result.history),
                         "best_val_roc_auc": float(result.history["val_roc_auc"][result.best_epoch - 1])})
        run.log_model(result.model, faces.tensor[:2].numpy(), result.checkpoint)
        run.log_artifact(staged_history, "plots")
    return result
