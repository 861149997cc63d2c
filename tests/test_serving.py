"""facesim.serving: the evaluate stage registers the pair-verifying pyfunc, the champion rule, and
`mlflow models serve` answering image pairs over real HTTP on 127.0.0.1.

Everything shares one temporary sqlite store (module scope): the evaluate stage registers
version 1 of a tiny untrained model, two more registrations exercise the champion rule, and the
champion is served once. Only loopback traffic.
"""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image

from conftest import write_faces_dir, write_tiny_samples
from facesim import api
from facesim.evaluate import EvaluateParams, evaluate_model
from facesim.serving import (
    CHAMPION,
    CHAMPION_METRICS,
    champion_key,
    decode_image,
    should_promote,
    version_tags,
)
from facesim.tracking import stage_run
from test_api import write_tiny_model

NAME = "facesim-contrastive"
SERVER_START_S = 120  # generous: on two busy cores the server takes ~20 s to import torch and load


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory):
    """A store where the evaluate stage (tiny model, synthetic faces) registered version 1."""
    import mlflow

    root = tmp_path_factory.mktemp("registry")
    patch = pytest.MonkeyPatch()
    for var in ("DVC_ROOT", "DVC_STAGE"):
        patch.delenv(var, raising=False)
    uri = f"sqlite:///{root}/mlflow.db"
    patch.setenv("MLFLOW_TRACKING_URI", uri)
    faces = write_faces_dir(root / "faces")
    samples = write_tiny_samples(faces, root / "samples")
    checkpoint = write_tiny_model(root / "models" / "contrastive.pt", threshold=None)
    outputs = {name: root / "eval" / f"{name}.{ext}" for name, ext in
               [("metrics", "json"), ("details", "json"), ("roc", "csv"), ("predictions", "csv"), ("embeddings", "csv")]}
    with stage_run("evaluate", {"model": "contrastive"}, root=root) as run:
        metrics = evaluate_model("contrastive", EvaluateParams(), checkpoint, faces,
                                 {f"pairs_{s}": samples["pairs"][s] for s in ("val", "test")}, outputs, run)
    try:
        yield {"root": root, "uri": uri, "faces": faces, "checkpoint": checkpoint, "metrics": metrics,
               "run_id": run.run_id}
    finally:
        mlflow.set_tracking_uri(None)  # leave no store behind for other modules
        patch.undo()


def client(registry):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=registry["uri"], registry_uri=registry["uri"])


def register(registry, metrics) -> None:
    with stage_run("evaluate", {"model": "contrastive"}, root=registry["root"]) as run:
        run.register_model("contrastive", registry["checkpoint"], metrics)


def with_validation(metrics: dict, **values: float) -> dict:
    return {**metrics, "validation": {**metrics["validation"], **values}}


# ---- the champion rule, by hand ---------------------------------------------------------------------------


def tags(auc: float, accuracy: float) -> dict[str, str]:
    return {"validation.roc_auc": repr(auc), "validation.accuracy": repr(accuracy)}


@pytest.mark.parametrize("candidate, champion, promote", [
    (tags(0.95, 0.90), None, True),  # no champion yet
    (tags(0.96, 0.80), tags(0.95, 0.90), True),  # higher AUC wins, whatever the accuracy
    (tags(0.94, 0.99), tags(0.95, 0.90), False),  # lower AUC loses, whatever the accuracy
    (tags(0.95, 0.91), tags(0.95, 0.90), True),  # equal AUC: accuracy breaks the tie
    (tags(0.95, 0.89), tags(0.95, 0.90), False),
    (tags(0.95, 0.90), tags(0.95, 0.90), True),  # a full tie goes to the newer version
    (tags(0.5, 0.5), {"note": "registered by hand"}, True),  # a champion without the metrics is replaced
])
def test_should_promote(candidate, champion, promote):
    assert should_promote(candidate, champion) is promote


def test_the_rule_is_on_validation_auc_then_accuracy():
    assert CHAMPION_METRICS == ("validation.roc_auc", "validation.accuracy")
    assert champion_key(tags(0.9, 0.8)) == (0.9, 0.8)
    with pytest.raises(ValueError, match="validation.roc_auc"):
        should_promote({"test.accuracy": "1.0"}, None)


def test_version_tags_keep_numbers_exact():
    metrics = {"threshold": 0.1 + 0.2, "best_epoch": 3,
               "validation": {"roc_auc": 2 / 3, "accuracy": 0.5, "tp": 4},
               "test": {"accuracy": 1 / 3}, "retrieval": {"map": 0.25}}
    written = version_tags(metrics)
    assert float(written["threshold"]) == 0.1 + 0.2 and float(written["validation.roc_auc"]) == 2 / 3
    assert written["best_epoch"] == "3" and written["retrieval.map"] == "0.25" and "validation.tp" not in written


# ---- the registry ---------------------------------------------------------------------------------------------


