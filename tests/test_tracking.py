"""facesim.tracking: one MLflow run per stage execution, in the repository's store.

Creating an MLflow store takes seconds, so every test that logs shares one sqlite store
(`mlflow_store`, module scope) and only one test starts a stage script in a subprocess.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from facesim.tracking import (
    EXPERIMENT,
    NULL_RUN,
    GROUP_TAG,
    TrackingError,
    flatten,
    git_commit,
    group_key,
    repo_root,
    stage_run,
    tracking_uri,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("MLFLOW_TRACKING_URI", "DVC_ROOT", "DVC_STAGE", "DVC_EXP_NAME"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="module")
def mlflow_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory that is a git repository with one commit, to hold the shared sqlite store."""
    root = tmp_path_factory.mktemp("repo")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.org", "-c", "commit.gpgsign=false"]
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "start"], cwd=root, check=True)
    return root


@pytest.fixture
def store(mlflow_store: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    uri = f"sqlite:///{mlflow_store}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(mlflow_store)
    return uri


# ---- small helpers, no MLflow ------------------------------------------------------------------


def test_flatten_joins_nested_keys_with_dots() -> None:
    assert flatten({"a": {"b": 1, "c": {"d": "x"}}, "e": 2.5}) == {"a.b": 1, "a.c.d": "x", "e": 2.5}
    assert flatten({}) == {}


def test_null_run_accepts_everything() -> None:
    NULL_RUN.log_params({"a": 1})
    NULL_RUN.log_metrics({"m": 1.0}, step=3)
    NULL_RUN.log_artifact("nowhere")
    NULL_RUN.set_tags({"t": "v"})


def test_repo_root_maps_a_temporary_experiment_to_its_repository(tmp_path: Path, monkeypatch) -> None:
    repo = tmp_path / "repo"
    temp_copy = repo / ".dvc" / "tmp" / "exps" / "tmpabc"
    temp_copy.mkdir(parents=True)
    assert repo_root(temp_copy) == repo.resolve()
    assert repo_root(temp_copy / "stages") == repo.resolve()
    assert repo_root(repo) == repo.resolve()
    # DVC_ROOT wins over the working directory
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DVC_ROOT", str(temp_copy))
    assert repo_root() == repo.resolve()
    monkeypatch.delenv("DVC_ROOT")
    assert repo_root() == tmp_path.resolve()


def test_tracking_uri_defaults_to_the_repositorys_sqlite_store(tmp_path: Path, monkeypatch) -> None:
    assert tracking_uri(tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert tracking_uri(tmp_path).startswith("sqlite:////")  # four slashes: an absolute path
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example.org:5000")
    assert tracking_uri(tmp_path) == "http://mlflow.example.org:5000"


def test_git_commit_outside_a_repository_is_unknown(tmp_path: Path) -> None:
    assert git_commit(tmp_path) == "unknown"


# ---- runs in a sqlite store ------------------------------------------------------------------------


def test_stage_run_logs_params_metrics_and_tags(store: str, mlflow_store: Path) -> None:
    from mlflow.tracking import MlflowClient

    with stage_run("sample", {"a": {"b": 1}, "seed": 42}, root=mlflow_store, tags={"data_digest": "sha256:x"}) as run:
        run.log_metrics({"rows": 384, "share": {"val": 0.5}})
        run.log_metrics({"loss": 0.25}, step=2)

    logged = MlflowClient(tracking_uri=store).get_run(run.run_id)
    assert logged.info.status == "FINISHED"
    assert logged.info.run_name == "sample"
    assert logged.data.params == {"a.b": "1", "seed": "42"}
    assert logged.data.metrics == {"rows": 384.0, "share.val": 0.5, "loss": 0.25}
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=mlflow_store, capture_output=True, text=True, check=True)
    tags = logged.data.tags
    assert tags["git_commit"] == head.stdout.strip()
    assert (tags["dvc_stage"], tags["facesim_stage"], tags["data_digest"]) == ("sample", "sample", "sha256:x")
    assert "dvc_experiment" not in tags  # not run by `dvc exp run`
    experiment = MlflowClient(tracking_uri=store).get_experiment(logged.info.experiment_id)
    assert experiment.name == EXPERIMENT
    assert experiment.artifact_location == (mlflow_store / "mlruns").as_uri()


def test_grouped_runs_share_one_parent_and_a_summary_logs_into_it(store: str, mlflow_store: Path) -> None:
    from mlflow.tracking import MlflowClient

    key = group_key({"cv": {"seed": 1}, "train": {"lr": 0.001}})
    assert key == group_key({"train": {"lr": 0.001}, "cv": {"seed": 1}})  # order does not matter
    assert key != group_key({"cv": {"seed": 2}, "train": {"lr": 0.001}})
    children = []
    for fold in (1, 2):
        with stage_run("cv_fold", {"fold": fold}, root=mlflow_store, group=key, group_name="cv") as run:
            run.log_metrics({"eer": 0.1 * fold})
        children.append(run.run_id)
    with stage_run("cv_summary", {"folds": 2}, root=mlflow_store, group=key, group_name="cv",
                   into_group=True) as summary:
        summary.log_metrics({"mean_eer": 0.15})

    client = MlflowClient(tracking_uri=store)
    parents = {client.get_run(child).data.tags["mlflow.parentRunId"] for child in children}
    assert parents == {summary.run_id}
    parent = client.get_run(summary.run_id)
    assert parent.info.run_name == "cv" and parent.data.tags[GROUP_TAG] == key
    assert parent.info.status == "FINISHED" and parent.data.metrics == {"mean_eer": 0.15}
    assert [client.get_run(child).data.metrics for child in children] == [{"eer": 0.1}, {"eer": 0.2}]


def test_a_failing_stage_ends_its_run_as_failed(store: str, mlflow_store: Path, monkeypatch) -> None:
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("DVC_STAGE", "train@triplet")
    monkeypatch.setenv("DVC_EXP_NAME", "hefty-rift")  # as `dvc exp run` sets it
    with pytest.raises(ZeroDivisionError):
        with stage_run("train", {"lr": 0.001}, root=mlflow_store) as run:
            run.log_metrics({"epoch_loss": 1.5}, step=0)
            1 / 0

    logged = MlflowClient(tracking_uri=store).get_run(run.run_id)
    assert logged.info.status == "FAILED"
    assert logged.info.run_name == "train@triplet"
    assert (logged.data.tags["dvc_stage"], logged.data.tags["facesim_stage"]) == ("train@triplet", "train")
    assert logged.data.tags["dvc_experiment"] == "hefty-rift"
    assert logged.data.params == {"lr": "0.001"}
    import mlflow

    assert mlflow.active_run() is None  # a later stage in this process can open its own run


# ---- an unreachable tracking server -------------------------------------------------------------------


def test_unreachable_server_fails_fast_with_a_clear_message(tmp_path: Path, monkeypatch, unreachable_url) -> None:
    import mlflow  # noqa: F401  (imported first so that only the connection is timed)

    monkeypatch.setenv("MLFLOW_TRACKING_URI", unreachable_url)
    started = time.perf_counter()
    with pytest.raises(TrackingError) as caught:
        with stage_run("sample", {"a": 1}, root=tmp_path):
            pytest.fail("the stage must not start without its tracking server")
    assert time.perf_counter() - started < 4  # refused at once, not after MLflow's minutes of retries
    message = str(caught.value)
    assert unreachable_url in message and "MLFLOW_TRACKING_URI" in message and "unreachable" in message
    assert list(tmp_path.iterdir()) == []


def test_sample_stage_with_an_unreachable_server_leaves_its_outputs(tmp_path: Path, make_faces_dir,
                                                                    unreachable_url) -> None:
    faces = make_faces_dir(tmp_path / "data" / "raw" / "faces", subjects_training=(1, 2, 3), subjects_testing=(4, 5))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"sample": {"seed": 1, "similar_per_image": 2}}))
    processed = tmp_path / "data" / "processed"
    processed.mkdir(parents=True)
    args = [sys.executable, str(REPO / "stages" / "sample.py"), "--faces", str(faces.relative_to(tmp_path))]
    for kind in ("pairs", "triplets"):
        for split in ("train", "val", "test"):
            output = processed / f"{kind}_{split}.csv"
            output.write_bytes(f"old {kind} {split}\r\n".encode())
            args += [f"--{kind}-{split}", str(output.relative_to(tmp_path))]
    before = {p.name: p.read_bytes() for p in processed.iterdir()}
    env = {k: v for k, v in os.environ.items() if k not in ("DVC_ROOT", "DVC_STAGE")}
    env["MLFLOW_TRACKING_URI"] = unreachable_url

    done = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)

    assert done.returncode != 0
    assert "TrackingError" in done.stderr
    assert f"MLflow tracking server {unreachable_url} (MLFLOW_TRACKING_URI) is unreachable" in done.stderr
    assert {p.name: p.read_bytes() for p in processed.iterdir()} == before  # and no temporaries beside them
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlruns").exists()
