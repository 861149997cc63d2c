"""Embedding networks for 1-channel face images, and their configuration.

What a trained network is used through lives beside it: `facesim.core.embedding` (every face's embedding,
BatchNorm folded) and `facesim.core.checkpoint` (a checkpoint file back to its network).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from facesim.core.backbones import (
    check_frozen_blocks,
    imagenet_state_dict,
    require_pretrained_weights,
    torchvision_backbone,
)
from facesim.core.dlib_face import DESCRIPTOR_SIZE, dlib_faces

# compact: our small CNN; resnet18 / efficientnet_b0: torchvision's, from scratch or ImageNet-pretrained;
# dlib: dlib's face-trained ResNet, frozen, as a 128-d descriptor per face (`facesim.core.dlib_face`),
# with a small trained head on top
BACKBONES = ("compact", "resnet18", "efficientnet_b0", "dlib")
TORCHVISION_BACKBONES = ("resnet18", "efficientnet_b0")
PRETRAINED = ("none", "imagenet")
MIN_INPUT_SIDE = 16


@dataclass(frozen=True)
class ModelConfig:
    """Shape of the embedding network; saved in checkpoints via to_dict().

    Its values are the train params' (`TrainParams.model_config`: the train section of params.yaml, the
    model's loss section giving `normalize`, `members` and `channels`) or a checkpoint's (`from_dict`); it has no
    defaults of its own. `validate` is where the network's keys are checked, for both.
    """

    backbone: str  # one of BACKBONES
    embedding_dim: int  # length of the face embedding
    input_height: int  # face height in pixels fed to the network (ORL originals are 112)
    input_width: int  # face width in pixels (ORL originals are 92)
    channels: tuple[int, ...]  # compact CNN: conv width of each block
    convs_per_block: int  # compact CNN: 3x3 convs in each block (VGG uses 2)
    normalize: bool  # L2-normalise embeddings, putting them on the unit sphere
    # networks of this shape trained apart (each with its own seed); a face's embedding is
    # theirs side by side (`EnsembleNet`), embedding_dim x members numbers
    members: int
    # torchvision backbones: their starting weights ("imagenet": torchvision's, from torch's hub cache)
    pretrained: str
    # torchvision backbones: how many early blocks keep their starting weights (0: all are trained)
    frozen_blocks: int

    def validate(self, section: str = "train", loss_section: str | None = None) -> None:
        """Raise ValueError naming the first bad field as `{section}.{field}` (`normalize`, `members` and
        `channels`, which each loss sets in params.yaml, as `{loss_section}.{field}` when it is given)."""
        own = loss_section or section
        if self.backbone not in BACKBONES:
            raise ValueError(
                f"{section}.backbone must be one of {', '.join(BACKBONES)}, got {self.backbone!r}"
            )
        if not _is_positive_int(self.embedding_dim):
            raise ValueError(
                f"{section}.embedding_dim must be a positive integer, got {self.embedding_dim!r}"
            )
        if (
            not isinstance(self.channels, tuple)
            or len(self.channels) == 0
            or not all(_is_positive_int(width) for width in self.channels)
        ):
            raise ValueError(
                f"{own}.channels must be a non-empty list of positive integers, "
                f"got {self.channels!r}"
            )
        if not _is_positive_int(self.convs_per_block):
            raise ValueError(
                f"{section}.convs_per_block must be a positive integer, got {self.convs_per_block!r}"
            )
        smallest = minimum_input_side(self)
        for field in ("input_height", "input_width"):
            value = getattr(self, field)
            if not _is_positive_int(value) or value < smallest:
                raise ValueError(
                    f"{section}.{field} must be an integer >= {smallest} for this backbone, "
                    f"got {value!r}"
                )
        if not isinstance(self.normalize, bool):
            raise ValueError(f"{own}.normalize must be true or false, got {self.normalize!r}")
        if not _is_positive_int(self.members):
            raise ValueError(f"{own}.members must be a positive integer, got {self.members!r}")
        if self.pretrained not in PRETRAINED:
            raise ValueError(f"{section}.pretrained must be one of {', '.join(PRETRAINED)}, got {self.pretrained!r}")
        if self.pretrained != "none" and self.backbone not in TORCHVISION_BACKBONES:
            raise ValueError(f"{section}.pretrained: {self.pretrained} needs a torchvision backbone "
                             f"({', '.join(TORCHVISION_BACKBONES)}), but {section}.backbone is {self.backbone!r}")
        if not (isinstance(self.frozen_blocks, int) and not isinstance(self.frozen_blocks, bool)
                and self.frozen_blocks >= 0):
            raise ValueError(f"{section}.frozen_blocks must be an integer >= 0, got {self.frozen_blocks!r}")
        check_frozen_blocks(self.backbone, self.frozen_blocks, section)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (lists, not tuples) for checkpoints, JSON and MLflow."""
        as_dict = dataclasses.asdict(self)
        as_dict["channels"] = list(self.channels)
        return as_dict

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelConfig:
        """Inverse of to_dict; unknown keys are an error so typos do not pass silently."""
        known = {field.name for field in dataclasses.fields(cls)}
        unknown, missing = sorted(set(values) - known), sorted(known - set(values))
        if unknown:
            raise ValueError(
                f"unknown model config keys {unknown}; expected some of {sorted(known)}"
            )
        if missing:
            raise ValueError(f"model config without {', '.join(missing)}: not one a facesim checkpoint holds")
        values = dict(values)
        if "channels" in values and isinstance(values["channels"], list):
            values["channels"] = tuple(values["channels"])
        config = cls(**values)
        config.validate()
        return config


