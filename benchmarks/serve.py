"""`mlflow models serve` of a model's two registered verifiers, side by side in one run: the checkpoint's
(`facesim-<model>`, torch) and the ONNX export's (`facesim-<model>-onnx`, onnxruntime, no torch).

Each is served alone in turn (`--env-manager local`, one worker, on 127.0.0.1), from the repository's MLflow
store that `dvc repro` registered them in. First both answer the same pairs of held-out faces: their
distances must agree within the export's parity bound (1e-4) and their verdicts on every pair. Then, for
one pair per request and for 64-pair batches, 1 and 16 concurrent clients send requests back to back for
`--seconds`; requests/s and pairs/s are what the server completed, the latency its median. The server's
memory is the peak RSS of its processes (uvicorn's worker holds the model).

    .venv/bin/python benchmarks/serve.py             # writes benchmarks/results/serve.{json,md}

Run it alone on the machine: another busy process spoils every figure.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from facesim.app.servers import free_port, stop_group, wait_until_answering  # noqa: E402
from facesim.core.onnx_model import PARITY  # noqa: E402
from facesim.mlops.pyfunc import encode_image  # noqa: E402
from facesim.mlops.registry import CHAMPION, registered_name  # noqa: E402
from facesim.mlops.tracking import tracking_uri  # noqa: E402
from measure import write_results  # noqa: E402

DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only, never a proxy
START_S = 180  # two busy cores: the torch server takes ~20 s to import and load


def post(url: str, body: bytes, timeout: float = 120) -> list[dict]:
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
    with DIRECT.open(request, timeout=timeout) as response:
        return json.loads(response.read())["predictions"]


def pairs_body(pairs: list[tuple[str, str]]) -> bytes:
    return json.dumps({"dataframe_split": {"columns": ["image1", "image2"], "data": [list(p) for p in pairs]}}).encode()


def group_peak_rss_mb(leader: int) -> float:
    """Sum of the peak RSS (VmHWM) of the processes in `leader`'s process group (the server and its worker)."""
    total = 0
    for status in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = status.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == leader:  # pgrp
                for line in (status.parent / "status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        total += int(line.split()[1])
    return total / 1024


@contextlib.contextmanager
def served(model_uri: str, log: Path) -> Iterator[tuple[str, int]]:
    """`mlflow models serve` of `model_uri` on a free loopback port until the block ends: its invocations URL
    and the server's process group."""
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri(REPO), "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri, "--env-manager", "local",
               "-h", "127.0.0.1", "-p", str(port), "-w", "1"]
    with log.open("w") as out:
        server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=REPO, env=env)
    try:
        problem = wait_until_answering(server, f"http://127.0.0.1:{port}/ping", START_S)
        if problem is not None:
            sys.exit(f"{model_uri}: the server {problem}:\n{log.read_text()[-3000:]}")
        yield f"http://127.0.0.1:{port}/invocations", server.pid
    finally:
        stop_group(server, 20)


