"""facesim.core.models: the embedding networks and their configs."""

import dataclasses

import pytest
import torch
from torch import nn

from helpers import model_config
from facesim.core.models import CompactCNN, ModelConfig, build_embedding_net

SMALL_COMPACT = dict(backbone="compact", embedding_dim=8, channels=(4, 8, 8, 16))


def embed(config: ModelConfig, height: int, width: int, batch: int = 2) -> torch.Tensor:
    torch.manual_seed(0)
    network = build_embedding_net(config).eval()
    with torch.no_grad():
        return network(torch.randn(batch, 1, height, width))


# ---- shapes ----------------------------------------------------------------------


@pytest.mark.parametrize("height, width", [(112, 92), (56, 46), (16, 16)])
def test_compact_output_shape(height, width):
    assert embed(model_config(**SMALL_COMPACT), height, width).shape == (2, 8)


def test_compact_with_default_widths_at_full_size():
    assert embed(model_config(), 112, 92).shape == (2, 64)


@pytest.mark.parametrize("height, width", [(112, 92), (28, 23)])
def test_resnet18_output_shape(height, width):
    assert embed(model_config(backbone="resnet18", embedding_dim=16), height, width).shape == (2, 16)


def test_resnet18_takes_one_channel_and_has_no_classifier_head_left():
    network = build_embedding_net(model_config(backbone="resnet18", embedding_dim=16))
    assert network.backbone.conv1.in_channels == 1
    assert network.backbone.fc.in_features == 512 and network.backbone.fc.out_features == 16


def test_compact_cnn_structure():
    network = CompactCNN(embedding_dim=8, channels=(4, 6), convs_per_block=1)
    convs = [m for m in network.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(1, 4), (4, 6)]
    assert all(c.bias is None for c in convs)
    assert sum(isinstance(m, nn.MaxPool2d) for m in network.modules()) == 1
    assert network.head.in_features == 6


def test_compact_cnn_two_convs_per_block():
    network = CompactCNN(embedding_dim=8, channels=(4, 6), convs_per_block=2)
    convs = [m for m in network.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(1, 4), (4, 4), (4, 6), (6, 6)]
    assert all(c.bias is None for c in convs)
    assert sum(isinstance(m, nn.MaxPool2d) for m in network.modules()) == 1
    assert network.head.in_features == 6


@pytest.mark.parametrize("train", [False, True])
def test_compact_cnn_pools_before_relu_with_the_numbers_of_relu_before_pooling(train):
    torch.manual_seed(0)
    network = CompactCNN(embedding_dim=5, channels=(4, 6), convs_per_block=2).train(train)
    for bn in (m for m in network.modules() if isinstance(m, nn.BatchNorm2d)):
        nn.init.normal_(bn.weight)  # negative scales too: BatchNorm stays before both
        nn.init.normal_(bn.bias)
    x = torch.randn(3, 1, 12, 10, requires_grad=True)
    conv0, bn0, _, conv1, bn1, _, _, conv2, bn2, _, conv3, bn3, _, _ = network.features
    reference = torch.relu(bn1(conv1(torch.relu(bn0(conv0(x))))))
    reference = torch.relu(bn3(conv3(torch.relu(bn2(conv2(nn.functional.max_pool2d(reference, 2)))))))
    reference = network.head(reference.mean(dim=(2, 3)))
    expected_grad = torch.autograd.grad(reference.sum(), x)[0]
    out = network(x)
    assert torch.allclose(out, reference, atol=1e-5)
    assert torch.allclose(torch.autograd.grad(out.sum(), x)[0], expected_grad, atol=1e-5)


# ---- normalisation ------------------------------------------------------------------


@pytest.mark.parametrize("backbone", ["compact", "resnet18"])
def test_normalize_gives_unit_norm_embeddings(backbone):
    config = model_config(backbone=backbone, embedding_dim=8, channels=(4, 8), normalize=True)
    norms = embed(config, 32, 32, batch=3).norm(dim=1)
    assert torch.allclose(norms, torch.ones(3), atol=1e-5)


def test_without_normalize_norms_are_not_forced_to_one():
    norms = embed(model_config(**SMALL_COMPACT), 32, 32, batch=3).norm(dim=1)
    assert not torch.allclose(norms, torch.ones(3), atol=1e-3)


# ---- bad input and bad config -------------------------------------------------------


@pytest.mark.parametrize(
    "shape", [(2, 3, 32, 32), (2, 32, 32), (0, 1, 32, 32), (2, 1, 8, 32)]
)
def test_embedding_net_rejects_bad_input(shape):
    network = build_embedding_net(model_config(**SMALL_COMPACT))
    with pytest.raises(ValueError, match=r"expected .*faces"):
        network(torch.zeros(shape))


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(backbone="vgg"), "train.backbone must be one of compact, resnet18, efficientnet_b0, dlib, got 'vgg'"),
        (dict(embedding_dim=0), "train.embedding_dim"),
        (dict(embedding_dim=True), "train.embedding_dim"),
        (dict(channels=()), "train.channels"),
        (dict(channels=(32, -1)), "train.channels"),
        (dict(input_height=8), "train.input_height must be an integer >= 16"),
        (dict(channels=(4,) * 6, input_width=20), "train.input_width must be an integer >= 32"),
        (dict(normalize="yes"), "train.normalize"),
    ],
)
def test_bad_config_names_the_field(changes, message):
    config = dataclasses.replace(model_config(), **changes)
    with pytest.raises(ValueError, match=message):
        config.validate()
    with pytest.raises(ValueError, match=message):
        build_embedding_net(config)


def test_validate_accepts_the_defaults_and_uses_the_given_section():
    model_config().validate()
    with pytest.raises(ValueError, match="model.backbone"):
        model_config(backbone="vgg").validate(section="model")


# ---- config round trip ----------------------------------------------------------------


def test_config_round_trips_through_a_plain_dict():
    config = model_config(backbone="resnet18", embedding_dim=32, input_height=56, input_width=46,
                         channels=(8, 16, 32), normalize=True)
    as_dict = config.to_dict()
    assert as_dict["channels"] == [8, 16, 32]  # plain list, JSON/YAML friendly
    assert ModelConfig.from_dict(as_dict) == config


def test_from_dict_rejects_unknown_keys_and_bad_values():
    with pytest.raises(ValueError, match=r"unknown model config keys \['embeding_dim'\]"):
        ModelConfig.from_dict({"embeding_dim": 32})
    with pytest.raises(ValueError, match="train.embedding_dim"):
        ModelConfig.from_dict({**model_config().to_dict(), "embedding_dim": -3})
    with pytest.raises(ValueError, match="model config without frozen_blocks, pretrained: not one a facesim"):
        ModelConfig.from_dict({k: v for k, v in model_config().to_dict().items() if k not in ("pretrained",
                                                                                             "frozen_blocks")})
