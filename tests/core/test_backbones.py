"""facesim.core.backbones: torchvision's ResNet-18 and EfficientNet-B0 for grey faces, their ImageNet
weights from torch's hub cache, frozen blocks.

No network here: the "ImageNet" files are randomly initialised torchvision networks saved under the
exact names torchvision's weights API gives, in a temporary TORCH_HOME, so the real loading path runs.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from torch import nn

from helpers import model_config, modules_imported_by, tiny_train_params, tiny_training_data
from facesim.core.backbones import BLOCKS, require_pretrained_weights, weights_path
from facesim.core.data import Preprocess
from facesim.core.checkpoint import load_checkpoint
from facesim.core.models import ModelConfig, build_embedding_net
from facesim.training.fit import fit

pytestmark = pytest.mark.usefixtures("torch_global_state")

FILES = {"resnet18": "resnet18-f37072fd.pth", "efficientnet_b0": "efficientnet_b0_rwightman-7f5810bc.pth"}
BACKBONES = tuple(FILES)


def torchvision_network(backbone: str, seed: int = 1) -> nn.Module:
    """torchvision's own network (RGB stem, 1000 classes), randomly initialised from `seed`."""
    import torchvision.models

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return getattr(torchvision.models, backbone)(weights=None)


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, dict[str, torch.Tensor]]]:
    """(a TORCH_HOME whose hub cache holds a stand-in ImageNet file of both backbones, their state dicts)."""
    home = tmp_path_factory.mktemp("torch_home")
    (home / "hub" / "checkpoints").mkdir(parents=True)
    states = {}
    for backbone, file in FILES.items():
        states[backbone] = torchvision_network(backbone).state_dict()
        torch.save(states[backbone], home / "hub" / "checkpoints" / file)
    return home, states


@pytest.fixture
def weights(hub, monkeypatch: pytest.MonkeyPatch) -> dict[str, dict[str, torch.Tensor]]:
    """TORCH_HOME set to `hub`'s folder; the files' state dicts."""
    monkeypatch.setenv("TORCH_HOME", str(hub[0]))
    return hub[1]


@pytest.fixture
def no_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """TORCH_HOME set to an empty folder."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))
    return tmp_path / "empty_torch_home"


def config(backbone: str, **changes) -> ModelConfig:
    return model_config(backbone=backbone, embedding_dim=8, **changes)


def block_prefixes(backbone: str, blocks: slice) -> tuple[str, ...]:
    """State dict key prefixes of an EmbeddingNet's backbone blocks."""
    return tuple(f"backbone.{part}." for block in BLOCKS[backbone][blocks] for part in block.split("+"))


# ---- weights from torch's hub cache ----------------------------------------------------------


def test_weights_are_looked_up_in_torch_home_by_torchvisions_file_names(hub, weights):
    for backbone, file in FILES.items():
        assert weights_path(backbone) == hub[0] / "hub" / "checkpoints" / file
        assert require_pretrained_weights(config(backbone, pretrained="imagenet")) == weights_path(backbone)
    assert require_pretrained_weights(config("resnet18")) is None  # pretrained: none needs no file
    assert require_pretrained_weights(model_config()) is None


@pytest.mark.parametrize("backbone, enum", [("resnet18", "ResNet18_Weights"),
                                            ("efficientnet_b0", "EfficientNet_B0_Weights")])
def test_a_missing_weights_file_is_one_line_naming_it_and_where_it_goes(no_weights, backbone, enum):
    wanted = no_weights / "hub" / "checkpoints" / FILES[backbone]
    with pytest.raises(FileNotFoundError) as error:
        build_embedding_net(config(backbone, pretrained="imagenet"))
    message = str(error.value)
    assert "\n" not in message and message.startswith("train.pretrained: imagenet needs ")
    assert str(wanted) in message and f"{enum}.IMAGENET1K_V1" in message and "TORCH_HOME" in message
    assert f"https://download.pytorch.org/models/{FILES[backbone]}" in message
    with pytest.raises(FileNotFoundError, match="does not download"):
        require_pretrained_weights(config(backbone, pretrained="imagenet"))
    assert not wanted.exists()


