"""facesim.core.models: the embedding networks, their configs, FLOPs, folded batch norm, embedding in batches."""

import dataclasses
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

from helpers import counting_net
from facesim.core.model_files import ModelError
from facesim.core.models import (
    CompactCNN,
    ModelConfig,
    build_embedding_net,
    count_flops,
    embed_all,
    fold_batchnorm,
    inference_device,
    load_checkpoint,
)

SMALL_COMPACT = dict(backbone="compact", embedding_dim=8, channels=(4, 8, 8, 16))


def embed(config: ModelConfig, height: int, width: int, batch: int = 2) -> torch.Tensor:
    torch.manual_seed(0)
    network = build_embedding_net(config).eval()
    with torch.no_grad():
        return network(torch.randn(batch, 1, height, width))


# ---- shapes ----------------------------------------------------------------------


@pytest.mark.parametrize("height, width", [(112, 92), (56, 46), (16, 16)])
def test_compact_output_shape(height, width):
    assert embed(ModelConfig(**SMALL_COMPACT), height, width).shape == (2, 8)


def test_compact_with_default_widths_at_full_size():
    assert embed(ModelConfig(), 112, 92).shape == (2, 64)


@pytest.mark.parametrize("height, width", [(112, 92), (28, 23)])
def test_resnet18_output_shape(height, width):
    assert embed(ModelConfig(backbone="resnet18", embedding_dim=16), height, width).shape == (2, 16)


def test_resnet18_takes_one_channel_and_has_no_classifier_head_left():
    network = build_embedding_net(ModelConfig(backbone="resnet18", embedding_dim=16))
    assert network.backbone.conv1.in_channels == 1
    assert network.backbone.fc.in_features == 512 and network.backbone.fc.out_features == 16


def test_compact_cnn_structure():
    network = CompactCNN(embedding_dim=8, channels=(4, 6))
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
    config = ModelConfig(backbone=backbone, embedding_dim=8, channels=(4, 8), normalize=True)
    norms = embed(config, 32, 32, batch=3).norm(dim=1)
    assert torch.allclose(norms, torch.ones(3), atol=1e-5)


def test_without_normalize_norms_are_not_forced_to_one():
    norms = embed(ModelConfig(**SMALL_COMPACT), 32, 32, batch=3).norm(dim=1)
    assert not torch.allclose(norms, torch.ones(3), atol=1e-3)


# ---- bad input and bad config -------------------------------------------------------


@pytest.mark.parametrize(
    "shape", [(2, 3, 32, 32), (2, 32, 32), (0, 1, 32, 32), (2, 1, 8, 32)]
)
def test_embedding_net_rejects_bad_input(shape):
    network = build_embedding_net(ModelConfig(**SMALL_COMPACT))
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
    config = dataclasses.replace(ModelConfig(), **changes)
    with pytest.raises(ValueError, match=message):
        config.validate()
    with pytest.raises(ValueError, match=message):
        build_embedding_net(config)


def test_validate_accepts_the_defaults_and_uses_the_given_section():
    ModelConfig().validate()
    with pytest.raises(ValueError, match="model.backbone"):
        ModelConfig(backbone="vgg").validate(section="model")


# ---- config round trip ----------------------------------------------------------------


def test_config_round_trips_through_a_plain_dict():
    config = ModelConfig(backbone="resnet18", embedding_dim=32, input_height=56, input_width=46,
                         channels=(8, 16, 32), normalize=True)
    as_dict = config.to_dict()
    assert as_dict["channels"] == [8, 16, 32]  # plain list, JSON/YAML friendly
    assert ModelConfig.from_dict(as_dict) == config


def test_from_dict_rejects_unknown_keys_and_bad_values():
    with pytest.raises(ValueError, match=r"unknown model config keys \['embeding_dim'\]"):
        ModelConfig.from_dict({"embeding_dim": 32})
    with pytest.raises(ValueError, match="train.embedding_dim"):
        ModelConfig.from_dict({"embedding_dim": -3})


# ---- FLOPs ---------------------------------------------------------------------------


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
    config = ModelConfig(embedding_dim=3, channels=(2, 4), convs_per_block=2, input_height=16, input_width=16)
    # block 1 at 16x16 (256 px): 1->2 conv 2*9*1 = 18 MACs/px, 2->2 conv 2*9*2 = 36 MACs/px
    # block 2 at 8x8 (64 px):    2->4 conv 4*9*2 = 72,         4->4 conv 4*9*4 = 144
    # head 4 -> 3: 12 MACs
    # MACs = 256*(18+36) + 64*(72+144) + 12 = 13824 + 13824 + 12 = 27660 -> 55320 FLOPs
    assert count_flops(build_embedding_net(config), 16, 16) == 55320
    # one conv per block: 256*18 + 64*72 + 12 = 4608 + 4608 + 12 = 9228 MACs -> 18456 FLOPs
    single = dataclasses.replace(config, convs_per_block=1)
    assert count_flops(build_embedding_net(single), 16, 16) == 18456


# ---- folding BatchNorm for inference ----------------------------------------------------


