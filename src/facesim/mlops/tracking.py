"""MLflow tracking shared by every stage: one run per stage execution.

The store is MLflow's own default, `sqlite:///mlflow.db` with artifacts under
`mlruns/`, anchored at the repository root so that a plain `mlflow ui` started
there shows every run, including those of `dvc exp run --temp` and queued
experiments (which DVC runs in `<repo>/.dvc/tmp/exps/<tmp>/`).
`MLFLOW_TRACKING_URI` overrides it for a team server.

A run ends FINISHED, FAILED (the stage raised) or KILLED (SIGTERM or Ctrl-C
stopped it). A process that dies without a word (SIGKILL, power loss) leaves
its run RUNNING; the next `stage_run` on the same host closes it as KILLED.

Nothing here runs at import time; stages open a run with `stage_run(...)` and
pass the `Run` it yields (`facesim.mlops.runs`) to the `src` function that does the work.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from facesim.mlops.runs import MlflowRun

EXPERIMENT = "facesim"
# MLflow 3's UI opens an experiment of this kind on its runs, not on the GenAI traces page.
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
HOST_TAG, PID_TAG = "facesim.host", "facesim.pid"  # which process owns a run, to close it once that is gone
_TEMP_EXPERIMENT_DIR = (".dvc", "tmp", "exps")


class TrackingError(RuntimeError):
    """The MLflow tracking store cannot be reached or written."""


class StageKilled(BaseException):
    """A signal (SIGTERM) stopped the stage; its run ended KILLED.

    A BaseException, like KeyboardInterrupt, so that `except Exception` in the
    stage does not swallow it. A script's top-level handler should exit with
    `exit_status` (128 + the signal number, 143 for SIGTERM, as a shell reports
    a process killed by it); left uncaught, Python prints it and exits 1.
    """

    def __init__(self, stage: str, signum: int):
        self.stage, self.signum, self.exit_status = stage, signum, 128 + signum
        super().__init__(f"stage {stage!r} stopped by {signal.Signals(signum).name}")


def repo_root(start: str | os.PathLike | None = None) -> Path:
    """The repository whose store the runs go to.

    DVC sets DVC_ROOT; for temporary and queued experiments that is a copy of
    the repo under `<repo>/.dvc/tmp/exps/`, whose store would be thrown away,
    so the runs go to the enclosing repository instead.
    """
    root = Path(start or os.environ.get("DVC_ROOT") or Path.cwd()).resolve()
    parts = root.parts
    for i in range(len(parts) - len(_TEMP_EXPERIMENT_DIR)):
        if parts[i : i + len(_TEMP_EXPERIMENT_DIR)] == _TEMP_EXPERIMENT_DIR:
            return Path(*parts[:i])
    return root


def tracking_uri(root: str | os.PathLike) -> str:
    """MLFLOW_TRACKING_URI when set, else the repo's sqlite store."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(root).resolve() / 'mlflow.db'}"


def git_commit(root: str | os.PathLike) -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10, check=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _check_server(uri: str, timeout_s: float = 5.0) -> None:
    """Fail fast with a clear message when an http(s) tracking server is down.

    MLflow's own client retries for minutes before giving up; a stage should
    say at once, before doing any work, that its runs cannot be recorded.
    """
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s):
            pass
    except urllib.error.HTTPError:
        return  # the server answered; a missing /health route is its own business
    except (urllib.error.URLError, OSError) as exc:
        raise TrackingError(
            f"MLflow tracking server {uri} (MLFLOW_TRACKING_URI) is unreachable: {exc}. "
            "Start it, or unset MLFLOW_TRACKING_URI to log into the repository's own store (mlflow.db)."
        ) from None


GROUP_TAG = "facesim_group"  # the parent run of a group of stage runs carries its key here


