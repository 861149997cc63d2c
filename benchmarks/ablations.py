"""What each speed-up gives: our contrastive model with one of them switched off at a time.

Training rates are those of the pipeline's own step: `facesim.training.fit` on one
network and the pair CSV, timed between its `on_step` calls. A switched-off
speed-up is an `Objective` of the benchmark's own that `fit` is given in the
place of the pipeline's (its `objectives` argument): everything else, the
batches, augmentation, fused Adam, is the pipeline's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import time
from pathlib import Path

from measure import best_rate, load_data

TIMED_STEPS = 6


class _Timed(Exception):
    """Raised from `on_step` once enough steps are timed: the rest of the epoch is not needed."""


class Nchw:
    """A network of `facesim.core.models` that embeds faces in the memory layout they come in (NCHW unless
    changed): its `embed`, without `forward`'s checks and switch to channels-last."""

    def __init__(self, network):
        self.network = network

    def parameters(self):
        return self.network.parameters()

    def __call__(self, x):
        return self.network.embed(x)


def embed_nchw(model, images, batch_size: int = 256) -> None:
    """`embed_all` (BatchNorm folded, inference mode, in batches) on NCHW faces through NCHW weights."""
    import torch

    from facesim.core.embedding import fold_batchnorm

    folded = fold_batchnorm(model)
    with torch.inference_mode():
        for i in range(0, len(images), batch_size):
            folded.embed(images[i : i + batch_size])


def before_objectives():
    """The switched-off states of the training step, as contrastive `Objective`s."""
    import torch

    from facesim.training.objectives import ContrastiveObjective

    class EveryFace(ContrastiveObjective):
        """The classic Siamese step: both faces of every pair through the network, a face as often as it
        is in the batch (the pipeline embeds each distinct face once)."""

        def train_loss(self, model, images, batch, augment, generator):
            rows = self._face_columns(batch)
            x = images[rows.reshape(-1)]
            if augment is not None:
                x = augment(x, generator)
            return self._csv_loss(model(x).view(*rows.shape, -1), batch)

    class ChannelsFirst(ContrastiveObjective):
        """The pipeline's step on NCHW tensors: the network's weights leave channels-last before its first step,
        and its faces go in as they come (`embed`, not `forward`, which makes them channels-last)."""

        weights_moved = False

        def train_loss(self, model, images, batch, augment, generator):
            if not self.weights_moved:
                model.to(memory_format=torch.contiguous_format)
                self.weights_moved = True
            return super().train_loss(Nchw(model), images, batch, augment, generator)

    return EveryFace, ChannelsFirst


def run_ablations(args) -> dict:
    """Throughput of our contrastive model with one speed-up switched off at a time."""
    from facesim.core.data import FaceSet
    from facesim.core.params import load_section
    from facesim.training.network import seed_everything
    from facesim.training.train_params import TrainParams

    tables, all_paths, _ = load_data(args)
    params = load_section(TrainParams, args.params, "train")
    seed_everything(params.seed)
    faces = FaceSet.load(args.faces, all_paths, params.preprocess())
    rows = []

    def add(change, before, after, unit):
        rows.append({"change": change, "before": before, "after": after, "unit": unit, "gain": after / before})
        print(f"  {change}: {before:.0f} -> {after:.0f} {unit}", file=sys.stderr, flush=True)

    input_ablations(add, args, params, faces)
    training_ablations(add, args, params, tables, faces)
    embedding_ablations(add, params, faces)
    return {"system": "ablations", "rows": rows}


def input_ablations(add, args, params, faces) -> None:
    """Reading, preparing and augmenting faces."""
    import numpy as np
    import torch
    from PIL import Image

    from facesim.core.data import prepare_images, prepare_pixels
    from facesim.core.images import load_image, load_pixels

    pre = params.preprocess()
    # 0. files: Pillow decoding vs the numpy PGM reader; Pillow resizing face by face vs one torch call
    files = [Path(args.faces) / p for p in faces.paths]

    def pillow_pixels(path):
        with Image.open(path) as image:
            return np.asarray(image.convert("L"))

    add("decode PGM files with numpy (was Pillow)", best_rate(lambda: [pillow_pixels(f) for f in files], len(files), 3),
        best_rate(lambda: [load_pixels(f) for f in files], len(files), 3), "faces/s")
    pixels = [load_pixels(f) for f in files]
    size = (pre.width, pre.height)
    add("prepare all faces in one torch call (resize, normalise; vs Pillow resize alone, per face)",
        best_rate(lambda: [np.asarray(Image.fromarray(a).resize(size, Image.Resampling.BILINEAR)) for a in pixels],
                  len(pixels), 3),
        best_rate(lambda: prepare_pixels(pixels, pre), len(pixels), 5), "faces/s")

    # 1. decode once: reading and preparing a batch of faces from files vs indexing the tensor
    batch_files = files[:128]
    per_item = best_rate(lambda: prepare_images([load_image(f) for f in batch_files], pre), 128, 3)
    idx = faces.rows(faces.paths[:128])
    add("decode once into a tensor (faces fetched for a batch)", per_item, best_rate(lambda: faces.tensor[idx], 128, 5),
        "faces/s")

    # 2. whole-batch augmentation vs one face at a time
    augment, gen, x = params.augmentation, torch.Generator().manual_seed(0), faces.tensor[:128]
    add("augment whole batches", best_rate(lambda: [augment(x[i : i + 1], gen) for i in range(len(x))], 128, 3),
        best_rate(lambda: augment(x, gen), 128, 5), "faces/s")


