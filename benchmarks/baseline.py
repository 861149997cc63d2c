"""The classic PyTorch "one-shot Siamese" network, written for the benchmark as a new user runs it.

Faithful to the tutorial the dataset's repository follows: `ImageFolder` with
images opened by PIL on every item, resized to 100x100, a random pair per item
(half same person, half different), 370 pairs per epoch (one per training
image), batches of 64 from a `DataLoader` with one worker, three reflection-
padded 3x3 convs (4, 8, 8 channels, ReLU then BatchNorm), fully connected
80000 -> 500 -> 500 -> 5, contrastive loss with margin 2.0 (label 1 = different
people), Adam at 5e-4.
"""

from __future__ import annotations

import random

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import datasets, transforms

SIZE = 100
TRANSFORM = transforms.Compose([transforms.Resize((SIZE, SIZE)), transforms.ToTensor()])


class SiameseNetworkDataset(Dataset):
    """One random pair per item: the first image at random, a same-person partner half the time."""

    def __init__(self, folder: datasets.ImageFolder, transform=TRANSFORM):
        self.folder = folder
        self.transform = transform

    def __getitem__(self, index):
        img0_tuple = random.choice(self.folder.imgs)
        same = random.randint(0, 1)
        while True:
            img1_tuple = random.choice(self.folder.imgs)
            if (img0_tuple[1] == img1_tuple[1]) == bool(same):
                break
        img0 = self.transform(Image.open(img0_tuple[0]).convert("L"))
        img1 = self.transform(Image.open(img1_tuple[0]).convert("L"))
        return img0, img1, torch.from_numpy(np.array([int(img1_tuple[1] != img0_tuple[1])], dtype=np.float32))

    def __len__(self):
        return len(self.folder.imgs)


class PathDataset(Dataset):
    """Images by path, opened with PIL per item (how the tutorial embeds faces)."""

    def __init__(self, paths, transform=TRANSFORM):
        self.paths = list(paths)
        self.transform = transform

    def __getitem__(self, index):
        return self.transform(Image.open(self.paths[index]).convert("L"))

    def __len__(self):
        return len(self.paths)


class SiameseNetwork(nn.Module):
    def __init__(self):
        super().__init__()
        self.cnn1 = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(1, 4, kernel_size=3), nn.ReLU(inplace=True), nn.BatchNorm2d(4),
            nn.ReflectionPad2d(1), nn.Conv2d(4, 8, kernel_size=3), nn.ReLU(inplace=True), nn.BatchNorm2d(8),
            nn.ReflectionPad2d(1), nn.Conv2d(8, 8, kernel_size=3), nn.ReLU(inplace=True), nn.BatchNorm2d(8),
        )
        self.fc1 = nn.Sequential(
            nn.Linear(8 * SIZE * SIZE, 500), nn.ReLU(inplace=True),
            nn.Linear(500, 500), nn.ReLU(inplace=True),
            nn.Linear(500, 5),
        )

    def forward_once(self, x):
        output = self.cnn1(x)
        return self.fc1(output.view(output.size()[0], -1))

    def forward(self, input1, input2):
        return self.forward_once(input1), self.forward_once(input2)


class Embedder(nn.Module):
    """forward_once as a module of its own, for FLOP counting."""

    def __init__(self, net: SiameseNetwork):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net.forward_once(x)


class ContrastiveLoss(nn.Module):
    """Label 1 = different people (the tutorial's convention)."""

    def __init__(self, margin: float = 2.0):
        super().__init__()
        self.margin = margin

    def forward(self, output1, output2, label):
        d = F.pairwise_distance(output1, output2, keepdim=True)
        return torch.mean((1 - label) * d.pow(2) + label * torch.clamp(self.margin - d, min=0.0).pow(2))


def train_loader(training_dir: str, seed: int) -> DataLoader:
    random.seed(seed)
    torch.manual_seed(seed)
    folder = datasets.ImageFolder(root=training_dir)
    return DataLoader(SiameseNetworkDataset(folder), shuffle=True, num_workers=1, batch_size=64)


def embed(net: SiameseNetwork, paths, batch_size: int = 64) -> torch.Tensor:
    """Embeddings of images by path, through a one-worker DataLoader, without autograd."""
    net.eval()
    loader = DataLoader(PathDataset(paths), batch_size=batch_size, num_workers=1)
    with torch.no_grad():
        out = torch.cat([net.forward_once(x) for x in loader])
    net.train()
    return out