def group_key(config: Mapping[str, Any]) -> str:
    """A short key for a group of stage runs that share `config` (e.g. every fold of one cross-validation)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _group_parent(mlflow_module: Any, experiment_id: str, group: str, name: str) -> str:
    """The run id of the parent run of `group`, created (and left FINISHED) when none exists yet."""
    found = mlflow_module.search_runs([experiment_id], filter_string=f"tags.{GROUP_TAG} = '{group}'",
                                      max_results=1, order_by=["attributes.start_time DESC"], output_format="list")
    if found:
        return found[0].info.run_id
    client = mlflow_module.MlflowClient()
    parent = client.create_run(experiment_id, run_name=name, tags={GROUP_TAG: group})
    client.set_terminated(parent.info.run_id, status="FINISHED")
    return parent.info.run_id


class _SigtermRaises:
    """While entered in the main thread, the first SIGTERM raises StageKilled; later ones are
    ignored once `stopping` is set, so that a repeated signal does not cut short the ending of the
    run. The previous handler comes back on exit. Elsewhere it does nothing: only the main thread
    may install signal handlers."""

    def __init__(self, stage: str):
        self.stage = stage
        self.stopping = False
        self._previous: Any = None
        self._installed = False

    def _raise(self, signum: int, frame: Any) -> None:
        if not self.stopping:
            self.stopping = True
            raise StageKilled(self.stage, signum)

    def __enter__(self) -> _SigtermRaises:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._raise)
            self._installed = True
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if self._installed:
            # None: the previous handler was not set from Python; the default is the nearest to it.
            signal.signal(signal.SIGTERM, signal.SIG_DFL if self._previous is None else self._previous)


def _process_gone(pid: int) -> bool:
    """True only when no process `pid` exists on this host (signal 0 probes without signalling)."""
    if os.name != "posix" or pid <= 0:  # on Windows os.kill would terminate the process
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # it exists, under another user
        return False
    return False


def _close_orphaned_runs(client: Any, experiment_id: str) -> None:
    """End as KILLED the runs left RUNNING by processes of this host that no longer exist."""
    host = socket.gethostname()
    running = client.search_runs(
        [experiment_id], filter_string=f"attributes.status = 'RUNNING' and tags.`{HOST_TAG}` = '{host}'")
    for found in running:
        pid = found.data.tags.get(PID_TAG, "")
        if pid.isdigit() and _process_gone(int(pid)):
            client.set_terminated(found.info.run_id, status="KILLED")
            print(f"mlflow: closed run {found.info.run_name} ({found.info.run_id}) left RUNNING by "
                  f"process {pid}, which is gone, as KILLED", file=sys.stderr)


@contextlib.contextmanager
def stage_run(
    stage: str,
    params: Mapping[str, Any],
    *,
    root: str | os.PathLike | None = None,
    tags: Mapping[str, str] | None = None,
    group: str | None = None,
    group_name: str | None = None,
    into_group: bool = False,
    name_suffix: str = "",
) -> Iterator[MlflowRun]:
    """Open the MLflow run of one stage execution, in experiment 'facesim'.

    The run is named after the DVC stage (DVC_STAGE, e.g. 'train@triplet')
    followed by `name_suffix` (a stage that opens one run per training seed
    tells them apart by it), logs `params` and is tagged with the git commit
    and the stage. It is opened before the stage does any work, so an
    unreachable store fails the stage before it touches its outputs. A stage that raises ends its run as
    FAILED. SIGTERM (which DVC sends its stage to stop it) raises `StageKilled`
    in the main thread while the run is open; that and KeyboardInterrupt (Ctrl-C,
    SIGINT) end the run as KILLED and propagate, so the process still exits
    non-zero.

    Each run is tagged with its host and process id (`facesim.host`,
    `facesim.pid`). Before opening its own, a stage closes as KILLED the runs
    of this host left RUNNING by processes that no longer exist; runs of other
    hosts, and of live processes, are left alone.

    With `group` (a `group_key`), the run is a child of that group's parent
    run (named `group_name`, created by whichever member comes first), so that
    `mlflow ui` shows the members folded under one row; with `into_group` too,
    the stage logs into the parent run itself (a summary of its members).
    """
    import mlflow  # imported here: importing facesim must stay cheap and side-effect free

    root = repo_root(root)
    uri = tracking_uri(root)
    _check_server(uri)
    mlflow.set_tracking_uri(uri)
    name = os.environ.get("DVC_STAGE") or stage
    try:
        client = mlflow.MlflowClient()
        experiment = client.get_experiment_by_name(EXPERIMENT)
        if experiment is None:
            location = None if uri.startswith(("http://", "https://", "databricks")) else (root / "mlruns").as_uri()
            experiment_id = client.create_experiment(EXPERIMENT, artifact_location=location,
                                                     tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
        else:
            experiment_id = experiment.experiment_id
            if EXPERIMENT_KIND_TAG not in experiment.tags:  # a kind chosen in the UI stays
                client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        _close_orphaned_runs(client, experiment_id)
        # Set with the run itself, so that even a run killed at once names its process.
        owner = {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid())}
        if group is None:
            active = mlflow.start_run(experiment_id=experiment_id, run_name=name + name_suffix, tags=owner)
        else:
            parent = _group_parent(mlflow, experiment_id, group, group_name or stage)
            active = (mlflow.start_run(run_id=parent, tags=owner) if into_group else
                      mlflow.start_run(experiment_id=experiment_id, run_name=name + name_suffix,
                                       tags={"mlflow.parentRunId": parent, **owner}))
    except Exception as exc:  # MLflow raises many types; all mean the same to a stage
        raise TrackingError(f"cannot open an MLflow run in {uri}: {exc}") from exc
    status = "FAILED"
    sigterm = _SigtermRaises(name)
    run = MlflowRun(mlflow, active.info.run_id)
    with sigterm:
        try:
            # DVC names each `dvc exp run` (DVC_EXP_NAME): the tag finds its runs beside `dvc exp show`.
            experiment_tag = {"dvc_experiment": os.environ["DVC_EXP_NAME"]} if os.environ.get("DVC_EXP_NAME") else {}
            run.set_tags({"git_commit": git_commit(root), "dvc_stage": name, "facesim_stage": stage,
                          **experiment_tag, **(tags or {})})
            run.log_params(params)
            yield run
            run.flush()  # the metrics logged with a step still waiting (MlflowRun writes them in batches)
            status = "FINISHED"
        except (StageKilled, KeyboardInterrupt):
            status = "KILLED"
            raise
        finally:
            sigterm.stopping = True  # the run is ending: a SIGTERM now must not interrupt that
            if status != "FINISHED":
                # the training curve so far, as far as the store takes it: the stage's own error is the one raised
                with contextlib.suppress(Exception):
                    run.flush()
            mlflow.end_run(status=status)
