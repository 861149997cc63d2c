"""Side-by-side benchmark: the classic Siamese baseline against our contrastive and triplet models.

    python benchmarks/bench.py --quick          # CI: a few baseline epochs, under 5 minutes
    python benchmarks/bench.py                  # the baseline's full 100 epochs (~15 minutes)
    python benchmarks/bench.py --ablations      # also: what each speed-up gives, one at a time

Every system runs in a fresh process of its own, one after the other, on the
same faces and the same validation and test pairs (the sample stage's CSVs),
scored by the same metric code (`facesim.evaluate.evaluate_embeddings`).
Peak memory is the peak resident set size (ru_maxrss) of that process plus the
largest of its DataLoader workers (the baseline's), so `import torch` counts
alike for all. Throughput: pairs (or mined triplets) trained per second of
training steps; faces per second embedded, from files (decode included) and
from decoded tensors (model only). The roofline divides model FLOPs per face
times faces/s by the GFLOP/s of a large float32 matrix product measured here.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "src"), str(Path(__file__).resolve().parent)]
SYSTEMS = ("baseline", "contrastive", "triplet")
AUC_TARGET = 0.99


# ---------------------------------------------------------------- shared helpers (child processes)

def peak_rss_mb() -> dict[str, float]:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"peak_rss_mb": own + workers, "peak_rss_main_mb": own, "peak_rss_workers_mb": workers}


def best_rate(fn, items: int, reps: int = 5) -> float:
    """Items per second of the median of `reps` timed calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(reps):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return items / statistics.median(times)


def seconds_to_auc(history: list[dict]) -> float | None:
    """Wall seconds (training and validation) until validation ROC AUC first reaches the target."""
    elapsed = 0.0
    for row in history:
        elapsed += row["seconds"]
        if row["val_roc_auc"] >= AUC_TARGET:
            return elapsed
    return None


def test_metrics(calibration_emb, calibration_subjects, test_emb, test_subjects, test_rows) -> dict:
    """Held-out metrics at the threshold calibrated on the validation faces, as the evaluate stage does."""
    from facesim.evaluate import evaluate_embeddings

    metrics, _ = evaluate_embeddings(calibration_emb, calibration_subjects, test_emb, test_subjects, test_rows,
                                     retrieval_k=(1, 5))
    return {"test_auc": metrics["all_pairs"]["roc_auc"], "test_accuracy": metrics["all_pairs"]["accuracy"],
            "test_eer": metrics["all_pairs"]["eer"], "precision_at_1": metrics["retrieval"]["precision_at_1"],
            "precision_at_5": metrics["retrieval"]["precision_at_5"]}


def load_data(args):
    import pandas as pd

    from facesim.sample import list_faces

    tables = {n: pd.read_csv(Path(args.samples) / f"{n}.csv")
              for n in ("pairs_train", "pairs_val", "pairs_test", "triplets_train", "triplets_val")}
    all_paths = [f.path for g in ("training", "testing") for f in list_faces(args.faces, g)]
    test_paths = [f.path for f in list_faces(args.faces, "testing")]
    return tables, all_paths, test_paths


def pair_rows(index: dict, table):
    return (table["image1"].map(index).to_numpy(), table["image2"].map(index).to_numpy(), table["label"].to_numpy())


# ---------------------------------------------------------------- the baseline

