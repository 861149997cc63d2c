"""How every stage starts and ends: the same arithmetic on every x86-64 machine, failures in one line.

Same numbers everywhere. Three things decide the bits a CPU computes for the same
float32 program, and each stage pins them with `pin_arithmetic` before its first
tensor operation (torch, oneDNN and MKL read these settings when they first run):

- the vector width of the kernels: torch and oneDNN pick AVX-512 where the CPU has
  it and AVX2 where not, and sum in a different order; pinned to AVX2, which every
  x86-64 server since 2013 has;
- MKL's code branch: its AVX2 branch is reproducible only across Intel CPUs (AMD
  gets its default one); COMPATIBLE is the branch that is the same on both;
- the thread count (`runtime.threads`): reductions split their work by thread, so
  1, 2 and 4 threads give three different models.

Two torch kernels also refine the CPU's approximate reciprocal square root, which
Intel, AMD and emulators round differently: float32 `torch.sqrt` (see
`losses.exact_sqrt`) and the default Adam (the train stage uses the fused one).

Checked on one AMD EPYC (Zen 4) natively and under QEMU 10 emulating an Intel Haswell
and an AMD EPYC-Rome (other vendor, ISA and cache sizes): the same weights and
embeddings after two epochs of both trainings, augmentation included, to the bit
(`scripts/cross_cpu_check.py`). Set FACESIM_NATIVE_KERNELS=1 to let the
libraries choose the fastest kernels for the machine instead (numbers then differ
by CPU model).

One-line failures. `run_stage` runs a stage's `main`: an expected failure prints
`<stage>: <problem>; <what to do>` and what DVC did to the stage's outputs (it
deletes them before running a stage; `dvc checkout` brings the committed ones
back from its cache), and exits non-zero; FACESIM_DEBUG=1 shows the traceback.

So a stage script in stages/ is its own few lines (as DVC's example stages): `stage_args` reads its
command line, `pin_runtime` pins a torch stage's arithmetic, it reads its params section, opens its
MLflow run (`facesim.mlops.tracking.stage_run`), calls one function of `facesim.pipeline` and prints
one line; `run_stage` runs it.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from facesim.core.params import ParamsError, load_section
from facesim.mlops.tracking import StageKilled

PINNED_KERNELS = {
    "ATEN_CPU_CAPABILITY": "avx2",  # torch's own vectorised kernels
    "ONEDNN_MAX_CPU_ISA": "AVX2",  # oneDNN's convolutions, pooling, batch norm
    "MKL_CBWR": "COMPATIBLE",  # MKL's matrix products: the one branch shared by Intel and AMD
}
NATIVE_KERNELS_ENV = "FACESIM_NATIVE_KERNELS"
DEBUG_ENV = "FACESIM_DEBUG"
RESTORE_HINT = ("DVC deletes a stage's outputs before running it: `dvc checkout` (and `git checkout reports` "
                "for the reports) brings back the committed ones, `dvc repro` rebuilds them")


@dataclass(frozen=True)
class RuntimeParams:
    """params.yaml `runtime`: how every torch stage computes."""

    threads: int  # torch CPU threads; the numbers depend on it, so it is fixed, not one per core

    def validate(self) -> None:
        if isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 1:
            raise ParamsError(f"runtime.threads must be a whole number >= 1, got {self.threads!r}")


def pin_arithmetic(params: RuntimeParams) -> dict[str, str]:
    """Pin kernels, thread count and deterministic algorithms for this process; returns the pinned
    variables ({} under FACESIM_NATIVE_KERNELS=1).

    Call it before the first tensor operation: the libraries read the variables
    when they first run, and ignore later changes.
    """
    import torch

    params.validate()
    pinned = {} if os.environ.get(NATIVE_KERNELS_ENV) == "1" else dict(PINNED_KERNELS)
    os.environ.update(pinned)
    # Every batch of distinct faces has its own size, and oneDNN keeps compiled kernels for up to
    # 1024 shapes: memory then grows by ~10 MB a step; sixteen keep the few shapes of embedding.
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "16")
    torch.set_num_threads(params.threads)
    # torch.use_deterministic_algorithms(True, warn_only=True) without its import of torch._inductor (1.8 s a
    # stage, for a compiler no stage uses): the same switch in torch's C++ core
    torch.set_deterministic_debug_mode("warn")
    return pinned


def pin_runtime(params_path: str | os.PathLike) -> dict[str, str]:
    """`pin_arithmetic` with the `runtime` section of the params file: a torch stage's first step, before any
    tensor."""
    return pin_arithmetic(load_section(RuntimeParams, params_path, "runtime"))


def stage_args(doc: str | None, reads: str, **options: str | Mapping[str, Any]) -> argparse.Namespace:
    """A stage script's command line: `--params` (the params file, params.yaml by default; `reads` says what the
    stage reads of it) and one required option per keyword, `train_pairs` as `--train-pairs`, given its help
    or argparse's keyword arguments for it (`{"choices": MODELS, "help": ...}`)."""
    parser = argparse.ArgumentParser(description=doc)
    parser.add_argument("--params", default="params.yaml", help=f"params file; this stage reads {reads}")
    for name, option in options.items():
        settings = {"help": option} if isinstance(option, str) else dict(option)
        parser.add_argument("--" + name.replace("_", "-"), required=True, **settings)
    return parser.parse_args()


def _is_expected(exc: BaseException) -> bool:
    """Failures a user can act on: bad params or input, missing files, an unreachable store, our own errors."""
    return isinstance(exc, (OSError, ValueError, ArithmeticError)) or type(exc).__module__.startswith("facesim")


def failure_line(stage: str, exc: BaseException) -> str:
    """The one line a failed stage prints."""
    message = str(exc).strip().rstrip(".") or type(exc).__name__
    if not _is_expected(exc):
        message = (f"unexpected error: {type(exc).__name__}: {message}; rerun with {DEBUG_ENV}=1 for the "
                   "traceback, and report it")
    return f"{stage}: {message}. {RESTORE_HINT}"


def run_stage(stage: str, main: Callable[[], None]) -> None:
    """Run a stage script's `main`; on failure print one line (see the module doc) and exit non-zero.

    `stage` is the name used when DVC does not set DVC_STAGE (a script run by hand).
    Stopped by Ctrl-C or SIGTERM, it exits 130 or 143 with the same advice.
    """
    name = os.environ.get("DVC_STAGE") or stage
    try:
        main()
    except SystemExit:
        raise
    except BaseException as exc:
        if os.environ.get(DEBUG_ENV) == "1":
            raise
        stopped = isinstance(exc, (KeyboardInterrupt, StageKilled))
        if stopped:
            status = getattr(exc, "exit_status", 130)
            print(f"{name}: stopped ({type(exc).__name__}). {RESTORE_HINT}", file=sys.stderr, flush=True)
        else:
            status = 1
            print(failure_line(name, exc), file=sys.stderr, flush=True)
        sys.exit(status)