def load(url: str, bodies: list[bytes], pairs_per_request: int, clients: int, seconds: float) -> dict:
    """`clients` threads each post `bodies` (in turn, from a place of its own) back to back for `seconds`."""
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def client(number: int) -> None:
        turn = number
        while time.monotonic() < stop:
            started = time.perf_counter()
            try:
                post(url, bodies[turn % len(bodies)])
            except (OSError, urllib.error.HTTPError) as exc:
                with lock:
                    errors.append(repr(exc))
                return
            with lock:
                latencies.append(time.perf_counter() - started)
            turn += 1

    began = time.monotonic()
    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    took = time.monotonic() - began
    if errors:
        sys.exit(f"{url}: {len(errors)} requests failed, first: {errors[0]}")
    return {"pairs_per_request": pairs_per_request, "clients": clients, "requests": len(latencies),
            "seconds": took, "requests_per_s": len(latencies) / took,
            "pairs_per_s": len(latencies) * pairs_per_request / took,
            "median_latency_ms": 1000 * statistics.median(latencies)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="compact-triplet", help="<backbone>-<loss>, registered by dvc repro")
    parser.add_argument("--faces", default="data/raw/faces/testing", help="the held-out faces the pairs are made of")
    parser.add_argument("--seconds", type=float, default=15, help="how long each load lasts")
    parser.add_argument("--batch", type=int, default=64, help="pairs per batched request")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--out", default="benchmarks/results/serve", help="writes OUT.json and OUT.md")
    args = parser.parse_args()

    files = sorted((REPO / args.faces).rglob("*.pgm"))
    if len(files) < 2:
        sys.exit(f"{args.faces}: fewer than two faces; run the fetch stage (dvc repro)")
    encoded = [encode_image(path) for path in files]
    every_pair = [(encoded[i], encoded[j]) for i in range(len(files)) for j in range(i + 1, len(files))]
    singles = [pairs_body([pair]) for pair in every_pair[:256]]
    batches = [pairs_body(every_pair[k:k + args.batch]) for k in range(0, 4 * args.batch, args.batch)]
    check = pairs_body(every_pair[:args.batch])

    flavors = {"pytorch": registered_name(args.model), "onnx": registered_name(args.model, onnx=True)}
    rows, answers = [], {}
    with tempfile.TemporaryDirectory() as folder:
        for flavor, name in flavors.items():
            uri = f"models:/{name}@{CHAMPION}"
            print(f"serving {uri}", file=sys.stderr, flush=True)
            with served(uri, Path(folder) / f"{flavor}.log") as (url, group):
                answers[flavor] = post(url, check)
                for body in (*singles[:3], *batches[:1]):  # warm up
                    post(url, body)
                for clients in args.clients:
                    for per_request, bodies in ((1, singles), (args.batch, batches)):
                        row = {"flavor": flavor, "model_uri": uri,
                               **load(url, bodies, per_request, clients, args.seconds)}
                        rows.append(row)
                        print(f"  {flavor}: {per_request} pairs x {clients} clients: {row['requests_per_s']:.1f} "
                              f"requests/s", file=sys.stderr, flush=True)
                memory = group_peak_rss_mb(group)
                for row in rows:
                    if row["flavor"] == flavor:
                        row["server_peak_rss_mb"] = memory

    torch_answer, onnx_answer = answers["pytorch"], answers["onnx"]
    difference = max(abs(a["distance"] - b["distance"]) for a, b in zip(torch_answer, onnx_answer))
    same_verdicts = all(a["same_person"] == b["same_person"] for a, b in zip(torch_answer, onnx_answer))
    if not (difference <= PARITY and same_verdicts):
        sys.exit(f"the ONNX verifier does not answer as the pytorch one: distances differ by up to {difference:.3g}, "
                 f"verdicts {'agree' if same_verdicts else 'differ'}")

    info = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "python": platform.python_version(), "model": args.model, "seconds_per_load": args.seconds,
            "parity_pairs": len(torch_answer), "max_abs_distance_difference": difference,
            "same_verdicts": same_verdicts}
    lines = [f"`mlflow models serve` (one worker, {info['cores']} cores) of {args.model}'s two registered verifiers, "
             f"each alone; {args.seconds:g} s of requests back to back per row. Parity on {len(torch_answer)} "
             f"held-out pairs: distances within {difference:.2g} (max abs), the same verdict on every pair.", "",
             "| flavor | pairs per request | clients | requests/s | pairs/s | median latency ms | server peak RSS MB |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['flavor']} | {row['pairs_per_request']} | {row['clients']} | {row['requests_per_s']:.1f} "
                     f"| {row['pairs_per_s']:.0f} | {row['median_latency_ms']:.0f} | {row['server_peak_rss_mb']:.0f} |")
    write_results(REPO / args.out, info, rows, lines)


if __name__ == "__main__":
    main()
