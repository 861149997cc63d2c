"""Training on several processes (DistributedDataParallel, gloo): faces/s at 1 and more processes.

    python benchmarks/processes.py                           # 1 and 2 processes, 2 threads in all
    python benchmarks/processes.py --processes 1 2 4 --threads 4 --faces 4000 --epochs 3

Each count of processes runs `fit` under torchrun (`--standalone`) on synthetic faces
(`scale.synthetic_faces`: 56x46 PGMs, 10 per person) with the contrastive model of
params.yaml as one network (P x K batches, every pair), the threads shared out
(`--threads` in all: each process takes threads / processes). faces/s counts every
distinct face of each batch once (however many processes shared it) over the training
steps' seconds (validation left out) of every epoch but the first (which warms up); the final validation loss shows that every count
trains the same model (up to float rounding).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def run_child(args) -> None:
    """One process of the group: train, and rank 0 writes the numbers."""
    sys.path.insert(0, str(HERE))
    from facesim.core.params import load_section
    from facesim.pipeline.runtime import RuntimeParams, pin_arithmetic

    processes = int(os.environ.get("WORLD_SIZE", "1"))
    pin_arithmetic(RuntimeParams(threads=max(1, args.threads // processes)))
    import torch

    from facesim.core.data import FaceSet
    from facesim.training.distributed import process_group
    from facesim.training.fit import fit
    from facesim.training.train_params import TrainParams
    from scale import synthetic_faces, training_tables

    folder = Path(args.data) / f"faces-{args.faces}"
    paths = synthetic_faces(folder, args.faces)
    tables = training_tables(paths)
    params = load_section(TrainParams, args.params, "train")
    params = dataclasses.replace(params, device="cpu", processes=processes, epochs=args.epochs, patience=0,
                                 contrastive=dataclasses.replace(params.contrastive, members=1, epochs=0))
    faces = FaceSet.load(folder, paths, params.preprocess())
    seen = [0]
    with process_group(processes, torch.device("cpu")) as world:
        result = fit("contrastive", params, tables, faces, log=lambda line: None,
                     on_step=lambda objective, batch: seen.__setitem__(0, seen[0] + objective.faces_in(batch)),
                     world=world)
        if world.is_main:
            Path(args.out_json).write_text(json.dumps({
                "processes": processes, "threads_each": torch.get_num_threads(), "faces": args.faces,
                "epochs": args.epochs,
                "train_faces_per_s": seen[0] * (args.epochs - 1) / args.epochs / sum(result.train_seconds[1:]),
                "train_seconds": sum(result.train_seconds), "final_val_loss": float(result.history["val_loss"].iloc[-1]),
                "final_train_loss": float(result.history["train_loss"].iloc[-1])}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--threads", type=int, default=2, help="torch threads in all, shared out among the processes")
    parser.add_argument("--faces", type=int, default=2000, help="synthetic faces (10 per person)")
    parser.add_argument("--epochs", type=int, default=4, help="at least 2: the first is not timed")
    parser.add_argument("--params", default=str(REPO / "params.yaml"))
    parser.add_argument("--data", default=str(Path(tempfile.gettempdir()) / "facesim-scale"))
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out-json", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_child(args)
        return
    rows = []
    for n in args.processes:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "result.json"
            subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}",
                            __file__, "--child", "--out-json", str(out), "--threads", str(args.threads),
                            "--faces", str(args.faces), "--epochs", str(args.epochs), "--params", args.params,
                            "--data", args.data], check=True, cwd=REPO)
            rows.append(json.loads(out.read_text()))
    base = rows[0]["train_faces_per_s"]
    print(f"contrastive, P x K batches, {args.faces} synthetic faces, {args.epochs} epochs, {args.threads} threads in all")
    print("| processes | threads each | train faces/s | speed-up | final val loss |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['processes']} | {r['threads_each']} | {r['train_faces_per_s']:.0f} | "
              f"{r['train_faces_per_s'] / base:.2f}x | {r['final_val_loss']:.6f} |")


if __name__ == "__main__":
    main()
