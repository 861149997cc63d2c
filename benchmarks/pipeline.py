"""`dvc repro -f` of a pipeline as a user runs it, stage by stage: what each stage costs on the wall clock and
how much of that is only starting its process and importing what its script imports.

Every stage runs again (`-f`) with empty caches (`FACESIM_CACHE` a fresh folder: faces decoded, dlib
descriptors computed anew), in this checkout, against its MLflow store, as `dvc repro` runs them. A stage's
seconds run from DVC's "Running stage" line to the next one (or to DVC's end): DVC's own checks, the
process start, the imports and the work. Its import seconds are those of a fresh interpreter importing
the stage script without running it (`runpy`, best of 3), measured after the pipeline, one at a time.

    .venv/bin/python benchmarks/pipeline.py                   # dvc.yaml -> benchmarks/results/pipeline.{json,md}
    .venv/bin/python benchmarks/pipeline.py --pipeline cv/dvc.yaml --out benchmarks/results/pipeline_cv

Run it alone on the machine: another busy process spoils every figure. It leaves the outputs as `dvc repro`
does (the same bytes, for a commit whose dvc.lock is up to date).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from measure import write_results

REPO = Path(__file__).resolve().parents[1]
RUNNING = re.compile(r"^Running stage '([^']+)'")
IMPORT_REPS = 3


def timed_repro(pipeline: str, env: dict[str, str]) -> tuple[list[dict], float]:
    """`dvc repro -f pipeline`: each stage's wall seconds, in the order DVC ran them, and the whole run's."""
    dvc = Path(sys.executable).with_name("dvc")
    command = [str(dvc if dvc.exists() else "dvc"), "repro", "-f", pipeline]
    started = time.monotonic()
    stamps: list[tuple[str, float]] = []
    tail: list[str] = []
    with subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True) as process:
        for line in process.stdout:
            found = RUNNING.match(line)
            if found:
                stamps.append((found.group(1), time.monotonic()))
                print(f"  {found.group(1)}", file=sys.stderr, flush=True)
            tail = (tail + [line])[-40:]
    ended = time.monotonic()
    if process.returncode != 0:
        sys.exit(f"{' '.join(command)} failed ({process.returncode}):\n{''.join(tail)}")
    ends = [stamp for _, stamp in stamps[1:]] + [ended]
    return [{"stage": name, "seconds": end - start} for (name, start), end in zip(stamps, ends)], ended - started


def stage_scripts(pipeline: str) -> dict[str, str]:
    """Each stage of `pipeline` (matrix and foreach stages by their base name) -> the script its command runs."""
    stages = yaml.safe_load((REPO / pipeline).read_text())["stages"]
    scripts = {}
    for name, stage in stages.items():
        cmd = stage.get("cmd") or stage.get("do", {}).get("cmd", "")
        found = re.search(r"python (stages/\S+\.py)", cmd)
        if found:
            scripts[name] = found.group(1)
    return scripts


def import_seconds(script: str, env: dict[str, str]) -> float:
    """A fresh interpreter importing `script` without running its main: best of IMPORT_REPS."""
    code = f"import runpy; runpy.run_path({script!r}, run_name='imports_only')"
    best = float("inf")
    for _ in range(IMPORT_REPS):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, check=True)
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pipeline", default="dvc.yaml")
    parser.add_argument("--out", default="benchmarks/results/pipeline", help="writes OUT.json and OUT.md")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "FACESIM_CACHE": cache}
        rows, total = timed_repro(args.pipeline, env)
        scripts = stage_scripts(args.pipeline)
        imports = {script: import_seconds(script, env) for script in sorted(set(scripts.values()))}
    for row in rows:
        script = scripts.get(row["stage"].split("@")[0].split(":")[-1])
        row["script"] = script
        row["import_seconds"] = imports.get(script)
    known = [row["import_seconds"] for row in rows if row["import_seconds"] is not None]
    info = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "python": platform.python_version(), "pipeline": args.pipeline, "total_seconds": total,
            "stages": len(rows), "import_seconds": sum(known)}
    lines = [f"`dvc repro -f {args.pipeline}`, caches empty, {info['cores']} cores: {total:.0f} s for {len(rows)} "
             f"stages, of which {sum(known):.0f} s is their processes importing their scripts' modules.", "",
             "| stage | seconds | of which imports |", "|---|---|---|"]
    for row in rows:
        imported = "-" if row["import_seconds"] is None else f"{row['import_seconds']:.1f}"
        lines.append(f"| {row['stage']} | {row['seconds']:.1f} | {imported} |")
    lines.append(f"| **total** | **{total:.1f}** | **{sum(known):.1f}** |")
    write_results(REPO / args.out, info, rows, lines)


if __name__ == "__main__":
    main()