def run_baseline(args) -> dict:
    import numpy as np
    import torch

    import baseline as B
    from facesim.metrics import roc_auc
    from facesim.models import count_flops

    tables, all_paths, test_paths = load_data(args)
    faces = Path(args.faces)
    loader = B.train_loader(str(faces / "training"), args.seed)
    net = B.SiameseNetwork()
    criterion = B.ContrastiveLoss(margin=2.0)
    optimizer = torch.optim.Adam(net.parameters(), lr=5e-4)
    val = tables["pairs_val"]
    val_paths = sorted(set(val["image1"]) | set(val["image2"]))
    val_index = {p: i for i, p in enumerate(val_paths)}
    v1, v2, vl = pair_rows(val_index, val)

    history, train_seconds, pairs = [], [], 0
    for epoch in range(1, args.baseline_epochs + 1):
        started = time.perf_counter()
        pairs = 0
        for img0, img1, label in loader:
            out0, out1 = net(img0, img1)
            loss = criterion(out0, out1, label)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            pairs += len(label)
        train_seconds.append(time.perf_counter() - started)
        emb = B.embed(net, [faces / p for p in val_paths]).numpy()
        auc = roc_auc(np.linalg.norm(emb[v1] - emb[v2], axis=1), vl)
        history.append({"epoch": epoch, "val_roc_auc": auc, "seconds": time.perf_counter() - started})
        print(f"  baseline epoch {epoch}: val AUC {auc:.4f}, {history[-1]['seconds']:.1f}s", file=sys.stderr, flush=True)

    test_index = {p: i for i, p in enumerate(test_paths)}
    val_emb = B.embed(net, [faces / p for p in val_paths]).numpy()
    test_emb = B.embed(net, [faces / p for p in test_paths]).numpy()
    quality = test_metrics(val_emb, [Path(p).parent.name for p in val_paths], test_emb,
                           [Path(p).parent.name for p in test_paths], pair_rows(test_index, tables["pairs_test"]))

    files = [faces / p for p in all_paths]
    embed_files = best_rate(lambda: B.embed(net, files), len(files), reps=2)
    decoded = torch.stack([B.PathDataset(files)[i] for i in range(len(files))])
    net.eval()

    def model_only():
        with torch.no_grad():
            for i in range(0, len(decoded), 64):
                net.forward_once(decoded[i : i + 64])

    embed_model = best_rate(model_only, len(decoded), reps=3)
    return {
        "system": "baseline", "epochs": len(history), "pairs_per_epoch": pairs,
        "train_rate": pairs * len(train_seconds) / sum(train_seconds),
        "train_faces_per_s": 2 * pairs * len(train_seconds) / sum(train_seconds),
        "seconds_per_epoch": sum(train_seconds) / len(train_seconds),
        "embed_files_per_s": embed_files, "embed_model_per_s": embed_model,
        "seconds_to_auc": seconds_to_auc(history), "final_val_auc": history[-1]["val_roc_auc"],
        "flops_per_face": count_flops(B.Embedder(net), B.SIZE, B.SIZE),
        "input": f"{B.SIZE}x{B.SIZE}", **quality, **peak_rss_mb(),
    }


# ---------------------------------------------------------------- ours

def run_ours(args, model_name: str) -> dict:
    import pandas as pd
    import torch

    from facesim.data import FaceSet
    from facesim.models import count_flops
    from facesim.params import load_section
    from facesim.models import embed_all
    from facesim.train import TrainParams, fit

    tables, all_paths, test_paths = load_data(args)
    params = load_section(TrainParams, args.params, "train")
    used = pd.concat([tables[n][c] for n in ("pairs_train", "pairs_val", "triplets_train", "triplets_val")
                      for c in tables[n].columns if c in ("image1", "image2", "anchor", "positive", "negative")])
    faces = FaceSet.load(args.faces, used, params.preprocess())
    result = fit(model_name, params, tables, faces, log=lambda line: print("  " + line, file=sys.stderr, flush=True))
    model = result.model
    history = result.history.to_dict("records")

    val, test = tables["pairs_val"], tables["pairs_test"]
    test_faces = FaceSet.load(args.faces, test_paths, params.preprocess())
    calibration = faces.subset(sorted(set(val["image1"]) | set(val["image2"])))
    quality = test_metrics(embed_all(model, calibration.tensor).numpy(), calibration.subjects,
                           embed_all(model, test_faces.tensor).numpy(), test_faces.subjects,
                           pair_rows(test_faces.index, test))

    embed_files = best_rate(lambda: embed_all(model, FaceSet.load(args.faces, all_paths, params.preprocess()).tensor),
                            len(all_paths), reps=3)
    everyone = FaceSet.load(args.faces, all_paths, params.preprocess()).tensor
    embed_model = best_rate(lambda: embed_all(model, everyone), len(everyone), reps=5)
    epochs = len(result.train_seconds)
    per_s = epochs / sum(result.train_seconds)
    return {
        "system": model_name, "epochs": epochs, "pairs_per_epoch": result.examples_per_epoch,
        "train_rate": result.examples_per_epoch * per_s,
        "train_faces_per_s": result.face_passes_per_epoch * per_s,
        "seconds_per_epoch": 1 / per_s,
        "embed_files_per_s": embed_files, "embed_model_per_s": embed_model,
        "seconds_to_auc": seconds_to_auc(history), "final_val_auc": history[-1]["val_roc_auc"],
        "flops_per_face": count_flops(model, params.input_height, params.input_width),
        "input": f"{params.input_height}x{params.input_width}", "threads": torch.get_num_threads(),
        **quality, **peak_rss_mb(),
    }


