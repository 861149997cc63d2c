"""facesim.mlops.tracking: one MLflow run per stage execution, in the repository's store.

Creating an MLflow store takes seconds, so every test that logs shares one sqlite store
(`mlflow_store`, module scope); only two tests start a subprocess (a stage script, and a stage
stopped by SIGTERM). `test_mlflow_server.py` logs to a real `mlflow server`.
"""

from __future__ import annotations

import inspect
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import yaml

from helpers import REPO
from facesim.mlops.runs import NULL_RUN, MlflowRun, NullRun, Run, flatten
from facesim.mlops.tracking import (
    EXPERIMENT,
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    GROUP_TAG,
    HOST_TAG,
    PID_TAG,
    StageKilled,
    TrackingError,
    git_commit,
    group_key,
    repo_root,
    stage_run,
    tracking_uri,
)



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


RUN_METHODS = ("log_params", "log_metrics", "log_artifact", "set_tags", "log_model", "log_onnx_model", "flush")


def parameters(method) -> list[tuple[str, object, object]]:
    """Name, kind and default of each parameter: what a caller relies on."""
    return [(p.name, p.kind, p.default) for p in inspect.signature(method).parameters.values()]


def test_null_run_and_mlflow_run_are_runs_with_the_protocols_signatures() -> None:
    """The stages call a Run without knowing which: both implement every method of the protocol, with
    its parameters, and nothing the protocol lacks (what `register_model` once was)."""
    protocol = {name for name, value in vars(Run).items() if callable(value) and not name.startswith("_")}
    assert protocol == set(RUN_METHODS) and "run_id" in Run.__annotations__
    for cls in (NullRun, MlflowRun):
        public = {name for name, value in vars(cls).items() if callable(value) and not name.startswith("_")}
        assert public == protocol, cls.__name__
        for name in RUN_METHODS:
            assert parameters(getattr(cls, name)) == parameters(getattr(Run, name)), (cls.__name__, name)


