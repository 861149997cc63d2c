"""The benchmark's report: markdown tables of the children's results, and the files `--out` writes."""

from __future__ import annotations

import json
from pathlib import Path

from roofline import peak_line, roofline_table


def fmt(value, spec: str = ".0f", missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def systems_table(results: list[dict], info: dict, peak: dict, baseline_epochs: int) -> tuple[str, list[str]]:
    """Ours against the baseline, their ratios and the roofline; and the roofline's warnings."""
    base = results[0]
    lines = [
        f"Machine: {info['cpu']}, {info['cores']} cores usable, torch {info['torch']} with "
        f"{info['torch_threads']} threads, oneDNN {info['onednn']}; {peak_line(peak)}",
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
            f"{base['peak_rss_main_mb'] / r['peak_rss_main_mb']:.1f}x | {fmt(speedup, '.1f')}{'x' if speedup else ''} |")
    roofline, warnings = roofline_table(results, peak)
    members = ", ".join(f"{r['system']} {r['members']}" for r in results[1:] if r.get("members", 1) > 1)
    lines += ["", roofline, "",
              f"Baseline: {baseline_epochs} epochs of 370 random pairs; peak RSS = main process "
              f"{base['peak_rss_main_mb']:.0f} MB + loader worker {base['peak_rss_workers_mb']:.0f} MB (a forked worker's "
              f"RSS counts the pages it shares with the main process: an upper bound); ours: one process, no "
              f"workers; the memory ratio compares the main processes."
              + (f" Ensembles ({members} members): MFLOP/face and embedding count every member; training "
                 "faces/s and rates count every member's face passes, in the wall-clock time of a second training "
                 "without validation (the members train side by side); s/epoch is that time per epoch." if members else "")]
    return "\n".join(lines), warnings


def pinning_table(pinned: dict, native: dict) -> str:
    """What the same numbers on every machine cost: the triplet model pinned vs the CPU's own kernels."""
    return "\n".join([
        "Pinned arithmetic (AVX2 kernels, MKL's COMPATIBLE branch, fixed threads; facesim.pipeline.runtime) "
        "against the fastest kernels for this CPU (FACESIM_NATIVE_KERNELS=1), triplet model, pinned / native:",
        "",
        "| train faces/s | embed faces/s (model) | embed faces/s (files) | test AUC pinned | test AUC native |",
        "|---|---|---|---|---|",
        f"| {pinned['train_faces_per_s'] / native['train_faces_per_s']:.2f}x | "
        f"{pinned['embed_model_per_s'] / native['embed_model_per_s']:.2f}x | "
        f"{pinned['embed_files_per_s'] / native['embed_files_per_s']:.2f}x | "
        f"{pinned['test_auc']:.4f} | {native['test_auc']:.4f} |",
    ])


def ablation_table(rows: list[dict]) -> str:
    lines = ["| change (one at a time) | before | after | unit | gain |", "|---|---|---|---|---|"]
    lines += [f"| {r['change']} | {r['before']:.0f} | {r['after']:.0f} | {r['unit']} | {r['gain']:.1f}x |"
              for r in rows]
    return "\n".join(lines)


def backbone_table(rows: list[dict]) -> str:
    """The torchvision backbones and dlib against compact (`backbones.py`): figures and ratios from one run
    (dlib: its head trains on descriptors; its embedding rate describes each face anew)."""
    reference = rows[0]
    lines = [f"Backbones, contrastive model, one network, P x K batches, {reference['threads']} threads; "
             f"ratios against {reference['backbone']} at {reference['input']} in the same run "
             "(s/epoch: training steps and the validation that ends the epoch; random weights, which train and "
             "embed as fast as ImageNet's):", "",
             "| backbone | input | MFLOP/face | train faces/s | s/epoch | embed faces/s | train vs compact "
             "| s/epoch vs compact | embed vs compact |",
             "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['backbone']} | {r['input'] if r['backbone'] != 'dlib' else '128 numbers'} | "
              f"{'-' if r['flops_per_face'] is None else format(r['flops_per_face'] / 1e6, '.1f')} | "
              f"{r['train_faces_per_s']:.0f} | {r['seconds_per_epoch']:.2f} | {r['embed_faces_per_s']:.0f} | {r['train_vs_compact']:.3f}x | "
              f"{r['epoch_vs_compact']:.1f}x | {r['embed_vs_compact']:.3f}x |" for r in rows]
    return "\n".join(lines)


def write(out: str, report: str, data: dict) -> None:
    """The report as markdown at `out`, and everything measured as JSON next to it."""
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(report + "\n")
    path.with_suffix(".json").write_text(json.dumps(data, indent=2) + "\n")
