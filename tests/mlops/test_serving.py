"""`mlflow models serve` of the champion that the evaluate stage registered (facesim.mlops.registry,
facesim.mlops.pyfunc), answering image pairs over real HTTP on 127.0.0.1: integration tests, since the
server takes seconds to start and the load test half a minute.

The store is `registry` of conftest (a tiny untrained model); requests send real ORL faces, since what
is served is looked at like a photo (the face found first) and the synthetic faces are patterns no
detector takes for faces. Only loopback traffic.
"""

from __future__ import annotations

import base64
import io
import json
import os
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image

from helpers import REGISTERED, TESTING, needs_orl, running_server
from facesim.app import api
from facesim.app.servers import free_port
from facesim.mlops.pyfunc import encode_image
from facesim.mlops.registry import CHAMPION

pytestmark = [pytest.mark.integration, needs_orl]

SERVER_START_S = 120  # generous: on two busy cores the server takes ~20 s to import torch and load


def post(url: str, body: dict, timeout: float = 30) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        body = error.read()
        try:
            return error.code, json.loads(body)
        except ValueError:  # e.g. the server's 504 on a request over its time limit is plain text
            return error.code, {"body": body.decode(errors="replace")}


@pytest.fixture(scope="module")
def served(registry, tmp_path_factory: pytest.TempPathFactory):
    """`mlflow models serve` of the champion on a free loopback port, for the module: its URL."""
    yield from serve(f"models:/{REGISTERED}@{CHAMPION}", registry, tmp_path_factory.mktemp("served"))


@pytest.fixture(scope="module")
def served_onnx(registry, tmp_path_factory: pytest.TempPathFactory):
    """The ONNX verifier the evaluate stage registered beside the checkpoint's (`REGISTERED`-onnx), served as
    `served` serves the checkpoint's: its URL."""
    yield from serve(f"models:/{REGISTERED}-onnx@{CHAMPION}", registry, tmp_path_factory.mktemp("served-onnx"))