# ---------------------------------------------------------------- one change at a time

def run_ablations(args) -> dict:
    """Throughput of our contrastive model with one speed-up switched off at a time."""
    import dataclasses

    import torch
    from PIL import Image

    import numpy as np

    from facesim.data import Augment, FaceSet, prepare_pixels, prepare_images
    from facesim.images import load_image, load_pixels
    from facesim.models import build_embedding_net, embed_all, fold_batchnorm
    from facesim.params import load_section
    from facesim.train import TrainParams, embed_rows, seed_everything

    tables, all_paths, _ = load_data(args)
    params = load_section(TrainParams, args.params, "train")
    seed_everything(params.seed)
    pre = params.preprocess()
    faces = FaceSet.load(args.faces, all_paths, pre)
    pairs = torch.stack([faces.rows(tables["pairs_train"]["image1"]), faces.rows(tables["pairs_train"]["image2"]),
                         torch.tensor(tables["pairs_train"]["label"].to_numpy())], dim=1)
    # in random order, as training draws them (the CSV lists each image's pairs together)
    pairs = pairs[torch.randperm(len(pairs), generator=torch.Generator().manual_seed(0))]
    gen = torch.Generator().manual_seed(0)
    augment = Augment()
    rows = []

    def add(change, before, after, unit):
        rows.append({"change": change, "before": before, "after": after, "unit": unit, "gain": after / before})
        print(f"  {change}: {before:.0f} -> {after:.0f} {unit}", file=sys.stderr, flush=True)

    # 0. files: Pillow decoding vs the numpy PGM reader; Pillow resizing face by face vs one torch call
    files = [Path(args.faces) / p for p in all_paths]

    def pillow_pixels(path):
        with Image.open(path) as image:
            return np.asarray(image.convert("L"))

    add("decode PGM files with numpy (was Pillow)", best_rate(lambda: [pillow_pixels(f) for f in files], len(files), 3),
        best_rate(lambda: [load_pixels(f) for f in files], len(files), 3), "faces/s")
    pixels = [load_pixels(f) for f in files]
    size = (pre.width, pre.height)
    add("resize all faces in one torch call (was Pillow, face by face)",
        best_rate(lambda: [np.asarray(Image.fromarray(a).resize(size, Image.Resampling.BILINEAR)) for a in pixels],
                  len(pixels), 3),
        best_rate(lambda: prepare_pixels(pixels, pre), len(pixels), 5), "faces/s")

    # 1. decode once: reading and preparing a batch of faces from files vs indexing the tensor
    batch_paths = all_paths[:128]
    per_item = best_rate(lambda: prepare_images([load_image(Path(args.faces) / p) for p in batch_paths], pre), 128, 3)
    idx = faces.rows(batch_paths)
    indexed = best_rate(lambda: faces.tensor[idx], 128, 5)
    add("decode once into a tensor (faces fetched for a batch)", per_item, indexed, "faces/s")

    # 2. whole-batch augmentation vs one face at a time
    x = faces.tensor[:128]
    one_by_one = best_rate(lambda: [augment(x[i : i + 1], gen) for i in range(len(x))], 128, 3)
    whole = best_rate(lambda: augment(x, gen), 128, 5)
    add("augment whole batches", one_by_one, whole, "faces/s")

    def train_rate(p: TrainParams, batch: int, unique: bool, channels_last: bool = True, steps: int = 6) -> float:
        """Pairs per second of contrastive training steps at batch size `batch`."""
        from facesim.losses import ContrastiveLoss

        torch.manual_seed(0)
        imgs = FaceSet.load(args.faces, all_paths, p.preprocess()).tensor
        model = build_embedding_net(dataclasses.replace(p.model_config("contrastive"), members=1))  # one network
        if not channels_last:
            model.channels_last = False
            model.to(memory_format=torch.contiguous_format)
        model.train()
        opt = torch.optim.Adam(model.parameters(), lr=p.lr)
        loss_fn = ContrastiveLoss(p.contrastive.margin)

        def step(i):
            b = pairs[(torch.arange(batch) + i * batch) % len(pairs)]
            if unique:
                emb = embed_rows(model, imgs, b[:, :2], augment, gen)
                e1, e2 = emb[:, 0], emb[:, 1]
            else:  # the classic way: each side of each pair through the network
                e1 = model(augment(imgs[b[:, 0]], gen))
                e2 = model(augment(imgs[b[:, 1]], gen))
            loss = loss_fn(e1, e2, b[:, 2].float())
            opt.zero_grad()
            loss.backward()
            opt.step()

        step(0)
        started = time.perf_counter()
        for i in range(1, steps + 1):
            step(i)
        return batch * steps / (time.perf_counter() - started)

    old = dataclasses.replace(params, input_height=56, input_width=46, channels=(16, 32, 64, 128))
    # 3. each distinct face of a batch embedded once (index batches), at batch 64
    add("embed each distinct face once per batch (batch 64)", train_rate(old, 64, False), train_rate(old, 64, True),
        "pairs/s")
    # 4. channels-last (oneDNN NHWC) at the previous backbone and input size
    add("channels-last tensors (56x46, widths 16-128)", train_rate(old, 64, True, channels_last=False),
        train_rate(old, 64, True), "pairs/s")
    # 5. backbone and input size
    add(f"input {params.input_height}x{params.input_width}, widths {list(params.channels)} (was 56x46, 16-128)",
        train_rate(old, 64, True), train_rate(params, 64, True), "pairs/s")
    # 6. bigger contrastive batches: more pairs share each face pass
    add(f"contrastive batch {params.batch_size} (was 64)", train_rate(params, 64, True),
        train_rate(params, params.batch_size, True, steps=3), "pairs/s")

    # 7. embedding: autograd on / no_grad / inference_mode, BatchNorm folded, max-pool before ReLU,
    #    channels-last, threads
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
    model.channels_last = False
    model.to(memory_format=torch.contiguous_format)
    plain = best_rate(lambda: embed_all(model, images), len(images), 5)
    model.channels_last = True
    model.to(memory_format=torch.channels_last)
    add("embed with channels-last tensors", plain, shipped, "faces/s")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    one = best_rate(lambda: embed_all(model, images), len(images), 5)
    torch.set_num_threads(threads)
    add(f"embed with {threads} threads (was 1)", one, shipped, "faces/s")
    return {"system": "ablations", "rows": rows}


