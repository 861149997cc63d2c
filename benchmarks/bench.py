"""Side-by-side benchmark: the classic Siamese baseline against our contrastive and triplet models.

    python benchmarks/bench.py --quick          # CI: a few baseline epochs, under 5 minutes
    python benchmarks/bench.py                  # the baseline's full 100 epochs (~15 minutes)
    python benchmarks/bench.py --ablations      # also: what each speed-up gives, one at a time
    python benchmarks/bench.py --backbones      # also: resnet18 and efficientnet_b0 against compact
    python benchmarks/bench.py --scale [--sizes 400 20000 200000]   # only: faces beyond memory (scale.py)

Every system runs in a fresh process of its own, one after the other, on the
same faces and the same validation and test pairs (the sample stage's CSVs),
scored by the same metric code (`facesim.pipeline.evaluate.evaluate_embeddings`).
Peak memory is the peak resident set size (ru_maxrss) of that process plus the
largest of its DataLoader workers (the baseline's), so `import torch` counts
alike for all. Throughput: pairs (or mined triplets) trained per second of
training steps; faces per second embedded, from files (decode included) and
from decoded tensors (model only). The roofline divides model FLOPs per face
times faces/s by the float32 peak measured here, pinned as the systems are
(`roofline.py` says how both are counted).

The jobs: `measure_baseline.py` (the classic baseline, `baseline.py`),
`measure_ours.py` (our models), `ablations.py`, `backbones.py` (the torchvision
backbones' training and embedding speed), `roofline.py` (FLOPs, the peak),
`report.py` (the tables); `measure.py` is what the measuring processes share.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "src"), str(Path(__file__).resolve().parent)]
SYSTEMS = ("baseline", "contrastive", "triplet")


def run_child(args) -> dict:
    """In the child process: pin the arithmetic as every stage does, then measure one thing."""
    from facesim.core.params import load_section
    from facesim.pipeline.runtime import RuntimeParams, pin_arithmetic

    pin_arithmetic(load_section(RuntimeParams, args.params, "runtime"))
    if args.child == "baseline":
        from measure_baseline import run_baseline

        return run_baseline(args)
    if args.child == "ablations":
        from ablations import run_ablations

        return run_ablations(args)
    if args.child == "backbones":
        from backbones import run_backbones

        return run_backbones(args)
    if args.child == "scale":
        from scale import run_scale

        return run_scale(args)
    if args.child == "peak":
        from roofline import run_peak

        return run_peak(args)
    from measure_ours import run_ours

    return run_ours(args, args.child)


def child(name: str, args, native_kernels: bool = False, extra: tuple[str, ...] = ()) -> dict:
    """Run one system in a fresh process; its JSON result comes back through a file.

    Each child pins its arithmetic as the pipeline's stages do (facesim.pipeline.runtime); with
    `native_kernels` it lets torch, oneDNN and MKL pick the fastest kernels for this CPU instead.
    """
    env = {**os.environ, "FACESIM_NATIVE_KERNELS": "1" if native_kernels else "0"}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, __file__, "--child", name, "--out-json", str(out), "--faces", args.faces,
               "--samples", args.samples, "--params", args.params, "--baseline-epochs", str(args.baseline_epochs),
               "--seed", str(args.seed)] + (["--quick"] if args.quick else []) + list(extra)
        started = time.perf_counter()
        subprocess.run(cmd, check=True, cwd=REPO, env=env)
        result = json.loads(out.read_text())
        result["process_seconds"] = time.perf_counter() - started
        return result


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def run_scale_benchmark(args) -> None:
    """Each size in memory, then memory-mapped (the first memmap run of a size builds its cache)."""
    from report import write
    from scale import MODES, default_data_folder, scale_table

    data = args.scale_data or default_data_folder()
    rows = []
    for size in args.sizes:
        for mode in MODES:
            say(f"scale: {size} faces, {mode} ...")
            rows.append(child("scale", args, extra=("--size", str(size), "--mode", mode, "--steps", str(args.steps),
                                                    "--scale-data", data)))
    report = scale_table(rows)
    print(report)
    if args.out:
        write(args.out, report, {"scale": rows})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="CI mode: 5 baseline epochs (under 5 minutes in all)")
    parser.add_argument("--ablations", action="store_true", help="also measure each speed-up one at a time")
    parser.add_argument("--backbones", action="store_true",
                        help="also measure resnet18 and efficientnet_b0 against compact (about a minute with --quick)")
    parser.add_argument("--baseline-epochs", type=int, default=None, help="default: 100, or 5 with --quick")
    parser.add_argument("--faces", default="data/raw/faces")
    parser.add_argument("--samples", default="data/processed")
    parser.add_argument("--params", default="params.yaml", help="our models train with its 'train' section")
    parser.add_argument("--seed", type=int, default=42, help="the baseline's random pairs and initialisation")
    parser.add_argument("--out", default=None, help="also write the tables (markdown) and results (JSON next to it)")
    parser.add_argument("--scale", action="store_true",
                        help="only measure training on synthetic data sets of --sizes faces, in memory and memory-mapped")
    parser.add_argument("--sizes", type=int, nargs="+", default=[400, 20_000, 200_000], help="--scale: data set sizes")
    parser.add_argument("--steps", type=int, default=30, help="--scale: timed training steps per run")
    parser.add_argument("--scale-data", default=None,
                        help="--scale: folder for the synthetic faces and their cache, reused (default: <tmp>/facesim-scale)")
    parser.add_argument("--child", choices=SYSTEMS + ("ablations", "backbones", "peak", "scale"), help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    parser.add_argument("--out-json", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.baseline_epochs is None:
        args.baseline_epochs = 5 if args.quick else 100
    if args.child:
        Path(args.out_json).write_text(json.dumps(run_child(args)))
        return
    if args.scale:
        run_scale_benchmark(args)
        return

    from report import ablation_table, backbone_table, pinning_table, systems_table, write
    from roofline import combine_peaks, machine, peak_line

    started = time.perf_counter()
    info = machine()
    say(f"machine: {info}; measuring the float32 peak ...")
    peak_before = child("peak", args)
    results = []
    for name in SYSTEMS:
        say(f"running {name} ...")
        results.append(child(name, args))
    say("running triplet with native kernels ...")
    native = child("triplet", args, native_kernels=True)
    say("measuring the float32 peak again ...")
    peak = combine_peaks(peak_before, child("peak", args))
    say(peak_line(peak))
    report, warnings = systems_table(results, info, peak, args.baseline_epochs)
    for warning in warnings:
        say(warning)
    report += "\n\n" + pinning_table(results[-1], native)
    ablations = None
    if args.ablations:
        say("running ablations ...")
        ablations = child("ablations", args)["rows"]
        report += "\n\n" + ablation_table(ablations)
    backbones = None
    if args.backbones:
        say("running backbones ...")
        backbones = child("backbones", args)["rows"]
        report += "\n\n" + backbone_table(backbones)
    report += f"\n\nBenchmark wall time: {time.perf_counter() - started:.0f} s"
    print(report)
    if args.out:
        write(args.out, report, {"machine": info, "peak": peak, "results": results, "native_kernels": native,
                                 "ablations": ablations, "backbones": backbones})


if __name__ == "__main__":
    main()
