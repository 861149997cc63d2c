"""The `train` section of params.yaml: the recipe both models share and each loss's own keys.

Parsed by `facesim.core.params.parse_section`; it gives the network's shape
(`model_config`) and the preprocessing (`preprocess`) to the core layer, and
one resolved config dict per model (`resolved`) to MLflow, the checkpoint and
the metrics.

The dataclasses declare the keys, their types and ranges; every value is params.yaml's (no defaults here:
tests/test_params_yaml.py). The network's keys (backbone ... frozen_blocks, and each loss's normalize,
members and channels) are checked where the network is: `ModelConfig.validate`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

from facesim.core.data import Augment
from facesim.core.model_files import MODELS
from facesim.core.models import ModelConfig
from facesim.core.params import ParamsError, check_override, load_params_file, parse_section, require
from facesim.core.preprocess import Preprocess


@dataclass(frozen=True)
class ContrastiveParams:
    margin: float  # different people are pushed at least this far apart
    normalize: bool  # L2-normalise embeddings (distances then lie in [0, 2])
    epochs: int  # this model's epoch limit; 0 = train.epochs
    # "none": the sampled pair CSV; "all": batches of people_per_batch x faces_per_person
    # faces and every pair among them (same-person and different-person terms weighed equally)
    mining: Literal["none", "all"]
    people_per_batch: int
    faces_per_person: int
    members: int  # an ensemble of this many networks, each trained with its own seed
    channels: tuple[int, ...]  # compact backbone: width of each conv block of each member


@dataclass(frozen=True)
class TripletParams:
    margin: float  # d(anchor, negative) must exceed d(anchor, positive) by this much
    normalize: bool
    epochs: int  # this model's epoch limit; 0 = train.epochs (P x K epochs are short: ~5 steps)
    # "none": the sampled triplet CSV; "semihard" / "hard" / "all": batches of
    # people_per_batch x faces_per_person faces with triplets mined in the batch (FaceNet).
    mining: Literal["none", "semihard", "hard", "all"]
    people_per_batch: int
    faces_per_person: int
    members: int  # an ensemble of this many networks, each trained with its own seed
    channels: tuple[int, ...]  # compact backbone: width of each conv block of each member


@dataclass(frozen=True)
class TrainParams:
    seed: int  # model initialisation, batch order and augmentation
    device: Literal["auto", "cpu", "cuda"]  # auto: CUDA when present
    # training processes in all (DistributedDataParallel, facesim.training.distributed): the train stage
    # starts itself under torchrun with this many on one machine; several machines: docs/distributed.md
    processes: int
    # fp32 | bf16 (autocast, CPUs and GPUs) | fp16 (autocast with a loss scaler, CUDA only): the network's
    # forward pass in training; the losses, validation and the saved model stay float32
    precision: Literal["fp32", "bf16", "fp16"]
    # the network (`ModelConfig`, which checks these keys): compact, resnet18, efficientnet_b0 or dlib
    backbone: str
    pretrained: str  # torchvision backbones: starting weights (none or imagenet)
    frozen_blocks: int  # torchvision backbones: early blocks kept at their starting weights
    embedding_dim: int
    convs_per_block: int  # compact backbone: 3x3 convs per block
    input_height: int
    input_width: int
    pixel_mean: float  # normalization "fixed": grey levels in [0, 1] minus this, over pixel_std
    pixel_std: float
    # "per_image": each face to zero mean, unit variance (exposure and contrast of a photo drop out)
    normalization: Literal["fixed", "per_image"]
    trim_borders: bool  # cut uniform rows and columns at a picture's edges before resizing
    epochs: int  # at most; early stopping may end sooner
    batch_size: int  # pairs or triplets per step (P x K faces when mining)
    lr: float
    # "cosine": the learning rate falls from lr to 0 along half a cosine over the epoch limit
    lr_schedule: Literal["constant", "cosine"]
    weight_decay: float
    patience: int  # epochs without a better validation loss before stopping; 0 = never stop early
    # which weights training ends with: the epoch of the best validation loss, or the last epoch
    # (with validation people unseen in training, their loss bottoms out long before training does)
    keep: Literal["best", "last"]
    augment: bool  # shifts, small rotations and zoom, mirror, brightness/contrast, blur
    augmentation: Augment  # how strong each change may be
    contrastive: ContrastiveParams
    triplet: TripletParams

    def validate(self) -> None:
        require(self.epochs >= 1, f"train.epochs must be >= 1, got {self.epochs}")
        require(not isinstance(self.processes, bool) and isinstance(self.processes, int) and self.processes >= 1,
                f"train.processes must be a whole number >= 1, got {self.processes!r}")
        if self.device == "cpu":  # with auto, the device the stage finds is checked when training starts
            self.check_precision_on("cpu")
        require(self.batch_size >= 2, f"train.batch_size must be >= 2, got {self.batch_size}")
        require(self.lr > 0, f"train.lr must be positive, got {self.lr}")
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
        try:
            for name in MODELS:
                self.model_config(name).validate("train", f"train.{name}")
            self.augmentation.validate()
        except ValueError as exc:
            raise ParamsError(str(exc)) from None

    def check_precision_on(self, device_type: str) -> None:
        """fp16 needs CUDA (its gradients go through a loss scaler); bf16 and fp32 run on CPUs and GPUs."""
        require(not (self.precision == "fp16" and device_type != "cuda"),
                f"train.precision fp16 needs a CUDA device (train.device is {self.device}, which gives "
                f"{device_type} here); use bf16 or fp32 on CPUs")

    def max_epochs(self, model: str) -> int:
        return self.loss_params(model).epochs or self.epochs

    def model_config(self, model: str) -> ModelConfig:
        loss = self.loss_params(model)
        return ModelConfig(
            backbone=self.backbone,
            embedding_dim=self.embedding_dim,
            input_height=self.input_height,
            input_width=self.input_width,
            channels=tuple(loss.channels),
            convs_per_block=self.convs_per_block,
            normalize=loss.normalize,
            members=loss.members,
            pretrained=self.pretrained,
            frozen_blocks=self.frozen_blocks,
        )

    def preprocess(self) -> Preprocess:
        return Preprocess(height=self.input_height, width=self.input_width, mean=self.pixel_mean, std=self.pixel_std,
                          normalization=self.normalization, trim_borders=self.trim_borders,
                          features="dlib" if self.backbone == "dlib" else "pixels")

    def augmentation_applied(self) -> Augment | None:
        """The augmentation training applies: none for the dlib backbone, whose frozen network describes
        each face once (augmentation changes pixels, and its head never sees any)."""
        return self.augmentation if self.augment and self.backbone != "dlib" else None

    def loss_params(self, model: str) -> ContrastiveParams | TripletParams:
        if model not in MODELS:
            raise ParamsError(f"unknown model {model!r}; expected one of {', '.join(MODELS)}")
        return getattr(self, model)

    def resolved(self, model: str) -> dict[str, Any]:
        """The one config dict of a run: MLflow params, checkpoint and metrics file get this."""
        common = {k: v for k, v in asdict(self).items() if k not in MODELS}
        loss = asdict(self.loss_params(model))
        loss["channels"] = list(loss["channels"])  # a plain list, as JSON and YAML write it
        return {"model": model, **common, "loss": loss}


def merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """`base` with the keys of `over` put over it, nested dicts key by key."""
    merged = dict(base)
    for key, value in over.items():
        merged[key] = merge(base[key], value) if isinstance(value, Mapping) and isinstance(base.get(key), Mapping) \
            else value
    return merged


def backbone_keys(data: Mapping[str, Any], backbone: str, source: str = "params.yaml") -> dict[str, Any]:
    """The train keys backbone `backbone` sets (`backbones.<backbone>` of the params file's `data`), each
    checked against the train section's schema so that a bad one is named as backbones.<backbone>.<key>."""
    backbones = data.get("backbones")
    if not isinstance(backbones, dict) or not all(isinstance(v or {}, dict) for v in backbones.values()):
        raise ParamsError(f"{source}: backbones must map a name to the train keys it sets, got {backbones!r}")
    if backbone not in backbones:
        raise ParamsError(f"{source}: backbones has no {backbone!r}; it names "
                          f"{', '.join(map(str, backbones)) or 'none'}")
    keys = backbones[backbone] or {}
    check_override(TrainParams, keys, f"backbones.{backbone}", source=source)
    return keys


def load_train_params(path: str | os.PathLike, backbone: str) -> TrainParams:
    """The train section with the keys of `backbones.<backbone>` put over it: what the pipeline's
    train@<backbone>-<model> stages train with."""
    data = load_params_file(path)
    if not isinstance(data.get("train"), dict):
        raise ParamsError(f"{path}: missing section 'train'")
    return parse_section(TrainParams, merge(data["train"], backbone_keys(data, backbone, str(path))), "train",
                         source=str(path))