def serve(model_uri: str, registry, folder: Path):
    """`mlflow models serve` of `model_uri` from the `registry` store on a free loopback port: yields its URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": registry["uri"], "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1",
           # The server starts `uvicorn` by name: the one beside this interpreter, venv active or not.
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri,
               "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "-w", "1"]
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only, never a proxy
    urllib.request.install_opener(opener)
    try:
        with running_server(command, f"{url}/ping", folder / "server.log", start_s=SERVER_START_S, cwd=folder,
                            env=env):
            yield url
    finally:
        urllib.request.install_opener(None)


def pairs_request(pairs) -> dict:
    rows = [[encode_image(a), encode_image(b)] for a, b in pairs]
    return {"dataframe_split": {"columns": ["image1", "image2"], "data": rows}}


def test_mlflow_serves_the_champion_over_http(registry, served):
    same, other = TESTING / "s5" / "1.pgm", TESTING / "s6" / "1.pgm"
    expected = api.verify(same, other, str(registry["checkpoint"]), threshold=registry["metrics"]["threshold"])
    url = served

    status, answer = post(f"{url}/invocations", pairs_request([(same, same), (same, other)]))
    assert status == 200, answer
    rows = answer["predictions"]
    assert [sorted(row) for row in rows] == [["distance", "same_person"]] * 2
    assert rows[0]["distance"] == pytest.approx(0.0, abs=1e-6) and rows[0]["same_person"] is True
    assert rows[1]["distance"] == pytest.approx(expected.distance, rel=1e-5)
    assert rows[1]["same_person"] is expected.same_person

    status, answer = post(f"{url}/invocations", {"dataframe_split": {
        "columns": ["image1", "image2"], "data": [[base64.b64encode(b"not an image").decode(), encode_image(same)]]}})
    assert status == 400 and "row 0, image1: not a readable image" in json.dumps(answer)

    # one bad row among good ones: the whole request is refused, and the message names that row
    good = pairs_request([(same, other)] * 3)["dataframe_split"]["data"]
    good[2][1] = "***"
    status, answer = post(f"{url}/invocations", {"dataframe_split": {"columns": ["image1", "image2"], "data": good}})
    assert status == 400 and "row 2, image2: not base64-encoded image bytes" in json.dumps(answer)

    blank = io.BytesIO()
    Image.new("L", (300, 200), 90).save(blank, format="PNG")
    status, answer = post(f"{url}/invocations", {"dataframe_split": {
        "columns": ["image1", "image2"],
        "data": [[encode_image(same), base64.b64encode(blank.getvalue()).decode()]]}})
    assert status == 400 and "row 0, image2: no face found" in json.dumps(answer)


def test_the_onnx_verifier_served_answers_as_the_checkpoints(served, served_onnx):
    """What benchmarks/serve.py measures the speed of: the same distances (within the export's parity bound)
    and verdicts from the ONNX export's verifier, on onnxruntime, as from the checkpoint's, on torch."""
    from facesim.pipeline.export import PARITY

    faces = [TESTING / f"s{person}" / f"{image}.pgm" for person in (5, 6, 7) for image in (1, 2, 3)]
    request = pairs_request([(faces[i], faces[j]) for i in range(len(faces)) for j in range(i + 1, len(faces))])
    (torch_status, on_torch), (onnx_status, on_onnx) = post(f"{served}/invocations", request), \
        post(f"{served_onnx}/invocations", request)
    assert torch_status == onnx_status == 200, (on_torch, on_onnx)
    on_torch, on_onnx = on_torch["predictions"], on_onnx["predictions"]
    assert len(on_torch) == len(on_onnx) == 36
    assert max(abs(a["distance"] - b["distance"]) for a, b in zip(on_torch, on_onnx)) <= PARITY
    assert [a["same_person"] for a in on_torch] == [b["same_person"] for b in on_onnx]


LOAD_CLIENTS = 32
LOAD_SINGLES = 3  # single-pair requests per client, besides its one batched request
LOAD_BUDGET_S = 30


def test_the_served_model_answers_32_concurrent_clients_as_it_answers_one(served):
    url = f"{served}/invocations"
    faces = [TESTING / f"s{person}" / f"{image}.pgm" for person in (5, 6, 7) for image in (1, 2)]
    pairs = [(faces[i], faces[j]) for i in range(len(faces)) for j in range(i + 1, len(faces))][:8]
    # the answers to one client at a time: each pair alone, and all of them in one batch
    singles = []
    for pair in pairs:
        status, answer = post(url, pairs_request([pair]))
        assert status == 200, answer
        singles.extend(answer["predictions"])
    status, answer = post(url, pairs_request(pairs))
    assert status == 200, answer
    batched = answer["predictions"]
    assert [row["same_person"] for row in batched] == [row["same_person"] for row in singles]
    assert [row["distance"] for row in batched] == pytest.approx([row["distance"] for row in singles], rel=1e-5)

    def client(number: int) -> list[tuple[list[int], int, list[dict]]]:
        """A few single pairs, then every pair in one batch, each starting at a pair of its own."""
        shift = number % len(pairs)
        asked = [[(shift + k) % len(pairs)] for k in range(LOAD_SINGLES)]
        asked.append([(shift + k) % len(pairs) for k in range(len(pairs))])
        return [(rows, *post(url, pairs_request([pairs[i] for i in rows]), timeout=LOAD_BUDGET_S)) for rows in asked]

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=LOAD_CLIENTS) as pool:
        answers = [answer for done in pool.map(client, range(LOAD_CLIENTS)) for answer in done]
    took = time.monotonic() - started

    assert len(answers) == LOAD_CLIENTS * (LOAD_SINGLES + 1)
    for rows, status, answer in answers:
        assert status == 200, answer
        got = answer["predictions"]
        assert [row["same_person"] for row in got] == [singles[i]["same_person"] for i in rows]
        assert [row["distance"] for row in got] == pytest.approx([singles[i]["distance"] for i in rows], rel=1e-5)
    assert took < LOAD_BUDGET_S, f"{len(answers)} requests from {LOAD_CLIENTS} clients took {took:.1f} s"
