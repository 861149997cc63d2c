"""torchvision's ResNet-18 and EfficientNet-B0 as backbones for grey faces: from scratch or from
ImageNet weights, with their first blocks optionally frozen.

Grey input. The embedding network takes (N, 1, H, W) faces, so each backbone's stem
convolution takes one channel. From scratch (`pretrained: none`) it is a new 1-channel
conv, initialised as torchvision initialises its own. From ImageNet weights it is the
pretrained RGB conv summed over its three input channels: for a grey face repeated into
R, G and B, conv(W, [g, g, g]) = conv(W_R + W_G + W_B, g) exactly, zero padding included,
so the network computes what it would of the grey face fed as RGB, and its stem does a
third of the work.

Normalisation. ImageNet weights expect each channel as (x - mean_c) / std_c, mean (0.485,
0.456, 0.406) and std (0.229, 0.224, 0.225) over pixels in [0, 1]: inputs of zero mean and
unit variance over ImageNet. The pipeline's default, `normalization: per_image`, gives each
face zero mean and unit variance: the same scale, per face rather than per data set.
`normalization: fixed` with `pixel_mean: 0.449` and `pixel_std: 0.226` (the means of
ImageNet's three) is ImageNet's own normalisation of a grey pixel to within 0.21 (in units
of a standard deviation) in every channel.

Head. torchvision's 1000-class classifier Linear is replaced by a Linear to
`embedding_dim` (EfficientNet keeps the dropout torchvision puts before it); it is always
trained.

Blocks, counted from the input (`BLOCKS`; `frozen_blocks: k` freezes the first k):
- resnet18, 5 blocks: the stem (conv1 and bn1; the max-pool after them has no weights),
  then layer1 to layer4 (two residual blocks each);
- efficientnet_b0, 9 blocks: features[0] (the stem, a 3x3 conv), features[1] to features[7]
  (the seven MBConv stages) and features[8] (the last 1x1 conv, to 1280 channels).
A frozen block has requires_grad False on its parameters and stays in eval mode while the
network trains: its BatchNorms use and keep their running statistics, EfficientNet's
stochastic depth is off, so it computes the same function at every step. Freezing every
block trains the head alone. Autograd keeps no activations for the frozen blocks, so a
training step is also cheaper.

Weights come through torchvision's weights API (`ResNet18_Weights.IMAGENET1K_V1`,
`EfficientNet_B0_Weights.IMAGENET1K_V1`) and torch's hub cache:
`$TORCH_HOME/hub/checkpoints/<the URL's file name>` (`torch.hub.get_dir()`). facesim never
downloads them: a missing file is a one-line error naming it and where it goes
(`require_pretrained_weights`). The file's hash is not checked.

torchvision is imported only when a backbone is built or its weights looked up: it takes
seconds to import, and the default compact backbone does not need it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar, Protocol

import torch
from torch import Tensor, nn

# The blocks `frozen_blocks` counts, from the input; "a+b" is one block made of two modules.
BLOCKS: dict[str, tuple[str, ...]] = {
    "resnet18": ("conv1+bn1", "layer1", "layer2", "layer3", "layer4"),
    "efficientnet_b0": tuple(f"features.{i}" for i in range(9)),
}
# torchvision's weights enum of each backbone (in torchvision.models), and the member used
WEIGHTS = {"resnet18": "ResNet18_Weights", "efficientnet_b0": "EfficientNet_B0_Weights"}
IMAGENET = "IMAGENET1K_V1"


class WantsWeights(Protocol):
    """What `require_pretrained_weights` reads of a config (a `ModelConfig`, the train params)."""

    backbone: str
    pretrained: str


def check_frozen_blocks(backbone: str, frozen_blocks: int, section: str = "train") -> None:
    """ValueError naming `{section}.frozen_blocks` unless `backbone` has at least that many blocks."""
    if frozen_blocks == 0:
        return
    if backbone not in BLOCKS:
        raise ValueError(f"{section}.frozen_blocks applies to the torchvision backbones ({', '.join(BLOCKS)}), "
                         f"not to {section}.backbone {backbone!r}; set it to 0")
    blocks = BLOCKS[backbone]
    if frozen_blocks > len(blocks):
        raise ValueError(f"{section}.frozen_blocks must be at most {len(blocks)} for {backbone} "
                         f"(its blocks: {', '.join(blocks)}), got {frozen_blocks}")


def imagenet_weights(backbone: str):
    """torchvision's ImageNet weights entry of `backbone` (a `torchvision.models.WeightsEnum` member)."""
    import torchvision.models

    return getattr(getattr(torchvision.models, WEIGHTS[backbone]), IMAGENET)


