"""What a torchvision backbone costs on this machine's cores: ResNet-18 and EfficientNet-B0 against our compact CNN.

Each backbone trains the contrastive model as the train stage does (`facesim.training.fit`: one
network, P x K batches with every pair in the loss, P and K from params.yaml, augmentation on) for
a few epochs on the sample stage's training pairs; the first epoch warms up and is not counted.
Reported per backbone and input size:
- train faces/s: face passes (forward and backward) per second of training steps;
- s/epoch: seconds of an epoch, its training steps and the validation that ends it (every face embedded);
- embed faces/s: `embed_all` of every face (BatchNorm folded, inference mode);
and each as a ratio against compact measured in the same run. Weights are random
(`pretrained: none`): ImageNet weights change no arithmetic, so they train and embed as fast.

dlib (when its extra is installed): training is its head's on the descriptors (computed once, as the
pipeline does); "embed faces/s" is what a new face costs, dlib's HOG box, landmarks and ResNet
(`facesim.core.dlib_face.describe` into an empty cache) and the head, so it compares with the
others' embedding of prepared faces only loosely: theirs leaves out decoding and resizing, which
cost far less than dlib's network.

Input sizes: compact at params.yaml's (40x32); the torchvision backbones at 112x92, the ORL faces'
own size, which leaves their 32x-downsampled last stage a 4x3 map (at 40x32 it is 2x1), and without
--quick at params.yaml's size too, for a like-for-like comparison.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import sys
import tempfile
import time

from measure import best_rate, load_data

TORCHVISION_INPUT = (112, 92)  # ORL's own face size


def backbone_rows(params, quick: bool) -> list[tuple[str, tuple[int, int]]]:
    """(backbone, (height, width)) of each measurement, compact first (the ratios' reference)."""
    pipeline = (params.input_height, params.input_width)
    rows = [("compact", pipeline), ("resnet18", TORCHVISION_INPUT), ("efficientnet_b0", TORCHVISION_INPUT)]
    if not quick and pipeline != TORCHVISION_INPUT:
        rows += [("resnet18", pipeline), ("efficientnet_b0", pipeline)]
    if importlib.util.find_spec("dlib") is not None:
        rows.append(("dlib", pipeline))
    return rows


def measure_backbone(args, params, tables, backbone: str, size: tuple[int, int], epochs: int, reps: int) -> dict:
    """One backbone at one input size: training and embedding rates of the contrastive model."""
    import torch

    from facesim.core.data import FaceSet
    from facesim.core.embedding import embed_all
    from flops import count_flops
    from facesim.training.fit import fit
    from facesim.pipeline.faces import face_paths

    height, width = size
    contrastive = dataclasses.replace(params.contrastive, mining="all", members=1, epochs=epochs)
    p = dataclasses.replace(params, backbone=backbone, pretrained="none", frozen_blocks=0, input_height=height,
                            input_width=width, epochs=epochs, patience=0, keep="last", contrastive=contrastive)
    if backbone == "dlib":
        p = dataclasses.replace(p, embedding_dim=128)
        with tempfile.TemporaryDirectory() as cache:  # every face described anew: what a new face costs
            os.environ["FACESIM_CACHE"] = cache
            started = time.perf_counter()
            faces = FaceSet.load(args.faces, face_paths(tables), p.preprocess())
            describe_seconds = time.perf_counter() - started
    else:
        faces = FaceSet.load(args.faces, face_paths(tables), p.preprocess())
    faces_per_step: list[int] = []
    result = fit("contrastive", p, tables, faces, log=lambda line: print("  " + line, file=sys.stderr, flush=True),
                 on_step=lambda objective, batch: faces_per_step.append(objective.faces_in(batch)))
    # every epoch has as many P x K batches; the first epoch warms up (oneDNN builds its kernels) and is not timed
    steps = len(faces_per_step) // len(result.train_seconds)
    train_seconds = sum(result.train_seconds[1:])
    embed = best_rate(lambda: embed_all(result.model, faces.tensor), len(faces.paths), reps=reps)
    flops = None  # dlib's network is not ours to count
    if backbone == "dlib":
        embed = len(faces.paths) / (describe_seconds + len(faces.paths) / embed)
    else:
        flops = count_flops(result.model, height, width)
    return {
        "backbone": backbone, "input": f"{height}x{width}", "threads": torch.get_num_threads(),
        "flops_per_face": flops,
        "epochs_timed": len(result.train_seconds) - 1, "steps_per_epoch": steps,
        "train_faces_per_s": sum(faces_per_step[steps:]) / train_seconds,
        "seconds_per_epoch": float(result.history["seconds"].iloc[1:].mean()),
        "embed_faces_per_s": embed, "faces": len(faces.paths),
    }


def run_backbones(args, rows: list[tuple[str, tuple[int, int]]] | None = None) -> dict:
    """Every backbone of `rows` (default `backbone_rows`), then the ratios against the first (compact)."""
    from facesim.core.params import load_section
    from facesim.training.train_params import TrainParams

    tables, _, _ = load_data(args)
    tables = {name: tables[name] for name in ("pairs_train", "pairs_val")}
    params = load_section(TrainParams, args.params, "train")
    quick = getattr(args, "quick", False)
    epochs, reps = (2, 2) if quick else (3, 5)
    results = []
    for backbone, size in rows or backbone_rows(params, quick):
        print(f"  {backbone} at {size[0]}x{size[1]} ...", file=sys.stderr, flush=True)
        results.append(measure_backbone(args, params, tables, backbone, size, epochs, reps))
    reference = results[0]
    for r in results:
        r["train_vs_compact"] = r["train_faces_per_s"] / reference["train_faces_per_s"]
        r["epoch_vs_compact"] = r["seconds_per_epoch"] / reference["seconds_per_epoch"]
        r["embed_vs_compact"] = r["embed_faces_per_s"] / reference["embed_faces_per_s"]
    return {"system": "backbones", "rows": results}
