"""facesim.core.embedding: BatchNorm folded into the convolutions, every face embedded in batches."""

import pytest
import torch
from torch import nn

from helpers import counting_net, model_config
from facesim.core.embedding import embed_all, fold_batchnorm
from facesim.core.models import build_embedding_net


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
    [model_config(input_height=40, input_width=32),
     model_config(embedding_dim=8, channels=(4, 8, 8, 16), convs_per_block=2, normalize=True),
     model_config(backbone="resnet18", embedding_dim=16),
     model_config(backbone="efficientnet_b0", embedding_dim=16, frozen_blocks=2)],
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
    network = with_trained_batchnorm(build_embedding_net(model_config(input_height=40, input_width=32)))
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
    ensemble = build_embedding_net(model_config(channels=(4, 8), embedding_dim=8, members=3))
    assert embed_all(ensemble, torch.zeros(0, 1, 40, 32)).shape == (0, 24)
