"""benchmarks/flops.py: FLOPs per face, counted by hand on small networks."""

import dataclasses
import importlib.util

import pytest
from torch import nn

from helpers import REPO, model_config
from facesim.core.models import build_embedding_net

_SPEC = importlib.util.spec_from_file_location("flops", REPO / "benchmarks" / "flops.py")
flops = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(flops)
count_flops = flops.count_flops


def test_count_flops_of_one_conv_by_hand():
    conv = nn.Conv2d(1, 8, kernel_size=3)
    # output 8 x (10-2) x (12-2) = 640 values, each 1*3*3 = 9 multiply-adds
    # -> 5760 multiply-adds -> 11520 FLOPs
    assert count_flops(conv, 10, 12) == 11520


def test_count_flops_adds_linear_layers_and_restores_training_mode():
    model = nn.Sequential(nn.Conv2d(1, 8, kernel_size=3), nn.Flatten(), nn.Linear(640, 5))
    model.train()
    # conv 11520 + linear 2 * 640 * 5 = 6400
    assert count_flops(model, 10, 12) == 11520 + 6400
    assert model.training
    assert not any(module._forward_hooks for module in model.modules())


def test_count_flops_of_compact_cnn_by_hand():
    config = model_config(embedding_dim=3, channels=(2, 4), convs_per_block=2, input_height=16, input_width=16)
    # block 1 at 16x16 (256 px): 1->2 conv 2*9*1 = 18 MACs/px, 2->2 conv 2*9*2 = 36 MACs/px
    # block 2 at 8x8 (64 px):    2->4 conv 4*9*2 = 72,         4->4 conv 4*9*4 = 144
    # head 4 -> 3: 12 MACs
    # MACs = 256*(18+36) + 64*(72+144) + 12 = 13824 + 13824 + 12 = 27660 -> 55320 FLOPs
    assert count_flops(build_embedding_net(config), 16, 16) == 55320
    # one conv per block: 256*18 + 64*72 + 12 = 4608 + 4608 + 12 = 9228 MACs -> 18456 FLOPs
    single = dataclasses.replace(config, convs_per_block=1)
    assert count_flops(build_embedding_net(single), 16, 16) == 18456


def test_count_flops_refuses_the_dlib_backbone_in_words():
    with pytest.raises(ValueError, match="dlib's own network"):
        count_flops(build_embedding_net(model_config(backbone="dlib", embedding_dim=128)), 40, 32)