def _is_positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def minimum_input_side(config: ModelConfig) -> int:
    """Smallest height/width the backbone accepts."""
    if config.backbone == "compact":
        # every block but the last halves the image, which must not shrink below 1 pixel
        return max(MIN_INPUT_SIDE, 2 ** (len(config.channels) - 1))
    return MIN_INPUT_SIDE


def _conv_bn_relu(in_channels: int, out_channels: int) -> list[nn.Module]:
    # no conv bias: the BatchNorm that follows has its own shift
    return [
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


class CompactCNN(nn.Module):
    """Small VGG-style CNN: blocks of 3x3 convs, halving the image between blocks.

    Sized for CPUs: at 56x46 input, one conv per block and widths 16-128 cost
    about 17 MFLOP per face, fifteen times less than two convs of widths 32-256.
    """

    def __init__(
        self,
        embedding_dim: int,
        channels: tuple[int, ...],
        convs_per_block: int,
        in_channels: int = 1,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        previous = in_channels
        for block, channel_width in enumerate(channels):
            layers += _conv_bn_relu(previous, channel_width)
            for _ in range(convs_per_block - 1):
                layers += _conv_bn_relu(channel_width, channel_width)
            if block == len(channels) - 1:
                # global average pooling at the end makes the head independent of the input size
                layers.append(nn.AdaptiveAvgPool2d(1))
            else:
                # max-pool, then ReLU: the same numbers as ReLU then max-pool (both keep the
                # order of values), with the ReLU on a quarter of the activations
                layers.insert(len(layers) - 1, nn.MaxPool2d(2))
            previous = channel_width
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(previous, embedding_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.flatten(self.features(x), start_dim=1))


class DescriptorHead(nn.Module):
    """The trained part of the `dlib` backbone: one linear map of dlib's 128-d face descriptor.

    dlib's network stays frozen (its descriptors are computed once, `facesim.core.dlib_face`);
    the head starts as the identity (the first `embedding_dim` of the 128 numbers when it is
    shorter), so training starts from the raw descriptor's distances and moves them only as far
    as the loss on the training people asks.
    """

    def __init__(self, embedding_dim: int, in_features: int = DESCRIPTOR_SIZE) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, embedding_dim)
        with torch.no_grad():
            self.linear.weight.copy_(torch.eye(embedding_dim, in_features))
            self.linear.bias.zero_()

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(x)


class EmbeddingNet(nn.Module):
    """Maps (N, 1, H, W) faces (the dlib backbone: (N, 128) descriptors) to (N, embedding_dim) embeddings."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        if config.backbone == "compact":
            self.backbone = CompactCNN(config.embedding_dim, config.channels, convs_per_block=config.convs_per_block)
        elif config.backbone == "dlib":
            self.backbone = DescriptorHead(config.embedding_dim)
        else:  # resnet18, efficientnet_b0: randomly initialised; build_embedding_net loads ImageNet weights
            self.backbone = torchvision_backbone(config.backbone, config.embedding_dim, config.frozen_blocks)
        # oneDNN's convolutions run 2-3x faster on CPUs with channels-last (NHWC) tensors
        self.to(memory_format=torch.channels_last)

    def forward(self, x: Tensor) -> Tensor:
        if self.config.backbone == "dlib":
            if x.dim() != 2 or x.shape[1] != DESCRIPTOR_SIZE or x.shape[0] == 0:
                raise ValueError(f"expected a non-empty batch of dlib descriptors (N, {DESCRIPTOR_SIZE}), "
                                 f"got {tuple(x.shape)}")
            return self.embed(x)
        if x.dim() != 4 or x.shape[1] != 1:
            raise ValueError(f"expected faces of shape (N, 1, H, W), got {tuple(x.shape)}")
        smallest = minimum_input_side(self.config)
        if x.shape[0] == 0 or x.shape[2] < smallest or x.shape[3] < smallest:
            raise ValueError(
                f"expected a non-empty batch of faces at least {smallest}x{smallest}, "
                f"got {tuple(x.shape)}"
            )
        return self.embed(x.contiguous(memory_format=torch.channels_last))

    def embed(self, x: Tensor) -> Tensor:
        """`forward` after its checks, on `x` in the memory layout it comes in (benchmarks time NCHW with it)."""
        embeddings = self.backbone(x)
        return F.normalize(embeddings, p=2, dim=1) if self.config.normalize else embeddings


class EnsembleNet(nn.Module):
    """Several embedding networks of one shape, trained apart: their embeddings side by side.

    Scaled by 1/sqrt(members), so that the squared distance between two faces
    is the mean of the members' squared distances (and normalised members give
    a unit-length whole). Averaging members trained from different seeds
    cancels much of what each learned by chance from 30 people.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.members = nn.ModuleList(EmbeddingNet(dataclasses.replace(config, members=1))
                                     for _ in range(config.members))

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([member(x) for member in self.members], dim=1) / math.sqrt(len(self.members))


def require_backbone(config: ModelConfig | Any) -> None:
    """Stop before any work when what the backbone needs is not here: the ImageNet weights file of a
    pretrained torchvision backbone, or the dlib extra. `config`: a ModelConfig or the train params."""
    require_pretrained_weights(config)
    if config.backbone == "dlib":
        dlib_faces()  # loads dlib and its model files once per process, or raises DlibUnavailable


def build_embedding_net(config: ModelConfig, load_pretrained: bool = True) -> EmbeddingNet | EnsembleNet:
    """Validated config -> freshly initialised network (seed torch before calling).

    With `pretrained: imagenet` every member starts from torchvision's ImageNet weights, read
    from torch's hub cache (`facesim.core.backbones`; a one-line error when the file is
    missing). `load_pretrained=False` skips them, for a network whose weights come next
    from a checkpoint: loading a trained model never needs the ImageNet file.
    """
    network = EmbeddingNet(config) if config.members == 1 else EnsembleNet(config)
    if load_pretrained and config.pretrained == "imagenet":
        state = imagenet_state_dict(config.backbone)
        for member in network.members if isinstance(network, EnsembleNet) else [network]:
            member.backbone.load_imagenet(state)
    return network