def weights_path(backbone: str) -> Path:
    """Where torch's hub cache keeps `backbone`'s ImageNet weights (whether or not the file is there)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(imagenet_weights(backbone).url)


def require_pretrained_weights(config: WantsWeights, section: str = "train") -> Path | None:
    """The weights file `config` starts from (None when it needs none); FileNotFoundError, in one line
    naming the file, its URL and where to put it, when it is not in torch's hub cache. Never downloads.

    The train stage and cross-validation call it before any work, so that a missing file
    stops them at once rather than after the faces are read."""
    if config.pretrained == "none" or config.backbone not in WEIGHTS:
        return None
    return _cached_weights(config.backbone, config.pretrained, section)


def _cached_weights(backbone: str, pretrained: str, section: str) -> Path:
    path = weights_path(backbone)
    if not path.is_file():
        raise FileNotFoundError(
            f"{section}.pretrained: {pretrained} needs {path} (torchvision's {WEIGHTS[backbone]}.{IMAGENET}), "
            f"which is not there and facesim does not download: download {imagenet_weights(backbone).url} on a "
            f"machine that has a network and place it there, or set TORCH_HOME to a folder whose hub/checkpoints "
            f"holds it")
    return path


def imagenet_state_dict(backbone: str, section: str = "train") -> dict[str, Tensor]:
    """torchvision's ImageNet state dict of `backbone`, read from torch's hub cache (the one-line
    error of `require_pretrained_weights` when it is not there)."""
    return torch.load(_cached_weights(backbone, "imagenet", section), map_location="cpu", weights_only=True)


def _grey_stem(rgb_stem: nn.Conv2d) -> nn.Conv2d:
    """A 1-channel conv shaped like `rgb_stem`, initialised as torchvision initialises its convs."""
    stem = nn.Conv2d(1, rgb_stem.out_channels, kernel_size=rgb_stem.kernel_size, stride=rgb_stem.stride,
                     padding=rgb_stem.padding, bias=rgb_stem.bias is not None)
    # ResNet's init; EfficientNet's (leaky_relu with slope 0, the default) has the same gain
    nn.init.kaiming_normal_(stem.weight, mode="fan_out", nonlinearity="relu")
    return stem


class TorchvisionBackbone(nn.Module):
    """A torchvision network for grey faces, ending in a Linear to the embedding.

    Its submodules are the torchvision network's, under their names, so that its state dict
    has torchvision's keys (a 1-channel stem, the embedding head). Subclasses build the
    network and say where its stem and head are.
    """

    name: ClassVar[str]  # the backbone's name in BLOCKS
    stem_weight: ClassVar[str]  # state dict key of the stem conv's weight
    head: ClassVar[str]  # the module that maps pooled features to the embedding

    def __init__(self, network: nn.Module, frozen_blocks: int) -> None:
        super().__init__()
        for child_name, child in network.named_children():
            self.add_module(child_name, child)
        check_frozen_blocks(self.name, frozen_blocks)
        self.frozen_blocks = frozen_blocks
        for module in self.frozen_modules():
            module.requires_grad_(False)

    def frozen_modules(self) -> list[nn.Module]:
        """The modules of the first `frozen_blocks` blocks."""
        return [self.get_submodule(part) for block in BLOCKS[self.name][: self.frozen_blocks]
                for part in block.split("+")]

    def train(self, mode: bool = True) -> TorchvisionBackbone:
        """As nn.Module.train, but frozen blocks stay in eval mode (their BatchNorm statistics fixed)."""
        super().train(mode)
        for module in self.frozen_modules():
            module.train(False)
        return self

    def load_imagenet(self, state: dict[str, Tensor]) -> None:
        """Take torchvision's ImageNet weights: all but the classifier, the RGB stem summed into one channel."""
        head = f"{self.head}."
        try:
            weights = {key: value for key, value in state.items() if not key.startswith(head)}
            weights[self.stem_weight] = state[self.stem_weight].sum(dim=1, keepdim=True)
            # the embedding head keeps its own initialisation
            weights.update({key: value for key, value in self.state_dict().items() if key.startswith(head)})
            self.load_state_dict(weights)
        except (KeyError, RuntimeError) as exc:
            first_line = str(exc).strip().splitlines()[0]
            raise ValueError(f"{weights_path(self.name)}: not torchvision's {WEIGHTS[self.name]}.{IMAGENET} "
                             f"weights ({first_line}); download it again") from None


class GreyResNet18(TorchvisionBackbone):
    """torchvision's ResNet-18 with a 1-channel stem and a Linear to the embedding as `fc`."""

    name, stem_weight, head = "resnet18", "conv1.weight", "fc"

    def __init__(self, embedding_dim: int, frozen_blocks: int = 0) -> None:
        from torchvision.models import resnet18

        network = resnet18(weights=None)
        network.conv1 = _grey_stem(network.conv1)
        network.fc = nn.Linear(network.fc.in_features, embedding_dim)
        super().__init__(network, frozen_blocks)

    def forward(self, x: Tensor) -> Tensor:
        # torchvision's ResNet.forward
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class GreyEfficientNetB0(TorchvisionBackbone):
    """torchvision's EfficientNet-B0 with a 1-channel stem (`features[0][0]`) and a Linear to the
    embedding as the classifier's last layer (after torchvision's dropout)."""

    name, stem_weight, head = "efficientnet_b0", "features.0.0.weight", "classifier"

    def __init__(self, embedding_dim: int, frozen_blocks: int = 0) -> None:
        from torchvision.models import efficientnet_b0

        network = efficientnet_b0(weights=None)
        network.features[0][0] = _grey_stem(network.features[0][0])
        network.classifier[-1] = nn.Linear(network.classifier[-1].in_features, embedding_dim)
        super().__init__(network, frozen_blocks)

    def forward(self, x: Tensor) -> Tensor:
        # torchvision's EfficientNet.forward
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


TORCHVISION_CLASSES: dict[str, type[TorchvisionBackbone]] = {"resnet18": GreyResNet18,
                                                             "efficientnet_b0": GreyEfficientNetB0}


def torchvision_backbone(backbone: str, embedding_dim: int, frozen_blocks: int = 0) -> TorchvisionBackbone:
    """A randomly initialised torchvision backbone for grey faces (seed torch before calling); its
    ImageNet weights, where wanted, are loaded afterwards with `load_imagenet`."""
    if backbone not in TORCHVISION_CLASSES:
        raise ValueError(f"not a torchvision backbone: {backbone!r}; expected one of {', '.join(TORCHVISION_CLASSES)}")
    return TORCHVISION_CLASSES[backbone](embedding_dim, frozen_blocks)