# ---------------------------------------------------------------- the parent: machine, runs, table

def machine() -> dict:
    import torch

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        cpu = platform.processor() or "unknown"
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": cpu, "cores": usable, "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "onednn": torch.backends.mkldnn.is_available(), "python": platform.python_version()}


def gemm_gflops(n: int = 2048) -> float:
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n**3 / 1e9 * best_rate(lambda: a @ b, 1, 5)


def child(name: str, args, native_kernels: bool = False) -> dict:
    """Run one system in a fresh process; its JSON result comes back through a file.

    Each child pins its arithmetic as the pipeline's stages do (facesim.runtime); with
    `native_kernels` it lets torch, oneDNN and MKL pick the fastest kernels for this CPU instead.
    """
    env = {**os.environ, "FACESIM_NATIVE_KERNELS": "1" if native_kernels else "0"}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, __file__, "--child", name, "--out-json", str(out), "--faces", args.faces,
               "--samples", args.samples, "--params", args.params, "--baseline-epochs", str(args.baseline_epochs),
               "--seed", str(args.seed)]
        started = time.perf_counter()
        subprocess.run(cmd, check=True, cwd=REPO, env=env)
        result = json.loads(out.read_text())
        result["process_seconds"] = time.perf_counter() - started
        return result


def pinning_table(pinned: dict, native: dict) -> str:
    """What the same numbers on every machine cost: the triplet model pinned vs the CPU's own kernels."""
    return "\n".join([
        "Pinned arithmetic (AVX2 kernels, MKL's COMPATIBLE branch, fixed threads; facesim.runtime) "
        "against the fastest kernels for this CPU (FACESIM_NATIVE_KERNELS=1), triplet model, pinned / native:",
        "",
        "| train faces/s | embed faces/s (model) | embed faces/s (files) | test AUC pinned | test AUC native |",
        "|---|---|---|---|---|",
        f"| {pinned['train_faces_per_s'] / native['train_faces_per_s']:.2f}x | "
        f"{pinned['embed_model_per_s'] / native['embed_model_per_s']:.2f}x | "
        f"{pinned['embed_files_per_s'] / native['embed_files_per_s']:.2f}x | "
        f"{pinned['test_auc']:.4f} | {native['test_auc']:.4f} |",
    ])