def with_trained_batchnorm(network: nn.Module, seed: int = 0) -> nn.Module:
    """BatchNorm statistics and affine parameters away from the identity, as after training."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in network.modules():
            if isinstance(module, nn.BatchNorm2d):
                n = module.num_features
                module.running_mean.copy_(torch.randn(n, generator=generator) * 0.3)
                module.running_var.copy_(torch.rand(n, generator=generator) * 1.5 + 0.5)
                module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(n, generator=generator) * 0.2)
    return network


def test_fold_batchnorm_of_one_pair_by_hand():
    conv = nn.Conv2d(1, 1, kernel_size=1, bias=False)
    bn = nn.BatchNorm2d(1, eps=0.0)
    with torch.no_grad():
        conv.weight.fill_(2.0)
        bn.running_mean.fill_(1.0)
        bn.running_var.fill_(4.0)
        bn.weight.fill_(3.0)
        bn.bias.fill_(0.5)
    # eval BatchNorm of the conv: 3 * (2x - 1) / sqrt(4) + 0.5 = 3x - 1
    folded = fold_batchnorm(nn.Sequential(conv, bn, nn.ReLU()))
    assert isinstance(folded[1], nn.Identity)
    assert folded[0].weight.item() == 3.0 and folded[0].bias.item() == -1.0
    x = torch.tensor([-1.0, 0.0, 0.5, 2.0]).view(4, 1, 1, 1)
    assert folded(x).flatten().tolist() == [0.0, 0.0, 0.5, 5.0]  # relu(3x - 1)


@pytest.mark.parametrize(
    "config",
    [ModelConfig(input_height=40, input_width=32), ModelConfig(**SMALL_COMPACT, convs_per_block=2, normalize=True),
     ModelConfig(backbone="resnet18", embedding_dim=16),
     ModelConfig(backbone="efficientnet_b0", embedding_dim=16, frozen_blocks=2)],
)
def test_fold_batchnorm_gives_the_same_embeddings_and_leaves_the_model_alone(config):
    torch.manual_seed(0)
    network = with_trained_batchnorm(build_embedding_net(config)).train()
    before = {name: tensor.clone() for name, tensor in network.state_dict().items()}
    folded = fold_batchnorm(network)
    assert network.training and not folded.training
    assert network.state_dict().keys() == before.keys()
    assert all(torch.equal(network.state_dict()[name], tensor) for name, tensor in before.items())
    if config.backbone == "compact":
        assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    faces = torch.randn(5, 1, 40, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = network.eval()(faces)
        assert torch.allclose(folded(faces), expected, atol=1e-5)


def test_fold_batchnorm_keeps_a_batchnorm_without_running_statistics():
    # such a BatchNorm normalises by each batch's own statistics, even in eval mode
    network = nn.Sequential(nn.Conv2d(1, 2, kernel_size=3), nn.BatchNorm2d(2, track_running_stats=False))
    folded = fold_batchnorm(network)
    assert isinstance(folded[1], nn.BatchNorm2d)
    faces = torch.randn(4, 1, 6, 6, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(folded(faces), network.eval()(faces), atol=1e-6)


def test_embed_all_equals_the_unfolded_eval_model():
    torch.manual_seed(0)
    network = with_trained_batchnorm(build_embedding_net(ModelConfig(input_height=40, input_width=32)))
    faces = torch.randn(300, 1, 40, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = network.eval()(faces)
    assert torch.allclose(embed_all(network, faces, batch_size=128), expected, atol=1e-4)
    assert any(isinstance(m, nn.BatchNorm2d) for m in network.modules())


def test_embed_all_batches_every_image_in_order_without_grad():
    model = counting_net().train()
    images = torch.randn(7, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    embeddings = embed_all(model, images, batch_size=3)
    assert model.batch_sizes == [3, 3, 1] and not model.training
    assert embeddings.shape == (7, 8) and not embeddings.requires_grad
    with torch.no_grad():
        assert torch.allclose(embeddings, model.net(images), atol=1e-6)


def test_embed_all_of_no_images_is_an_empty_matrix_of_the_embedding_width():
    ensemble = build_embedding_net(ModelConfig(channels=(4, 8), embedding_dim=8, members=3))
    assert embed_all(ensemble, torch.zeros(0, 1, 40, 32)).shape == (0, 24)


def test_load_checkpoint_names_a_missing_or_foreign_file(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="absent.pt"):
        load_checkpoint(tmp_path / "absent.pt")
    # a text file named .pt: said in words, not in the unpickler's (`KeyError: 101`, `pop from empty list`)
    for text in (b"not a checkpoint", b"hello world\n", b""):
        junk = tmp_path / "junk.pt"
        junk.write_bytes(text)
        with pytest.raises(ModelError, match=r"^\S*junk\.pt: not a facesim model \(not a PyTorch checkpoint: "
                                             r"torch\.save writes a zip archive, and this file is none\); give a "
                                             r"\.pt checkpoint the train stage wrote, or a \.onnx") as caught:
            load_checkpoint(junk)
        assert "pop from empty list" not in str(caught.value) and "KeyError" not in str(caught.value)
    foreign = tmp_path / "foreign.pt"
    torch.save({"model_state": {}}, foreign)
    with pytest.raises(ModelError, match=r"foreign\.pt: not a facesim model \(a PyTorch file missing epoch, "
                                         r"model_config, preprocess\)"):
        load_checkpoint(foreign)
    torch.save([1, 2], foreign)
    with pytest.raises(ModelError, match="not a facesim model"):
        load_checkpoint(foreign)
    archive = tmp_path / "archive.pt"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("notes.txt", "a zip, but no checkpoint")
    with pytest.raises(ModelError, match=r"archive\.pt: not a facesim model \(a zip archive torch cannot read"):
        load_checkpoint(archive)


@pytest.mark.parametrize("trained_on, cuda, expected", [
    ("auto", False, "cpu"), ("auto", True, "cuda"), ("cuda", True, "cuda"), ("cpu", True, "cpu"), (None, True, "cuda"),
])
def test_stages_embed_on_cuda_when_present_and_training_allowed_it(monkeypatch, trained_on, cuda, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    checkpoint = {} if trained_on is None else {"params": {"device": trained_on}}
    assert inference_device(checkpoint) == torch.device(expected)
