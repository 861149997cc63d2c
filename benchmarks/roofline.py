"""The roofline: how close each system's arithmetic comes to the float32 peak of this machine.

FLOPs per face: `flops.count_flops` runs one 1-channel face through
the network and counts its Conv2d and Linear layers only, a multiply-add as 2
FLOPs, once: a convolution 2 * Cin/groups * kh * kw * Cout * Hout * Wout, a
linear layer 2 * in * out; biases, BatchNorm, ReLU, pooling and the final
normalisation are not counted (a few per cent of the multiply-adds, and not
multiply-adds). An ensemble embeds a face through every member, so its FLOPs per
embedded face are the members' sum; a training face pass goes through one
member (`flops_per_face_pass`), and costs 3x its forward FLOPs (forward,
gradient of the input, gradient of the weights): an upper bound, the first
layer's input gradient is never computed (1.3% of the compact network's
training FLOPs, 0.2% of the baseline's). Both counts agree with torch's own
`torch.utils.flop_counter.FlopCounterMode` to the FLOP.

Peak: the best, over several repeats each, of dense float32 kernels of a few
sizes, measured in a child process pinned as every system is
(`facesim.pipeline.runtime.pin_arithmetic`: same thread count, same kernels):
matrix products (MKL, whose pinned COMPATIBLE branch is its slow one) and 3x3
channels-last convolutions (oneDNN, AVX2: the kernels the models spend their
time in). The parent measures it before and after the systems and keeps the
best of each kernel. Achieved rates are medians and the peak is a best, so a
fraction above 100% means the peak was measured on a busier machine than the
system (or a FLOP count is wrong): the table flags it.
"""

from __future__ import annotations

import platform
from pathlib import Path

from measure import call_seconds

MATMUL_SIZES = (512, 1024, 2048)
CONV_SHAPES = ((128, 32, 32, 16), (256, 16, 16, 32))  # channels (in = out), height, width, batch
PEAK_REPEATS = 7
TRAIN_FLOPS_PER_FORWARD = 3


def machine() -> dict:
    import torch

    from facesim.core.dlib_face import usable_cores

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        cpu = platform.processor() or "unknown"
    return {"cpu": cpu, "cores": usable_cores(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "onednn": torch.backends.mkldnn.is_available(), "python": platform.python_version()}


def best_gflops(fn, flops: int, reps: int = PEAK_REPEATS) -> float:
    """GFLOP/s of the fastest of `reps` timed calls, after one warm-up call."""
    return flops / min(call_seconds(fn, reps)) / 1e9


def run_peak(args) -> dict:
    """Child process: the float32 peak under this process's pinned arithmetic, kernel by kernel."""
    import torch

    torch.manual_seed(0)
    kernels = {}
    for n in MATMUL_SIZES:
        a, b = torch.randn(n, n), torch.randn(n, n)
        kernels[f"matmul {n}^3"] = best_gflops(lambda: a @ b, 2 * n**3)
    for channels, height, width, batch in CONV_SHAPES:
        conv = torch.nn.Conv2d(channels, channels, 3, padding=1, bias=False).eval()
        conv.to(memory_format=torch.channels_last)
        x = torch.randn(batch, channels, height, width).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            kernels[f"conv3x3 {channels}ch {height}x{width} x{batch}"] = best_gflops(
                lambda: conv(x), 2 * channels * 9 * channels * height * width * batch)
    return {"system": "peak", "kernels": kernels, "threads": torch.get_num_threads()}


def combine_peaks(*measured: dict) -> dict:
    """The best of each kernel over several peak measurements, and the best of all: the peak."""
    kernels = {name: max(m["kernels"][name] for m in measured) for name in measured[0]["kernels"]}
    best = max(kernels, key=kernels.get)
    return {"gflops": kernels[best], "kernel": best, "kernels": kernels, "threads": measured[0]["threads"]}


def achieved(result: dict) -> tuple[float, float]:
    """(embedding, training) GFLOP/s of a system's result."""
    embed = result["flops_per_face"] * result["embed_model_per_s"] / 1e9
    train = TRAIN_FLOPS_PER_FORWARD * result["flops_per_face_pass"] * result["train_faces_per_s"] / 1e9
    return embed, train


def fraction_cell(gflops: float, peak: float) -> str:
    share = gflops / peak
    return f"{100 * share:.0f}%" if share <= 1 else f"**{100 * share:.0f}%: ABOVE THE PEAK**"


def roofline_table(results: list[dict], peak: dict) -> tuple[str, list[str]]:
    """The roofline table, and a warning for each rate above the measured peak."""
    kernels = ", ".join(f"{name} {gflops:.0f}" for name, gflops in peak["kernels"].items())
    lines = ["Roofline (achieved GFLOP/s = FLOPs/face x faces/s; FLOPs: Conv2d and Linear multiply-adds x 2, "
             "BatchNorm, ReLU and pooling not counted; training: 3x one network's forward FLOPs per face pass). "
             f"Peak: the best of {PEAK_REPEATS} repeats, before and after the systems, pinned as they are, of each "
             f"float32 kernel (GFLOP/s: {kernels}); the best of them, {peak['kernel']}, is the peak:", "",
             "| system | embed GFLOP/s | % of peak | train GFLOP/s | % of peak |", "|---|---|---|---|---|"]
    warnings = []
    for r in results:
        embed, train = achieved(r)
        lines.append(f"| {r['system']} | {embed:.1f} | {fraction_cell(embed, peak['gflops'])} | {train:.1f} | "
                     f"{fraction_cell(train, peak['gflops'])} |")
        warnings += [f"WARNING: {r['system']} {what} at {rate:.1f} GFLOP/s is above the measured peak "
                     f"({peak['gflops']:.1f}): the peak was measured on a busier machine, or a FLOP count is wrong"
                     for what, rate in (("embedding", embed), ("training", train)) if rate > peak["gflops"]]
    return "\n".join(lines + ([""] + warnings if warnings else [])), warnings


def peak_line(peak: dict) -> str:
    return (f"float32 peak {peak['gflops']:.1f} GFLOP/s (pinned as the systems are, {peak['threads']} threads; "
            f"{peak['kernel']})")
