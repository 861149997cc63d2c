"""`facesim ui` (facesim.app.ui): MLflow's UI opened on the facesim runs and their headline metrics.

The store checks use a small sqlite store in a temporary folder, filled by `stage_run` as the stages
fill the real one. The integration test starts `facesim ui` on it and reads the printed URL in
headless Chromium: the runs named after their stages, with the metric columns.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import REPO
from facesim.app import ui
from facesim.app.cli import main
from facesim.app.servers import free_port
from facesim.mlops.runs import flatten
from facesim.mlops.tracking import EXPERIMENT, HOST_TAG, PID_TAG, stage_run
from headless import dom, needs_chromium, screenshot

# one stage run each, named and logging as the pipeline's do (a subset of their metrics)
RUNS = {
    "train@contrastive": {"kept_val_loss": 0.3125, "kept_epoch": 40},
    "train@triplet": {"kept_val_loss": 0.1875, "kept_epoch": 30},
    "evaluate@contrastive": {"threshold": 0.5811, "all_pairs": {"eer": 0.0417, "roc_auc": 0.9921},
                             "retrieval": {"precision_at_1": 0.9667}},
    "evaluate@triplet": {"threshold": 0.6982, "all_pairs": {"eer": 0.0625, "roc_auc": 0.9844},
                         "retrieval": {"precision_at_1": 0.9333}},
}


@pytest.fixture
def clean_env(monkeypatch):
    for var in ("MLFLOW_TRACKING_URI", "DVC_ROOT", "DVC_STAGE", "DVC_EXP_NAME"):
        monkeypatch.delenv(var, raising=False)
    for var in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)  # the local server and a refused port are reached directly
    return monkeypatch


@pytest.fixture
def repo_with_runs(tmp_path, clean_env) -> Path:
    """A repository (a dvc.yaml) whose store, mlflow.db, holds the RUNS."""
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    for name, metrics in RUNS.items():
        clean_env.setenv("DVC_STAGE", name)
        with stage_run(name.split("@")[0], {"model": name.split("@")[1]}, root=tmp_path) as run:
            run.log_metrics(metrics)
    clean_env.delenv("DVC_STAGE")
    return tmp_path


def client(root: Path):
    import mlflow

    return mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")


def gone_pid() -> int:
    """The id of a process that has ended (and been reaped)."""
    done = subprocess.Popen(["true"])
    done.wait()
    return done.pid


# ---- the view and the URL --------------------------------------------------------------------------------


def test_the_url_opens_the_runs_in_the_model_training_view_with_the_saved_view():
    assert ui.runs_url("http://127.0.0.1:5000/", "7") == (
        "http://127.0.0.1:5000/#/experiments/7/runs?workflowType=machine_learning&viewStateShareKey=facesim-runs")


def test_the_view_is_a_saved_view_envelope_with_the_headline_metric_columns():
    envelope = json.loads(ui.view_tag_value(1_700_000_000_000))
    assert envelope["name"] == ui.VIEW_NAME and envelope["createdAt"] == 1_700_000_000_000
    state = json.loads(envelope["state"])  # MLflow stores the state as JSON text inside the envelope
    assert state["selectedColumns"][:4] == ["metrics.`all_pairs.eer`", "metrics.`all_pairs.roc_auc`",
                                            "metrics.`retrieval.precision_at_1`", "metrics.`threshold`"]
    assert "tags.`dvc_stage`" in state["selectedColumns"]
    assert ui.VIEW_TAG == "mlflow.sharedViewState.facesim-runs"


def test_the_metric_columns_are_names_the_stages_log():
    """The evaluate stage logs its details (reports/metrics/*_details.json) flattened; train logs kept_val_loss."""
    details = sorted((REPO / "reports" / "metrics").glob("*_details.json"))
    assert details, "no evaluate details in reports/metrics"
    logged = set(flatten(json.loads(details[0].read_text())))
    assert {"all_pairs.eer", "all_pairs.roc_auc", "retrieval.precision_at_1", "threshold"} <= logged
    assert '"kept_val_loss"' in (REPO / "src" / "facesim" / "pipeline" / "train.py").read_text()
    assert set(ui.HEADLINE_METRICS) <= logged | {"kept_val_loss"}


# ---- opening the store -----------------------------------------------------------------------------------


def test_opening_the_store_saves_the_view_and_closes_runs_whose_process_is_gone(repo_with_runs, capsys):
    store = client(repo_with_runs)
    experiment = store.get_experiment_by_name(EXPERIMENT)
    here = socket.gethostname()
    orphan = store.create_run(experiment.experiment_id, run_name="train@triplet",
                              tags={HOST_TAG: here, PID_TAG: str(gone_pid())})
    alive = store.create_run(experiment.experiment_id, run_name="evaluate@triplet",
                             tags={HOST_TAG: here, PID_TAG: str(os.getpid())})
    elsewhere = store.create_run(experiment.experiment_id, run_name="sample",
                                 tags={HOST_TAG: "another-host", PID_TAG: str(gone_pid())})

    uri = f"sqlite:///{repo_with_runs / 'mlflow.db'}"
    assert ui.prepare_store(uri) == experiment.experiment_id

    assert store.get_run(orphan.info.run_id).info.status == "KILLED"
    assert store.get_run(alive.info.run_id).info.status == "RUNNING"  # its process still runs: this one
    assert store.get_run(elsewhere.info.run_id).info.status == "RUNNING"  # not this host's to judge
    assert f"closed run train@triplet ({orphan.info.run_id})" in capsys.readouterr().err
    tag = store.get_experiment(experiment.experiment_id).tags[ui.VIEW_TAG]
    assert json.loads(json.loads(tag)["state"]) == ui.runs_view_state()


def test_a_store_without_the_facesim_experiment_gives_no_experiment(tmp_path, clean_env):
    client(tmp_path).search_experiments()  # creates the (empty) store
    assert ui.prepare_store(f"sqlite:///{tmp_path / 'mlflow.db'}") is None


# ---- bad input: one line each ----------------------------------------------------------------------------


def one_line(err: str) -> str:
    assert err.count("\n") == 1 and err.startswith("facesim ui: ") and "Traceback" not in err, err
    return err.rstrip("\n")


def test_a_missing_store_fails_in_one_line_naming_the_uri(tmp_path, clean_env, capsys):
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    assert main(["ui", "--root", str(tmp_path), "--no-browser", "--port", str(free_port())]) == 1
    line = one_line(capsys.readouterr().err)
    assert f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}: no MLflow store there" in line
    assert "run the pipeline first (dvc repro)" in line
    assert not (tmp_path / "mlflow.db").exists()  # not created empty


def test_an_unreachable_tracking_server_fails_in_one_line_naming_it(tmp_path, clean_env, unreachable_url, capsys):
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    clean_env.setenv("MLFLOW_TRACKING_URI", unreachable_url)
    started = time.monotonic()
    assert main(["ui", "--root", str(tmp_path), "--no-browser"]) == 1
    line = one_line(capsys.readouterr().err)
    assert line.startswith(f"facesim ui: {unreachable_url} (MLFLOW_TRACKING_URI): ") and "unreachable" in line
    assert time.monotonic() - started < 30  # at once, not after MLflow's minutes of retries


def test_a_port_in_use_names_it_and_a_free_one(tmp_path, clean_env, capsys):
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["ui", "--root", str(tmp_path), "--no-browser", "--port", str(port)]) == 1
    line = one_line(capsys.readouterr().err)
    match = re.fullmatch(rf"facesim ui: port {port} on 127\.0\.0\.1: already in use \(another mlflow ui or "
                         r"server\?\); choose another port, e\.g\. facesim ui --port (\d+), or stop the program "
                         r"that holds it", line)
    assert match and int(match[1]) > port


# ---- in a browser ----------------------------------------------------------------------------------------


def read_url(process: subprocess.Popen, deadline_s: float) -> tuple[str, list[str]]:
    """The http URL `facesim ui` prints once its server answers, and the lines before it."""
    lines: list[str] = []
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip("\n"))
        if line.strip().startswith("http://"):
            return line.strip(), lines
    process.kill()
    pytest.fail("facesim ui printed no URL:\n" + "\n".join(lines) + "\n" + process.stderr.read()[-3000:])


@pytest.mark.integration
@needs_chromium
def test_facesim_ui_shows_the_stage_runs_with_metric_columns(repo_with_runs, tmp_path):
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "facesim.app.cli", "ui", "--root", str(repo_with_runs),
                                "--port", str(port), "--no-browser"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        url, before = read_url(process, deadline_s=90)
        experiment_id = client(repo_with_runs).get_experiment_by_name(EXPERIMENT).experiment_id
        assert url == ui.runs_url(f"http://127.0.0.1:{port}", experiment_id)
        assert before[0] == f"MLflow UI on sqlite:///{repo_with_runs.resolve() / 'mlflow.db'}, the facesim runs:"

        page = dom(url)
        for name in RUNS:
            assert f">{name}<" in page, name  # each run, named after its stage
        for column in ui.HEADLINE_METRICS:
            assert f">{column}<" in page, column  # a column header per headline metric
        for value in ("0.0417", "0.9921", "0.9667", "0.5811", "0.3125"):
            assert f">{value}<" in page, value  # and the runs' values in them
        screenshot(url, tmp_path / "ui.png")  # kept in the test's tmp_path, to look at
    finally:
        os.killpg(process.pid, signal.SIGTERM)  # what a service manager sends; Ctrl-C does the same
        out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert out.rstrip().endswith("facesim ui: stopped")
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))  # the server went with it