def test_null_run_has_no_run_id_and_takes_every_call_without_a_trace(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert isinstance(NULL_RUN, NullRun) and NULL_RUN.run_id is None  # register_model: nothing to register into
    assert NULL_RUN.log_params({"a": {"b": 1}}) is None
    assert NULL_RUN.log_metrics({"m": 1.0}, step=3) is None
    assert NULL_RUN.log_artifact(tmp_path / "nowhere", "plots") is None
    assert NULL_RUN.set_tags({"t": "v"}) is None
    assert NULL_RUN.log_model(object(), [[0.0]], {"epoch": 1}) is None
    assert NULL_RUN.log_onnx_model(tmp_path / "nowhere.onnx", [[0.0]], {"facesim.model": "m"}) is None
    assert NULL_RUN.flush() is None
    assert list(tmp_path.iterdir()) == []  # no store created, nothing written
    assert MlflowRun(object(), "abc123").run_id == "abc123"


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
        with stage_run("cv_fold", {"fold": fold}, root=mlflow_store, group=key, group_name="cv",
                       name_suffix=f"-seed{fold}") as run:
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
    # the suffix tells apart the runs of one stage; the stage tag stays the stage's
    assert [client.get_run(child).info.run_name for child in children] == ["cv_fold-seed1", "cv_fold-seed2"]
    assert {client.get_run(child).data.tags["dvc_stage"] for child in children} == {"cv_fold"}


def test_metrics_with_a_step_are_written_in_batches_with_their_steps_and_times(store: str, mlflow_store: Path,
                                                                               monkeypatch) -> None:
    from mlflow.tracking import MlflowClient

    monkeypatch.setattr(MlflowRun, "FLUSH_METRICS", 4)
    with stage_run("train", {"lr": 0.001}, root=mlflow_store) as run:
        before = int(time.time() * 1000)
        for epoch in range(1, 4):
            run.log_metrics({"train_loss": 1.0 / epoch, "val": {"auc": 0.5 + epoch / 10}}, step=epoch)
        # 6 logged, 4 written the moment they were waiting, 2 still waiting
        client = MlflowClient(tracking_uri=store)
        assert client.get_run(run.run_id).data.metrics == {"train_loss": 0.5, "val.auc": 0.7}
        assert [m.step for m in client.get_metric_history(run.run_id, "train_loss")] == [1, 2]
        run.log_metrics({"eer": 0.25})  # without a step: written at once
        after = int(time.time() * 1000)
    client = MlflowClient(tracking_uri=store)
    curve = client.get_metric_history(run.run_id, "train_loss")
    assert [(m.step, m.value) for m in curve] == [(1, 1.0), (2, 0.5), (3, 1.0 / 3)]
    assert all(before <= m.timestamp <= after for m in curve)
    assert [m.step for m in client.get_metric_history(run.run_id, "val.auc")] == [1, 2, 3]
    assert client.get_run(run.run_id).data.metrics["eer"] == 0.25


def test_metrics_waiting_longer_than_flush_seconds_are_written_with_the_next(store: str, mlflow_store: Path,
                                                                          monkeypatch) -> None:
    from mlflow.tracking import MlflowClient

    monkeypatch.setattr(MlflowRun, "FLUSH_SECONDS", 0.05)
    with stage_run("train", {"lr": 0.001}, root=mlflow_store) as run:
        client = MlflowClient(tracking_uri=store)
        run.log_metrics({"train_loss": 1.0}, step=1)
        assert client.get_metric_history(run.run_id, "train_loss") == []  # waiting
        time.sleep(0.1)
        run.log_metrics({"train_loss": 0.5}, step=2)
        assert [m.step for m in client.get_metric_history(run.run_id, "train_loss")] == [1, 2]


def test_a_failing_stage_ends_its_run_as_failed(store: str, mlflow_store: Path, monkeypatch) -> None:
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("DVC_STAGE", "train@compact-triplet")
    monkeypatch.setenv("DVC_EXP_NAME", "hefty-rift")  # as `dvc exp run` sets it
    with pytest.raises(ZeroDivisionError):
        with stage_run("train", {"lr": 0.001}, root=mlflow_store) as run:
            run.log_metrics({"epoch_loss": 1.5}, step=0)
            1 / 0

    logged = MlflowClient(tracking_uri=store).get_run(run.run_id)
    assert logged.info.status == "FAILED"
    assert logged.info.run_name == "train@compact-triplet"
    assert (logged.data.tags["dvc_stage"], logged.data.tags["facesim_stage"]) == ("train@compact-triplet", "train")
    assert logged.data.tags["dvc_experiment"] == "hefty-rift"
    assert logged.data.params == {"lr": "0.001"}
    curve = MlflowClient(tracking_uri=store).get_metric_history(run.run_id, "epoch_loss")
    assert [(m.step, m.value) for m in curve] == [(0, 1.5)]  # the curve so far is written as the run fails
    import mlflow

    assert mlflow.active_run() is None  # a later stage in this process can open its own run


def test_sigterm_in_the_stage_ends_its_run_as_killed_and_restores_the_handler(store: str, mlflow_store: Path) -> None:
    from mlflow.tracking import MlflowClient

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(StageKilled) as caught:
        with stage_run("train", {"lr": 0.001}, root=mlflow_store) as run:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises in this thread long before this ends
            pytest.fail("SIGTERM did not stop the stage")
    assert (caught.value.signum, caught.value.exit_status) == (signal.SIGTERM, 143)
    assert str(caught.value) == "stage 'train' stopped by SIGTERM"
    assert signal.getsignal(signal.SIGTERM) is before
    logged = MlflowClient(tracking_uri=store).get_run(run.run_id)
    assert logged.info.status == "KILLED" and logged.info.end_time is not None


def test_ctrl_c_ends_the_run_as_killed(store: str, mlflow_store: Path) -> None:
    from mlflow.tracking import MlflowClient

    with pytest.raises(KeyboardInterrupt):
        with stage_run("evaluate", {"a": 1}, root=mlflow_store) as run:
            raise KeyboardInterrupt
    assert MlflowClient(tracking_uri=store).get_run(run.run_id).info.status == "KILLED"


def test_a_stage_run_outside_the_main_thread_installs_no_handler(store: str, mlflow_store: Path) -> None:
    from mlflow.tracking import MlflowClient

    before = signal.getsignal(signal.SIGTERM)
    outcome: dict = {}

    def stage() -> None:
        try:
            with stage_run("render", {"a": 1}, root=mlflow_store) as run:
                outcome["handler"] = signal.getsignal(signal.SIGTERM)
            outcome["run_id"] = run.run_id
        except BaseException as exc:  # reported to the test thread below
            outcome["error"] = exc

    thread = threading.Thread(target=stage)
    thread.start()
    thread.join(timeout=60)
    assert "error" not in outcome, outcome.get("error")
    assert outcome["handler"] is before
    assert MlflowClient(tracking_uri=store).get_run(outcome["run_id"]).info.status == "FINISHED"


def test_a_stage_process_stopped_by_sigterm_ends_its_run_as_killed(store: str, mlflow_store: Path) -> None:
    from mlflow.tracking import MlflowClient

    script = textwrap.dedent(f"""
        import sys, time
        from facesim.mlops.tracking import stage_run
        with stage_run("train", {{"lr": 0.001}}, root={str(mlflow_store)!r}) as run:
            print(run.run_id, flush=True)
            time.sleep(60)
    """)
    env = {**os.environ, "MLFLOW_TRACKING_URI": store}
    process = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        run_id = process.stdout.readline().strip()  # the run is open once its id is printed
        assert run_id, process.communicate(timeout=60)[1]
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()  # a no-op once it has ended

    assert process.returncode != 0
    assert "StageKilled: stage 'train' stopped by SIGTERM" in stderr
    logged = MlflowClient(tracking_uri=store).get_run(run_id)
    assert logged.info.status == "KILLED"
    assert logged.info.end_time is not None
    assert logged.data.tags[PID_TAG] == str(process.pid)
    assert logged.data.tags[HOST_TAG] == socket.gethostname()


def test_runs_left_running_by_a_gone_process_of_this_host_are_closed_as_killed(store: str, mlflow_store: Path,
                                                                                  capsys) -> None:
    from mlflow.tracking import MlflowClient

    with stage_run("fetch", {}, root=mlflow_store) as run:
        pass
    client = MlflowClient(tracking_uri=store)
    experiment_id = client.get_run(run.run_id).info.experiment_id
    gone = subprocess.Popen(["true"])
    gone.wait()  # reaped: its pid names no process now
    host = socket.gethostname()
    owners = {"orphan": (host, gone.pid), "alive": (host, os.getpid()),
              "elsewhere": ("elsewhere.example.org", gone.pid)}
    runs = {name: client.create_run(experiment_id, run_name=name, tags={HOST_TAG: h, PID_TAG: str(pid)}).info.run_id
            for name, (h, pid) in owners.items()}
    runs["untagged"] = client.create_run(experiment_id, run_name="untagged").info.run_id  # from before the tags
    capsys.readouterr()

    with stage_run("sample", {}, root=mlflow_store):
        pass

    try:
        status = {name: client.get_run(run_id).info for name, run_id in runs.items()}
        assert {name: info.status for name, info in status.items()} == {
            "orphan": "KILLED", "alive": "RUNNING", "elsewhere": "RUNNING", "untagged": "RUNNING"}
        assert status["orphan"].end_time is not None
        assert capsys.readouterr().err.splitlines() == [
            f"mlflow: closed run orphan ({runs['orphan']}) left RUNNING by process {gone.pid}, "
            "which is gone, as KILLED"]
    finally:
        for run_id in runs.values():
            client.set_terminated(run_id, status="FINISHED")  # leave nothing running for the next tests


def test_the_experiment_opens_on_its_runs(store: str, mlflow_store: Path) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=store)
    with stage_run("fetch", {}, root=mlflow_store):
        pass
    experiment = client.get_experiment_by_name(EXPERIMENT)
    assert experiment.tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND == "custom_model_development"
    # an experiment created before the tag gets it once
    client.delete_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG)
    with stage_run("fetch", {}, root=mlflow_store):
        pass
    assert client.get_experiment(experiment.experiment_id).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    # a kind chosen in the UI stays
    client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, "finetuning")
    with stage_run("fetch", {}, root=mlflow_store):
        pass
    assert client.get_experiment(experiment.experiment_id).tags[EXPERIMENT_KIND_TAG] == "finetuning"
    client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)


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
    sample = {**yaml.safe_load((REPO / "params.yaml").read_text())["sample"], "seed": 1, "similar_per_image": 2}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"sample": sample}))
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
    assert f"MLflow tracking server {unreachable_url} (MLFLOW_TRACKING_URI) is unreachable" in done.stderr
    assert {p.name: p.read_bytes() for p in processed.iterdir()} == before  # and no temporaries beside them
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlruns").exists()
