"""facesim.mlops.tracking against a real `mlflow server`: a team's shared store, reached over HTTP.

Starts the server on a free local port with a fresh sqlite backend and proxied artifacts, as a
team would (see docs/team.md), logs one stage run into it and reads everything back through it.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import running_server
from facesim.app.servers import free_port
from facesim.mlops.tracking import EXPERIMENT, EXPERIMENT_KIND, EXPERIMENT_KIND_TAG, stage_run

pytestmark = pytest.mark.integration

STARTUP_S = 60  # a cold server creates its sqlite schema first (seconds on a busy machine)


@pytest.fixture
def mlflow_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The URL of an `mlflow server` (sqlite backend, artifacts under tmp_path/artifacts)."""
    for var in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)  # connect to 127.0.0.1 directly
    for var in ("DVC_ROOT", "DVC_STAGE", "DVC_EXP_NAME"):
        monkeypatch.delenv(var, raising=False)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
               "--workers", "1", "--backend-store-uri", f"sqlite:///{tmp_path / 'db.sqlite'}",
               "--artifacts-destination", str(tmp_path / "artifacts")]
    with running_server(command, f"{url}/health", tmp_path / "server.log", start_s=STARTUP_S, cwd=tmp_path):
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        yield url


def test_a_stage_logs_runs_artifacts_and_models_to_a_tracking_server(mlflow_server: str, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    notes = tmp_path / "work" / "notes.txt"
    notes.parent.mkdir()
    notes.write_text("logged over HTTP\n")
    with stage_run("evaluate", {"threshold": 0.5}, root=tmp_path / "work", tags={"data_digest": "sha256:x"}) as run:
        run.log_metrics({"eer": 0.125})
        run.log_metrics({"loss": 0.5}, step=1)
        run.log_artifact(notes, artifact_path="reports")

    client = MlflowClient(tracking_uri=mlflow_server)
    logged = client.get_run(run.run_id)
    assert logged.info.status == "FINISHED"
    assert logged.data.params == {"threshold": "0.5"}
    assert logged.data.metrics == {"eer": 0.125, "loss": 0.5}
    assert logged.data.tags["data_digest"] == "sha256:x"
    experiment = client.get_experiment(logged.info.experiment_id)
    assert experiment.name == EXPERIMENT and experiment.tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    # artifacts go through the server (mlflow-artifacts:/) into its --artifacts-destination
    assert logged.info.artifact_uri.startswith("mlflow-artifacts:/")
    assert [a.path for a in client.list_artifacts(run.run_id, "reports")] == ["reports/notes.txt"]
    downloaded = client.download_artifacts(run.run_id, "reports/notes.txt", str(tmp_path / "back"))
    assert Path(downloaded).read_text() == "logged over HTTP\n"
    assert [p.read_text() for p in (tmp_path / "artifacts").rglob("notes.txt")] == ["logged over HTTP\n"]
    # the model registry, as `register_model` uses it: a version and the alias that serves it
    client.create_registered_model("facesim-test")
    version = client.create_model_version("facesim-test", f"{logged.info.artifact_uri}/reports", run_id=run.run_id)
    client.set_registered_model_alias("facesim-test", "champion", version.version)
    assert client.get_model_version_by_alias("facesim-test", "champion").run_id == run.run_id
    assert not (tmp_path / "work" / "mlflow.db").exists() and not (tmp_path / "work" / "mlruns").exists()
