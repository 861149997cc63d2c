"""facesim.pipeline.runtime: pinned arithmetic, and stage failures in one line."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from helpers import REPO
from facesim.core.losses import exact_sqrt
from facesim.core.params import ParamsError, parse_section
from facesim.pipeline.runtime import (DEBUG_ENV, NATIVE_KERNELS_ENV, PINNED_KERNELS, RESTORE_HINT, RuntimeParams,
                                      failure_line, pin_arithmetic, stage_args)

pytestmark = pytest.mark.usefixtures("torch_global_state")


def test_threads_must_be_a_whole_number_of_at_least_one():
    assert parse_section(RuntimeParams, {"threads": 3}, "runtime").threads == 3
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ParamsError, match="runtime.threads"):
            parse_section(RuntimeParams, {"threads": bad}, "runtime")


def test_pin_sets_the_kernels_threads_and_deterministic_algorithms(monkeypatch):
    for name in PINNED_KERNELS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv(NATIVE_KERNELS_ENV, raising=False)
    pinned = pin_arithmetic(RuntimeParams(threads=1))
    assert pinned == {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "COMPATIBLE"}
    assert all(os.environ[k] == v for k, v in pinned.items())
    assert torch.get_num_threads() == 1
    assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()


def test_pinning_and_seeding_do_not_import_torchs_compiler() -> None:
    # torch.use_deterministic_algorithms imports torch._inductor (and dynamo): 1.8 s of every stage
    code = ("import sys, torch; from facesim.pipeline.runtime import RuntimeParams, pin_arithmetic; "
            "from facesim.training.network import seed_everything; pin_arithmetic(RuntimeParams(threads=1)); "
            "seed_everything(0); print(torch.are_deterministic_algorithms_enabled(), "
            "torch.is_deterministic_algorithms_warn_only_enabled(), "
            "sorted(m for m in ('torch._inductor', 'torch._dynamo') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True True []"


def test_native_kernels_leave_the_libraries_alone(monkeypatch):
    for name in PINNED_KERNELS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(NATIVE_KERNELS_ENV, "1")
    assert pin_arithmetic(RuntimeParams(threads=2)) == {}
    assert not any(name in os.environ for name in PINNED_KERNELS)
    assert torch.get_num_threads() == 2


def test_a_fresh_process_computes_with_the_pinned_kernels():
    """The variables take effect when set after `import torch`, before the first tensor: as the stages do."""
    code = textwrap.dedent("""
        import torch
        from facesim.pipeline.runtime import RuntimeParams, pin_arithmetic
        pin_arithmetic(RuntimeParams(threads=1))
        print(torch.backends.cpu.get_cpu_capability(), torch.get_num_threads())
    """)
    env = {k: v for k, v in os.environ.items() if k not in PINNED_KERNELS and k != NATIVE_KERNELS_ENV}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["AVX2", "1"]


def test_exact_sqrt_is_correctly_rounded():
    torch.manual_seed(0)
    x = torch.rand(100_000) * 10 + 1e-3
    exact = torch.from_numpy(x.numpy().astype("float64") ** 0.5).float()  # numpy: IEEE sqrt, then one rounding
    assert torch.equal(exact_sqrt(x), exact)
    assert exact_sqrt(x).dtype == torch.float32
    x.requires_grad_(True)
    exact_sqrt(x).sum().backward()
    assert torch.allclose(x.grad, 0.5 / exact.detach(), rtol=1e-6)


def test_expected_failures_are_one_line_with_the_dvc_advice():
    line = failure_line("train@triplet", ParamsError("params.yaml: train.lr must be positive, got -1"))
    assert line == f"train@triplet: params.yaml: train.lr must be positive, got -1. {RESTORE_HINT}"
    assert "\n" not in line
    unexpected = failure_line("evaluate@triplet", KeyError("model_state"))
    assert unexpected.startswith("evaluate@triplet: unexpected error: KeyError: 'model_state'; rerun with "
                                 f"{DEBUG_ENV}=1 for the traceback")


def _stage_script(tmp_path: Path, body: str) -> Path:
    script = tmp_path / "stage.py"
    script.write_text(textwrap.dedent(f"""
        from facesim.pipeline.runtime import run_stage
        def main():
            {body}
        run_stage("demo", main)
    """))
    return script


@pytest.mark.parametrize("debug", [False, True])
def test_a_failing_stage_prints_one_line_or_with_debug_the_traceback(tmp_path, debug):
    script = _stage_script(tmp_path, "raise FileNotFoundError('data/raw/faces: not found; run the fetch stage')")
    env = {**os.environ, DEBUG_ENV: "1" if debug else "0", "DVC_STAGE": "sample"}
    result = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True)
    assert result.returncode == 1
    if debug:
        assert "Traceback" in result.stderr
    else:
        assert result.stderr == f"sample: data/raw/faces: not found; run the fetch stage. {RESTORE_HINT}\n"


def test_a_stage_stopped_by_ctrl_c_says_so_and_exits_130(tmp_path):
    script = _stage_script(tmp_path, "raise KeyboardInterrupt")
    result = subprocess.run([sys.executable, str(script)], env={**os.environ, DEBUG_ENV: "0"},
                            capture_output=True, text=True)
    assert result.returncode == 130
    assert result.stderr.startswith("demo: stopped") and "dvc checkout" in result.stderr
    assert "Traceback" not in result.stderr


def test_every_torch_stage_pins_before_its_work_and_every_stage_runs_through_run_stage():
    for script in sorted((REPO / "stages").glob("*.py")):
        text = script.read_text()
        assert "run_stage(" in text, f"{script.name} does not run its main through run_stage"
        if script.stem in ("train", "evaluate", "cv_fold"):
            main = next(node for node in ast.parse(text).body if isinstance(node, ast.FunctionDef) and node.name == "main")
            # what main does first: read its command line, then pin, before anything else
            first, second = (ast.unparse(statement) for statement in main.body[:2])
            assert first.startswith("args = stage_args(") and second == "pin_runtime(args.params)", \
                f"{script.name} does not pin right after reading its command line"


def test_stage_args_reads_params_and_one_required_option_per_keyword(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["stage.py", "--train-pairs", "a.csv", "--fold", "2", "--models", "x", "y"])
    args = stage_args("the doc", "'train'", train_pairs="the training pairs", fold={"type": int, "help": "a fold"},
                      models={"nargs": "+"})
    assert vars(args) == {"params": "params.yaml", "train_pairs": "a.csv", "fold": 2, "models": ["x", "y"]}
    monkeypatch.setattr(sys, "argv", ["stage.py", "--params", "p.yaml"])
    with pytest.raises(SystemExit):
        stage_args("the doc", "'train'", train_pairs="the training pairs")
    assert "the following arguments are required: --train-pairs" in capsys.readouterr().err


def test_every_stage_that_pins_declares_the_runtime_params_it_reads():
    """A change of runtime.threads must rerun exactly the stages whose numbers depend on it."""
    import yaml

    for dvcfile in ("dvc.yaml", "cv/dvc.yaml"):
        for name, stage in yaml.safe_load((REPO / dvcfile).read_text())["stages"].items():
            stage = stage.get("do", stage)
            script = next(d for d in stage["deps"] if isinstance(d, str) and d.startswith("stages/"))
            assert "src/facesim/pipeline/runtime.py" in stage["deps"], f"{dvcfile}:{name} does not list runtime.py"
            pins = "pin_runtime(" in (REPO / script).read_text()
            declared = any(p in ("runtime", "runtime.threads") for p in stage.get("params", []) if isinstance(p, str))
            assert pins == declared, f"{dvcfile}:{name}: pins {pins}, declares runtime params {declared}"
