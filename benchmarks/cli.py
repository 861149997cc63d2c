"""One `facesim verify` of two faces against face_recognition's equivalent, as a user runs each: a fresh
process per call, its wall time and peak RSS, best of `--reps`, side by side in one run.

face_recognition (the peer users compare us with) runs in its own virtual environment, made on first use
under `benchmarks/.peer-venv` (git-ignored): face_recognition 1.3.0 without its dependencies (its `dlib`
requirement would compile dlib from source), dlib-bin, face_recognition_models, numpy, Pillow, Click, and
setuptools below 81 (face_recognition_models imports pkg_resources). Its call is the README's:
`load_image_file` both files, `face_encodings` (HOG detection, 5-point landmarks, dlib's ResNet),
`face_distance`.

    .venv/bin/python benchmarks/cli.py                # writes benchmarks/results/cli.{json,md}

Run it alone on the machine: another busy process spoils every figure.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from measure import write_results

REPO = Path(__file__).resolve().parents[1]
PEER_VENV = REPO / "benchmarks" / ".peer-venv"
PEER_PACKAGES = ["dlib-bin>=19.24,<21", "face_recognition_models>=0.3,<0.4", "numpy", "pillow", "click>=6",
                 "setuptools<81"]
PEER_SCRIPT = """
import sys
import face_recognition
first, second = (face_recognition.load_image_file(path) for path in sys.argv[1:3])
encodings = [face_recognition.face_encodings(image) for image in (first, second)]
if not all(encodings):
    sys.exit("face_recognition: no face found")
distance = face_recognition.face_distance([encodings[0][0]], encodings[1][0])[0]
print(f"distance {distance:.4f}: {'same person' if distance <= 0.6 else 'different people'}")
"""


def peer_python() -> Path:
    """The peer environment's python, made (once) if missing."""
    python = PEER_VENV / "bin" / "python"
    if not (PEER_VENV / ".ready").is_file():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(PEER_VENV)], check=True)
        pip = [str(python), "-m", "pip", "install", "--quiet"]
        subprocess.run([*pip, *PEER_PACKAGES], check=True)
        subprocess.run([*pip, "--no-deps", "face_recognition==1.3.0"], check=True)
        (PEER_VENV / ".ready").write_text("")
    return python


def measure(command: list[str], reps: int) -> dict:
    """Wall seconds and peak RSS (MB) of `command`, each the best of `reps` fresh processes (after one
    warm-up run that fills the page cache); its last line of output."""
    runs = []
    for rep in range(reps + 1):
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
        out, err = process.stdout.read(), process.stderr.read()
        process.stdout.close(), process.stderr.close()
        if os.waitstatus_to_exitcode(status) != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{err}")
        if rep:  # the first run warms the page cache
            runs.append({"seconds": seconds, "peak_rss_mb": usage.ru_maxrss / 1024})
    return {"seconds": min(r["seconds"] for r in runs), "peak_rss_mb": min(r["peak_rss_mb"] for r in runs),
            "runs": runs, "output": out.strip().splitlines()[-1] if out.strip() else ""}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--first", default="data/raw/faces/testing/s5/1.pgm")
    parser.add_argument("--second", default="data/raw/faces/testing/s5/2.pgm")
    parser.add_argument("--models", nargs="+", default=["compact-triplet", "dlib-triplet"])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/results/cli", help="writes OUT.json and OUT.md")
    args = parser.parse_args()

    facesim = str(Path(sys.executable).with_name("facesim"))
    rows = [{"system": "face_recognition 1.3.0", **measure([str(peer_python()), "-c", PEER_SCRIPT, args.first,
                                                             args.second], args.reps)}]
    for model in args.models:
        rows.append({"system": f"facesim verify --model {model}",
                     **measure([facesim, "verify", args.first, args.second, "--model", model], args.reps)})
    peer = rows[0]
    for row in rows:
        row["time_vs_peer"] = row["seconds"] / peer["seconds"]
        row["memory_vs_peer"] = row["peak_rss_mb"] / peer["peak_rss_mb"]
    info = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "python": platform.python_version(),
            "first": args.first, "second": args.second, "reps": args.reps}
    lines = [f"One verify of {args.first} and {args.second}: a fresh process each, best of {args.reps} after a warm-up "
             f"run ({info['cores']} cores).", "",
             "| system | wall s | peak RSS MB | time vs face_recognition | memory vs face_recognition | says |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['system']} | {row['seconds']:.2f} | {row['peak_rss_mb']:.0f} | {row['time_vs_peer']:.2f}x "
                     f"| {row['memory_vs_peer']:.2f}x | {row['output'][:80]} |")
    write_results(REPO / args.out, info, rows, lines)


if __name__ == "__main__":
    main()