def fmt(value, spec: str = ".0f", missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def table(results: list[dict], info: dict, gflops: float, baseline_epochs: int) -> str:
    base = results[0]
    lines = [
        f"Machine: {info['cpu']}, {info['cores']} cores usable, torch {info['torch']} with "
        f"{info['torch_threads']} threads, oneDNN {info['onednn']}; float32 GEMM 2048^3: {gflops:.1f} GFLOP/s",
        "",
        "| system | input | MFLOP/face | epochs | train pairs/s | train faces/s | s/epoch | embed faces/s (files) "
        "| embed faces/s (model) | peak RSS MB | s to val AUC 0.99 | test AUC | test acc | P@1 | P@5 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        unit = "triplets" if r["system"] == "triplet" else "pairs"
        auc_time = fmt(r["seconds_to_auc"], ".1f", f"not in {r['epochs']} ep")
        lines.append(
            f"| {r['system']} | {r['input']} | {r['flops_per_face'] / 1e6:.1f} | {r['epochs']} | "
            f"{r['train_rate']:.0f} {unit} | {r['train_faces_per_s']:.0f} | {r['seconds_per_epoch']:.2f} | "
            f"{r['embed_files_per_s']:.0f} | {r['embed_model_per_s']:.0f} | {r['peak_rss_mb']:.0f} | {auc_time} | "
            f"{r['test_auc']:.4f} | {r['test_accuracy']:.4f} | {r['precision_at_1']:.3f} | {r['precision_at_5']:.3f} |")
    lines += ["", "Ours / baseline (memory: baseline / ours; time to AUC: baseline / ours):", "",
              "| system | train pairs/s | train faces/s | embed (files) | embed (model) | memory | time to AUC 0.99 |",
              "|---|---|---|---|---|---|---|"]
    for r in results[1:]:
        speedup = (None if r["seconds_to_auc"] is None or base["seconds_to_auc"] is None
                   else base["seconds_to_auc"] / r["seconds_to_auc"])
        lines.append(
            f"| {r['system']} | {r['train_rate'] / base['train_rate']:.1f}x | "
            f"{r['train_faces_per_s'] / base['train_faces_per_s']:.1f}x | "
            f"{r['embed_files_per_s'] / base['embed_files_per_s']:.1f}x | "
            f"{r['embed_model_per_s'] / base['embed_model_per_s']:.1f}x | "
            f"{base['peak_rss_mb'] / r['peak_rss_mb']:.1f}x | {fmt(speedup, '.1f')}{'x' if speedup else ''} |")
    lines += ["", "Roofline (achieved GFLOP/s = FLOPs/face x faces/s; training counts 3x the forward FLOPs):", "",
              "| system | embed GFLOP/s | % of GEMM | train GFLOP/s | % of GEMM |", "|---|---|---|---|---|"]
    for r in results:
        embed = r["flops_per_face"] * r["embed_model_per_s"] / 1e9
        train = 3 * r["flops_per_face"] * r["train_faces_per_s"] / 1e9
        lines.append(f"| {r['system']} | {embed:.1f} | {100 * embed / gflops:.0f}% | {train:.1f} | "
                     f"{100 * train / gflops:.0f}% |")
    lines += ["", f"Baseline: {baseline_epochs} epochs of 370 random pairs; peak RSS = main process "
              f"{base['peak_rss_main_mb']:.0f} MB + loader worker {base['peak_rss_workers_mb']:.0f} MB."]
    return "\n".join(lines)


def ablation_table(rows: list[dict]) -> str:
    lines = ["| change (one at a time) | before | after | unit | gain |", "|---|---|---|---|---|"]
    lines += [f"| {r['change']} | {r['before']:.0f} | {r['after']:.0f} | {r['unit']} | {r['gain']:.1f}x |"
              for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="CI mode: 5 baseline epochs (under 5 minutes in all)")
    parser.add_argument("--ablations", action="store_true", help="also measure each speed-up one at a time")
    parser.add_argument("--baseline-epochs", type=int, default=None, help="default: 100, or 5 with --quick")
    parser.add_argument("--faces", default="data/raw/faces")
    parser.add_argument("--samples", default="data/processed")
    parser.add_argument("--params", default="params.yaml", help="our models train with its 'train' section")
    parser.add_argument("--seed", type=int, default=42, help="the baseline's random pairs and initialisation")
    parser.add_argument("--out", default=None, help="also write the tables (markdown) and results (JSON next to it)")
    parser.add_argument("--child", choices=SYSTEMS + ("ablations",), help=argparse.SUPPRESS)
    parser.add_argument("--out-json", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.baseline_epochs is None:
        args.baseline_epochs = 5 if args.quick else 100

    if args.child:
        from facesim.params import load_section
        from facesim.runtime import RuntimeParams, pin_arithmetic

        pin_arithmetic(load_section(RuntimeParams, args.params, "runtime"))  # as every stage does
        if args.child == "baseline":
            result = run_baseline(args)
        elif args.child == "ablations":
            result = run_ablations(args)
        else:
            result = run_ours(args, args.child)
        Path(args.out_json).write_text(json.dumps(result))
        return

    started = time.perf_counter()
    info = machine()
    gflops = gemm_gflops()
    print(f"machine: {info}; GEMM {gflops:.1f} GFLOP/s", file=sys.stderr, flush=True)
    results = []
    for name in SYSTEMS:
        print(f"running {name} ...", file=sys.stderr, flush=True)
        results.append(child(name, args))
    print("running triplet with native kernels ...", file=sys.stderr, flush=True)
    native = child("triplet", args, native_kernels=True)
    report = table(results, info, gflops, args.baseline_epochs) + "\n\n" + pinning_table(results[-1], native)
    ablations = None
    if args.ablations:
        print("running ablations ...", file=sys.stderr, flush=True)
        ablations = child("ablations", args)["rows"]
        report += "\n\n" + ablation_table(ablations)
    report += f"\n\nBenchmark wall time: {time.perf_counter() - started:.0f} s"
    print(report)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(report + "\n")
        out.with_suffix(".json").write_text(json.dumps(
            {"machine": info, "gemm_gflops": gflops, "results": results, "native_kernels": native,
             "ablations": ablations}, indent=2) + "\n")


if __name__ == "__main__":
    main()