@pytest.mark.parametrize("backbone", BACKBONES)
def test_imagenet_weights_are_the_files_with_the_rgb_stem_summed_to_grey(weights, backbone):
    torch.manual_seed(0)
    network = build_embedding_net(config(backbone, pretrained="imagenet")).eval()
    file = weights[backbone]
    ours = {key.removeprefix("backbone."): value for key, value in network.state_dict().items()}
    stem, head = network.backbone.stem_weight, f"{network.backbone.head}."
    assert ours[stem].shape[1] == 1 and torch.allclose(ours[stem], file[stem].sum(dim=1, keepdim=True))
    same = [key for key in file if key != stem and not key.startswith(head)]
    assert same and all(torch.equal(ours[key], file[key]) for key in same)
    assert {key for key in ours if key.startswith(head)} == {key for key in file if key.startswith(head)}
    assert ours[f"{head}weight" if backbone == "resnet18" else f"{head}1.weight"].shape[0] == 8  # the embedding

    # the grey face through the summed stem = the grey face repeated into RGB through torchvision's network
    reference = torchvision_network(backbone)
    reference.load_state_dict(file)
    reference.eval()
    setattr(reference, network.backbone.head, nn.Identity())
    setattr(network.backbone, network.backbone.head, nn.Identity())
    faces = torch.randn(3, 1, 40, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.allclose(network(faces), reference(faces.repeat(1, 3, 1, 1)), atol=1e-4)


def test_a_weights_file_of_another_network_is_named(weights, tmp_path, monkeypatch):
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save(weights["efficientnet_b0"], checkpoints / FILES["resnet18"])
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(ValueError, match=r"resnet18-f37072fd.pth: not torchvision's ResNet18_Weights.IMAGENET1K_V1"):
        build_embedding_net(config("resnet18", pretrained="imagenet"))


def test_an_ensemble_starts_every_member_from_the_weights(weights):
    ensemble = build_embedding_net(config("resnet18", pretrained="imagenet", members=2))
    for member in ensemble.members:
        assert torch.equal(member.backbone.layer1[0].conv1.weight, weights["resnet18"]["layer1.0.conv1.weight"])


def test_a_checkpoint_of_a_pretrained_network_loads_without_the_weights_file(weights, monkeypatch, tmp_path):
    torch.manual_seed(0)
    trained = config("resnet18", pretrained="imagenet", frozen_blocks=2, input_height=40, input_width=32)
    network = build_embedding_net(trained).eval()
    path = tmp_path / "model.pt"
    torch.save({"model_state": network.state_dict(), "model_config": trained.to_dict(),
                "preprocess": Preprocess().to_dict(), "epoch": 1}, path)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "nothing_here"))
    loaded, checkpoint = load_checkpoint(path)
    assert loaded.config == trained and checkpoint["model_config"]["pretrained"] == "imagenet"
    faces = torch.randn(2, 1, 40, 32)
    with torch.no_grad():
        assert torch.equal(loaded(faces), network(faces))


def test_importing_models_leaves_torchvision_unimported():
    assert modules_imported_by("facesim.core.models", ["torchvision"]) == []


# ---- shapes --------------------------------------------------------------------------------------


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("height, width", [(64, 64), (40, 32), (16, 16)])
def test_grey_faces_give_one_embedding_each(backbone, height, width):
    # (16, 16) is the smallest side any backbone takes; at 40x32 the last stage of both
    # (32x downsampling, rounded up) works on 2x1 pixels
    torch.manual_seed(0)
    network = build_embedding_net(config(backbone, input_height=height, input_width=width))
    assert network.backbone.get_submodule(network.backbone.stem_weight.removesuffix(".weight")).in_channels == 1
    with torch.no_grad():
        assert network(torch.randn(2, 1, height, width)).shape == (2, 8)


# ---- frozen blocks -----------------------------------------------------------------------------