def training_ablations(add, args, params, tables, faces) -> None:
    """The pipeline's training step (`fit`), one network, the pair CSV."""
    from facesim.core.data import FaceSet
    from facesim.training.fit import fit
    from facesim.training.objectives import OBJECTIVES

    loaded = {params.preprocess(): faces}

    def train_rate(p, batch: int, objective: type | None = None, steps: int = TIMED_STEPS) -> float:
        """Pairs per second of `steps` steps at batch size `batch`, timed after one warm-up step."""
        p = dataclasses.replace(p, batch_size=batch,
                                contrastive=dataclasses.replace(p.contrastive, mining="none", members=1))
        if len(tables["pairs_train"]) < (steps + 1) * batch:
            raise ValueError(f"{steps + 1} steps of {batch} pairs need more than one epoch: validation would be timed")
        if p.preprocess() not in loaded:
            loaded[p.preprocess()] = FaceSet.load(args.faces, faces.paths, p.preprocess())
        ticks, pairs = [], []

        def on_step(objective, b):
            ticks.append(time.perf_counter())
            pairs.append(objective.examples_in(b))
            if len(ticks) > steps:
                raise _Timed

        objectives = OBJECTIVES if objective is None else {**OBJECTIVES, "contrastive": objective}
        with contextlib.suppress(_Timed):
            fit("contrastive", p, tables, loaded[p.preprocess()], log=lambda _: None, on_step=on_step,
                objectives=objectives)
        return sum(pairs[1:]) / (ticks[-1] - ticks[0])

    every_face, channels_first = before_objectives()
    old = dataclasses.replace(params, input_height=56, input_width=46,
                              contrastive=dataclasses.replace(params.contrastive, channels=(16, 32, 64, 128)))
    # 3. each distinct face of a batch embedded once, at batch 64
    add("embed each distinct face once per batch (batch 64)", train_rate(old, 64, every_face), train_rate(old, 64),
        "pairs/s")
    # 4. channels-last (oneDNN NHWC) at the previous backbone and input size
    add("channels-last tensors (56x46, widths 16-128)", train_rate(old, 64, channels_first), train_rate(old, 64),
        "pairs/s")
    # 5. backbone and input size
    add(f"input {params.input_height}x{params.input_width}, widths {list(params.contrastive.channels)} (was 56x46, 16-128)",
        train_rate(old, 64), train_rate(params, 64), "pairs/s")
    # 6. bigger contrastive batches: more pairs share each face pass
    add(f"contrastive batch {params.batch_size} (was 64)", train_rate(params, 64),
        train_rate(params, params.batch_size, steps=3), "pairs/s")


def embedding_ablations(add, params, faces) -> None:
    """7. embedding: autograd on / no_grad / inference_mode, BatchNorm folded, max-pool before ReLU,
    channels-last, threads."""
    import torch

    from facesim.core.embedding import embed_all, fold_batchnorm
    from facesim.core.models import build_embedding_net

    model = build_embedding_net(dataclasses.replace(params.model_config("contrastive"), members=1)).eval()  # one network
    images = faces.tensor
    folded = fold_batchnorm(model)

    def embed_with(network, context):
        def run():
            with context():
                for i in range(0, len(images), 256):
                    network(images[i : i + 256])
        return run

    grad = best_rate(embed_with(folded, contextlib.nullcontext), len(images), 3)
    nograd = best_rate(embed_with(folded, torch.no_grad), len(images), 3)
    inference = best_rate(embed_with(folded, torch.inference_mode), len(images), 5)
    add("embed under no_grad (was autograd on)", grad, nograd, "faces/s")
    add("embed under inference_mode (was no_grad)", nograd, inference, "faces/s")
    shipped = best_rate(lambda: embed_all(model, images), len(images), 5)  # every speed-up on
    add("embed with BatchNorm folded into the convs", best_rate(embed_with(model, torch.inference_mode), len(images), 5),
        shipped, "faces/s")
    relu_first = fold_batchnorm(model)
    for sequential in (m for m in relu_first.modules() if isinstance(m, torch.nn.Sequential)):
        layers = list(sequential)
        for i in range(len(layers) - 1):  # (max-pool, ReLU) back to (ReLU, max-pool): same numbers
            if isinstance(layers[i], torch.nn.MaxPool2d) and isinstance(layers[i + 1], torch.nn.ReLU):
                layers[i], layers[i + 1] = layers[i + 1], layers[i]
        for i, layer in enumerate(layers):
            sequential[i] = layer
    add("embed with max-pool before ReLU (was ReLU first)",
        best_rate(embed_with(relu_first, torch.inference_mode), len(images), 5), shipped, "faces/s")
    model.to(memory_format=torch.contiguous_format)
    plain = best_rate(lambda: embed_nchw(model, images), len(images), 5)
    model.to(memory_format=torch.channels_last)
    add("embed with channels-last tensors", plain, shipped, "faces/s")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    one = best_rate(lambda: embed_all(model, images), len(images), 5)
    torch.set_num_threads(threads)
    add(f"embed with {threads} threads (was 1)", one, shipped, "faces/s")
