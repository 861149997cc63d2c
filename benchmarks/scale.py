"""Training on more faces than fit in memory: faces/s and peak memory at 400, 20,000 and 200,000 faces.

    python benchmarks/bench.py --scale                       # 400, 20000 and 200000 faces
    python benchmarks/bench.py --scale --sizes 400 20000     # some of them

Synthetic faces (random-ish 46x56 grey PGMs, one pattern per person plus noise,
10 per person) are written once into a folder under the system's temporary
folder and reused. Each (size, mode) runs in a fresh process of its own:
"memory" prepares every face in memory as the pipeline does for ORL,
"memmap" reads them from the uint8 memory-mapped cache (`facesim.core.data`,
built in the first memmap run of a size: its decoding time is `load_s`). Both
train the contrastive model of params.yaml for `--steps` steps on P x K
batches over every person; faces/s counts each distinct face of a batch once.
Peak RSS is the child's own (`measure.peak_rss_mb`), the memory map's
resident pages included.
"""

from __future__ import annotations

import itertools
import os
import tempfile
import time
from pathlib import Path

import numpy as np

SIZES = (400, 20_000, 200_000)
MODES = ("memory", "memmap")
FACES_PER_PERSON = 10
FACE_SIZE = (56, 46)  # (height, width), half of ORL's


def synthetic_faces(folder: str | os.PathLike, faces: int, seed: int = 0) -> list[str]:
    """`faces` binary PGMs, `folder/p<N>/<K>.pgm`, FACES_PER_PERSON per person; their relative paths.
    Written once: a folder with its `complete` marker is reused."""
    folder = Path(folder)
    people = -(-faces // FACES_PER_PERSON)
    paths = [f"p{i // FACES_PER_PERSON}/{i % FACES_PER_PERSON}.pgm" for i in range(faces)]
    if (folder / "complete").exists():
        return paths
    height, width = FACE_SIZE
    header = f"P5\n{width} {height}\n255\n".encode()
    rng = np.random.default_rng(seed)
    for person in range(people):
        (folder / f"p{person}").mkdir(parents=True, exist_ok=True)
        pattern = rng.uniform(40, 216, size=(height, width))
        count = min(FACES_PER_PERSON, faces - person * FACES_PER_PERSON)
        noise = rng.normal(0, 12, size=(count, height, width))
        pixels = np.clip(np.rint(pattern + noise), 0, 255).astype(np.uint8)
        for k in range(count):
            (folder / f"p{person}" / f"{k}.pgm").write_bytes(header + pixels[k].tobytes())
    (folder / "complete").write_text(f"{faces}\n")
    return paths


def training_tables(paths: list[str], seed: int = 0):
    """A pair table over every face (one same-person and one other-person pair each) and 512 validation
    pairs: what the contrastive objective reads (its P x K batches take their faces from the first)."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    subjects = np.array([p.split("/")[0] for p in paths])
    n = len(paths)
    same = np.array([i + 1 if i + 1 < n and subjects[i + 1] == subjects[i] else i - 1 for i in range(n)])
    other = (np.arange(n) + FACES_PER_PERSON * rng.integers(1, max(2, n // FACES_PER_PERSON), n)) % n

    def table(first: np.ndarray, second: np.ndarray, labels: np.ndarray) -> pd.DataFrame:
        return pd.DataFrame({"image1": np.array(paths)[first], "image2": np.array(paths)[second],
                             "subject1": subjects[first], "subject2": subjects[second], "label": labels})

    index = np.arange(n)
    train = pd.concat([table(index, same, (subjects == subjects[same]) * 1),
                       table(index, other, (subjects == subjects[other]) * 1)])
    val = train.sample(n=min(512, len(train)), random_state=seed).reset_index(drop=True)
    return {"pairs_train": train.reset_index(drop=True), "pairs_val": val}


def run_scale(args) -> dict:
    """In the child: load the faces as `args.mode` says, then time `args.steps` training steps."""
    import torch

    from facesim.core.data import FaceSet
    from facesim.core.models import build_embedding_net
    from facesim.core.params import load_section
    from facesim.training.objectives import OBJECTIVES
    from facesim.training.train_params import TrainParams
    from measure import peak_rss_mb

    folder = Path(args.scale_data) / f"faces-{args.size}"
    paths = synthetic_faces(folder, args.size)
    tables = training_tables(paths)
    params = load_section(TrainParams, args.params, "train")
    started = time.perf_counter()
    limit = float("inf") if args.mode == "memory" else 0.0
    faces = FaceSet.load(folder, paths, params.preprocess(), memory_limit_mb=limit,
                         cache_dir=Path(args.scale_data) / "cache")
    load_s = time.perf_counter() - started
    objective = OBJECTIVES["contrastive"](params, tables, faces)
    model = build_embedding_net(params.model_config("contrastive"))
    optimizer = torch.optim.Adam(model.parameters(), lr=params.lr, fused=True)
    generator = torch.Generator().manual_seed(0)
    augment = params.augmentation_applied()
    batches = itertools.islice(itertools.chain.from_iterable(objective.batches(generator) for _ in itertools.count()),
                               args.steps + 1)
    seen, seconds = 0, 0.0
    for step, batch in enumerate(batches):
        begun = time.perf_counter()
        loss = objective.train_loss(model, faces.tensor, batch, augment, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step:  # the first step warms up
            seconds += time.perf_counter() - begun
            seen += objective.faces_in(batch)
    return {"faces": args.size, "mode": args.mode, "load_s": load_s, "steps": args.steps,
            "train_faces_per_s": seen / seconds, **peak_rss_mb(loader_workers=False)}


def default_data_folder() -> str:
    return str(Path(tempfile.gettempdir()) / "facesim-scale")


def scale_table(rows: list[dict]) -> str:
    """faces/s and peak RSS per size, memmap against in-memory."""
    lines = ["Faces beyond memory: contrastive training steps (P x K) at each data size, faces in memory against "
             "the uint8 memory-mapped cache (load: decoding, or opening the cache; peak RSS of the process):", "",
             "| faces | mode | load s | train faces/s | vs memory | peak RSS MB |", "|---|---|---|---|---|---|"]
    memory = {r["faces"]: r["train_faces_per_s"] for r in rows if r["mode"] == "memory"}
    for r in rows:
        ratio = f"{r['train_faces_per_s'] / memory[r['faces']]:.2f}x" if r["faces"] in memory else "-"
        lines.append(f"| {r['faces']:,} | {r['mode']} | {r['load_s']:.1f} | {r['train_faces_per_s']:.0f} | "
                     f"{ratio} | {r['peak_rss_mb']:.0f} |")
    return "\n".join(lines)