@pytest.mark.parametrize("backbone, frozen", [("resnet18", 2), ("efficientnet_b0", 3)])
def test_frozen_blocks_keep_their_weights_and_batchnorm_statistics_while_later_blocks_learn(backbone, frozen):
    torch.manual_seed(0)
    network = build_embedding_net(config(backbone, frozen_blocks=frozen)).train()
    frozen_keys = block_prefixes(backbone, slice(None, frozen))
    next_block = block_prefixes(backbone, slice(frozen, frozen + 1))
    frozen_parts = [part for block in BLOCKS[backbone][:frozen] for part in block.split("+")]
    for name, module in network.backbone.named_modules():  # frozen blocks stay in eval mode
        assert module.training == (not any(name == p or name.startswith(f"{p}.") for p in frozen_parts)), name
    assert all(p.requires_grad == (not name.startswith(frozen_keys)) for name, p in network.named_parameters())
    before = {name: tensor.clone() for name, tensor in network.state_dict().items()}

    optimizer = torch.optim.Adam(network.parameters(), lr=1e-2)
    faces = torch.randn(4, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    network(faces).pow(2).sum().backward()
    optimizer.step()

    after = network.state_dict()
    kept = [name for name in before if name.startswith(frozen_keys)]
    assert any(name.endswith("running_mean") for name in kept) and any(name.endswith("weight") for name in kept)
    assert all(torch.equal(after[name], before[name]) for name in kept)
    learnt = [name for name in before if name.startswith(next_block) and name.endswith(("running_mean", "weight"))]
    assert learnt and all(not torch.equal(after[name], before[name]) for name in learnt)
    network.eval()
    network.train()  # and again after a round through eval mode
    assert not network.backbone.get_submodule(BLOCKS[backbone][0].split("+")[0]).training


@pytest.mark.parametrize("backbone", BACKBONES)
def test_every_block_frozen_trains_the_head_alone(backbone):
    network = build_embedding_net(config(backbone, frozen_blocks=len(BLOCKS[backbone])))
    head = f"backbone.{network.backbone.head}."
    trained = [name for name, p in network.named_parameters() if p.requires_grad]
    assert trained and all(name.startswith(head) for name in trained)


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(backbone="resnet18", frozen_blocks=6), "train.frozen_blocks must be at most 5 for resnet18"),
        (dict(backbone="efficientnet_b0", frozen_blocks=10), "train.frozen_blocks must be at most 9 for efficientnet_b0"),
        (dict(backbone="compact", frozen_blocks=1), "train.frozen_blocks applies to the torchvision backbones"),
        (dict(backbone="resnet18", frozen_blocks=-1), "train.frozen_blocks must be an integer >= 0"),
        (dict(backbone="compact", pretrained="imagenet"), "train.pretrained: imagenet needs a torchvision backbone"),
        (dict(backbone="resnet18", pretrained="coco"), "train.pretrained must be one of none, imagenet"),
    ],
)
def test_bad_frozen_blocks_or_pretrained_names_the_field(changes, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(model_config(), **changes).validate()


# ---- training --------------------------------------------------------------------------------------


def test_fit_fine_tunes_a_pretrained_backbone_end_to_end(weights, tmp_path):
    params = tiny_train_params(backbone="resnet18", pretrained="imagenet", frozen_blocks=3, epochs=1,
                               batch_size=64, seed=3)
    _, tables, faces = tiny_training_data(tmp_path)
    result = fit("contrastive", params, tables, faces, log=lambda _: None)
    assert len(result.history) == 1 and result.history[["train_loss", "val_loss"]].notna().all().all()
    assert result.checkpoint["model_config"]["pretrained"] == "imagenet"
    state = result.model.state_dict()
    file = weights["resnet18"]
    assert torch.equal(state["backbone.layer2.0.conv1.weight"], file["layer2.0.conv1.weight"])  # frozen
    assert torch.equal(state["backbone.bn1.running_var"], file["bn1.running_var"])
    assert not torch.equal(state["backbone.layer3.0.conv1.weight"], file["layer3.0.conv1.weight"])  # fine-tuned
