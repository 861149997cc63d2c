"""FLOPs per face of a network: what the roofline (`roofline.py`) and the measurements divide by."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def count_flops(model: nn.Module, input_height: int, input_width: int) -> int:
    """FLOPs (2 x multiply-adds) of the Conv2d and Linear layers for one 1-channel face.

    Biases, normalisation, activations and pooling are not counted. The dlib backbone's network is dlib's,
    not torch's: there is nothing here to count, and its head takes descriptors, not faces.
    """
    config = getattr(model, "config", None)
    if getattr(config, "backbone", None) == "dlib":
        raise ValueError("count_flops: the dlib backbone runs dlib's own network, which torch cannot count")
    flops = 0

    def count_conv(module: nn.Conv2d, _inputs: tuple[Tensor, ...], output: Tensor) -> None:
        nonlocal flops
        kernel_height, kernel_width = module.kernel_size
        inputs_per_output = module.in_channels // module.groups
        multiply_adds_per_output = inputs_per_output * kernel_height * kernel_width
        flops += 2 * output.numel() * multiply_adds_per_output

    def count_linear(module: nn.Linear, _inputs: tuple[Tensor, ...], output: Tensor) -> None:
        nonlocal flops
        flops += 2 * output.numel() * module.in_features

    handles = []
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            handles.append(module.register_forward_hook(count_conv))
        elif isinstance(module, nn.Linear):
            handles.append(module.register_forward_hook(count_linear))
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    was_training = model.training
    try:
        # eval mode so that BatchNorm neither needs a batch > 1 nor updates its statistics
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, 1, input_height, input_width, device=device))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return int(flops)
