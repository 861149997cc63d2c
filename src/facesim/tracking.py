"""MLflow tracking shared by every stage: one run per stage execution.

The store is MLflow's own default, `sqlite:///mlflow.db` with artifacts under
`mlruns/`, anchored at the repository root so that a plain `mlflow ui` started
there shows every run, including those of `dvc exp run --temp` and queued
experiments (which DVC runs in `<repo>/.dvc/tmp/exps/<tmp>/`).
`MLFLOW_TRACKING_URI` overrides it for a team server.

Nothing here runs at import time; stages open a run with `stage_run(...)` and
pass the `Run` it yields to the `src` function that does the work.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

EXPERIMENT = "facesim"
_TEMP_EXPERIMENT_DIR = (".dvc", "tmp", "exps")


class TrackingError(RuntimeError):
    """The MLflow tracking store cannot be reached or written."""


class Run(Protocol):
    """What the stages log; `MlflowRun` writes to MLflow, `NullRun` records nothing."""

    def log_params(self, params: Mapping[str, Any]) -> None: ...
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None: ...
    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None: ...
    def set_tags(self, tags: Mapping[str, str]) -> None: ...
    def log_model(self, model: Any, input_example: Any, metadata: Mapping[str, Any]) -> None: ...
    def register_model(self, model_name: str, checkpoint: str | os.PathLike, metrics: Mapping[str, Any],
                       example_pair: tuple[str | os.PathLike, str | os.PathLike] | None = None) -> None: ...


class NullRun:
    """A Run that drops everything: for library use and tests that do not check logging."""

    def log_params(self, params: Mapping[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        pass

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        pass

    def set_tags(self, tags: Mapping[str, str]) -> None:
        pass

    def log_model(self, model: Any, input_example: Any, metadata: Mapping[str, Any]) -> None:
        pass

    def register_model(self, model_name: str, checkpoint: str | os.PathLike, metrics: Mapping[str, Any],
                       example_pair: tuple[str | os.PathLike, str | os.PathLike] | None = None) -> None:
        pass


NULL_RUN = NullRun()


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


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}: MLflow params and metrics are flat."""
    flat: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


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


class MlflowRun:
    """The active MLflow run of one stage execution."""

    def __init__(self, mlflow_module: Any, run_id: str):
        self._mlflow = mlflow_module
        self.run_id = run_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        self._mlflow.log_params(flatten(params))

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        numbers = {k: float(v) for k, v in flatten(metrics).items() if isinstance(v, (int, float))}
        self._mlflow.log_metrics(numbers, step=step)

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            self._mlflow.log_artifacts(str(path), artifact_path=artifact_path)
        else:
            self._mlflow.log_artifact(str(path), artifact_path=artifact_path)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self._mlflow.set_tags(dict(tags))

    def log_model(self, model: Any, input_example: Any, metadata: Mapping[str, Any]) -> None:
        """Log a torch embedding network with its signature (images in, embeddings out)."""
        import mlflow.pytorch
        import torch
        from mlflow.models import infer_signature

        with torch.inference_mode():
            device = next(model.parameters()).device  # the model may still be on its training GPU
            output = model(torch.as_tensor(input_example, device=device)).cpu().numpy()
        self._mlflow.pytorch.log_model(
            model,
            name="model",
            signature=infer_signature(input_example, output),
            input_example=input_example,
            # Pinned here rather than inferred: inference imports and scans every package (slow).
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
            # torch.export (MLflow's default "pt2") took 5.5 s for this 0.4 MB network and warns
            # on its channels-last weights; pickle took 0.1 s. Loading needs facesim installed,
            # as the registered pyfunc does anyway.
            serialization_format="pickle",
            metadata={k: v for k, v in metadata.items() if k in ("model_name", "epoch", "best_val_loss")},
        )

    def register_model(self, model_name: str, checkpoint: str | os.PathLike, metrics: Mapping[str, Any],
                       example_pair: tuple[str | os.PathLike, str | os.PathLike] | None = None) -> None:
        """Log the pair-verifying pyfunc into this run, register it as `facesim-<model_name>` and
        move the alias `champion` to it when its validation metrics are at least as good (see
        `facesim.serving`)."""
        from facesim.serving import log_and_register  # imported here: it imports MLflow and torch

        registered = log_and_register(model_name, checkpoint, metrics, example_pair)
        previous = f"version {registered.previous_champion}" if registered.previous_champion else "none"
        print(f"registered {registered.name} version {registered.version}; champion: "
              f"{'moved to it' if registered.champion else 'kept'} (before: {previous})", file=sys.stderr)


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
) -> Iterator[MlflowRun]:
    """Open the MLflow run of one stage execution, in experiment 'facesim'.

    The run is named after the DVC stage (DVC_STAGE, e.g. 'train@triplet'),
    logs `params` and is tagged with the git commit and the stage. It is
    opened before the stage does any work, so an unreachable store fails the
    stage before it touches its outputs. A stage that raises ends its run as
    FAILED.

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
        experiment = mlflow.get_experiment_by_name(EXPERIMENT)
        if experiment is None:
            location = None if uri.startswith(("http://", "https://", "databricks")) else (root / "mlruns").as_uri()
            experiment_id = mlflow.create_experiment(EXPERIMENT, artifact_location=location)
        else:
            experiment_id = experiment.experiment_id
        if group is None:
            active = mlflow.start_run(experiment_id=experiment_id, run_name=name)
        else:
            parent = _group_parent(mlflow, experiment_id, group, group_name or stage)
            active = (mlflow.start_run(run_id=parent) if into_group else
                      mlflow.start_run(experiment_id=experiment_id, run_name=name,
                                       tags={"mlflow.parentRunId": parent}))
    except Exception as exc:  # MLflow raises many types; all mean the same to a stage
        raise TrackingError(f"cannot open an MLflow run in {uri}: {exc}") from exc
    status = "FAILED"
    try:
        run = MlflowRun(mlflow, active.info.run_id)
        # DVC names each `dvc exp run` (DVC_EXP_NAME): the tag finds its runs beside `dvc exp show`.
        experiment_tag = {"dvc_experiment": os.environ["DVC_EXP_NAME"]} if os.environ.get("DVC_EXP_NAME") else {}
        run.set_tags({"git_commit": git_commit(root), "dvc_stage": name, "facesim_stage": stage,
                      **experiment_tag, **(tags or {})})
        run.log_params(params)
        yield run
        status = "FINISHED"
    finally:
        mlflow.end_run(status=status)