def test_evaluate_registers_the_model_with_its_threshold_and_metrics(registry):
    registered = client(registry)
    version = registered.get_model_version(NAME, "1")
    metrics = registry["metrics"]
    assert float(version.tags["threshold"]) == metrics["threshold"]
    for key in ("test.accuracy", "test.roc_auc", "validation.roc_auc", "all_pairs.eer", "retrieval.precision_at_1"):
        pair_set, name = key.split(".")
        assert float(version.tags[key]) == metrics[pair_set][name], key
    assert version.run_id == registry["run_id"]  # logged into the evaluate stage's own run
    assert str(registered.get_model_version_by_alias(NAME, CHAMPION).version) == "1"  # the first is champion


def test_champion_moves_only_when_validation_metrics_are_at_least_as_good(registry):
    registered = client(registry)
    metrics = registry["metrics"]
    worse = with_validation(metrics, roc_auc=metrics["validation"]["roc_auc"] - 0.01, accuracy=1.0)
    register(registry, worse)  # version 2: lower validation AUC, whatever its accuracy
    assert registered.get_model_version(NAME, "2").tags["validation.accuracy"] == "1.0"
    assert str(registered.get_model_version_by_alias(NAME, CHAMPION).version) == "1"
    register(registry, metrics)  # version 3: as good as the champion
    assert str(registered.get_model_version_by_alias(NAME, CHAMPION).version) == "3"


# ---- loading and serving ---------------------------------------------------------------------------------------


# What is served is looked at like a photo: the face is found first (facesim.detect). The synthetic
# faces of the registry fixture are patterns no detector takes for faces, so requests send real ORL faces.
ORL = Path(__file__).resolve().parents[1] / "data" / "raw" / "faces" / "testing"
needs_orl = pytest.mark.skipif(not (ORL / "s5" / "1.pgm").exists(), reason="needs the ORL faces (dvc repro fetch)")


@needs_orl
def test_the_api_loads_a_registered_model_by_uri(registry):
    a, b = ORL / "s5" / "1.pgm", ORL / "s6" / "2.pgm"
    by_uri = api.verify(a, b, f"models:/{NAME}@{CHAMPION}")
    by_path = api.verify(a, b, str(registry["checkpoint"]), threshold=registry["metrics"]["threshold"])
    assert by_uri.model == f"models:/{NAME}@{CHAMPION}"
    assert by_uri.threshold_source == f"calibrated on people unseen in training, logged with models:/{NAME}@{CHAMPION}"
    assert (by_uri.distance, by_uri.threshold, by_uri.same_person) == (by_path.distance, by_path.threshold,
                                                                        by_path.same_person)
    # the same checkpoint bytes: the same embedding cache
    assert api.load_model(f"models:/{NAME}/1").digest == api.file_digest(registry["checkpoint"])
    with pytest.raises(api.ModelError, match="facesim-nobody@champion: cannot load the MLflow model"):
        api.load_model("models:/facesim-nobody@champion")


def test_decode_image_names_the_bad_cell():
    with pytest.raises(ValueError, match="row 3, image2: not base64"):
        decode_image("***", "row 3, image2")
    with pytest.raises(ValueError, match="row 0, image1: not a readable image"):
        decode_image(base64.b64encode(b"plain text").decode(), "row 0, image1")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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
    folder = tmp_path_factory.mktemp("served")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": registry["uri"], "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1",
           # The server starts `uvicorn` by name: the one beside this interpreter, venv active or not.
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    mlflow_cli = [sys.executable, "-m", "mlflow"]
    log = (folder / "server.log").open("w")
    server = subprocess.Popen(
        [*mlflow_cli, "models", "serve", "-m", f"models:/{NAME}@{CHAMPION}", "--env-manager", "local",
         "-h", "127.0.0.1", "-p", str(port), "-w", "1"],
        cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only, never a proxy
    urllib.request.install_opener(opener)
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            try:
                with urllib.request.urlopen(f"{url}/ping", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the server did not start:\n{(folder / 'server.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        urllib.request.install_opener(None)
        try:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=10)
        except ProcessLookupError:
            pass
        log.close()


def pairs_request(pairs) -> dict:
    return {"dataframe_split": {"columns": ["image1", "image2"], "data": [[api_b64(a), api_b64(b)] for a, b in pairs]}}


@pytest.mark.integration
@needs_orl
def test_mlflow_serves_the_champion_over_http(registry, served):
    same, other = ORL / "s5" / "1.pgm", ORL / "s6" / "1.pgm"
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
        "columns": ["image1", "image2"], "data": [[base64.b64encode(b"not an image").decode(), api_b64(same)]]}})
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
        "data": [[api_b64(same), base64.b64encode(blank.getvalue()).decode()]]}})
    assert status == 400 and "row 0, image2: no face found" in json.dumps(answer)


LOAD_CLIENTS = 32
LOAD_SINGLES = 3  # single-pair requests per client, besides its one batched request
LOAD_BUDGET_S = 30


@pytest.mark.integration
@needs_orl
def test_the_served_model_answers_32_concurrent_clients_as_it_answers_one(served):
    url = f"{served}/invocations"
    faces = [ORL / f"s{person}" / f"{image}.pgm" for person in (5, 6, 7) for image in (1, 2)]
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


def api_b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode("ascii")
