"""What a stage logs to: the `Run` protocol, `MlflowRun` (an open MLflow run: params flattened, numbers only
as metrics, the trained network and the ONNX model with their signatures) and `NullRun` (nothing, for library
use and tests). `facesim.mlops.tracking.stage_run` opens the MlflowRun of a stage.

It knows nothing of facesim, and imports no facesim module (tests/test_architecture.py); `tracking` imports
only it.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol


class Run(Protocol):
    """What the stages log; `MlflowRun` writes to MLflow, `NullRun` records nothing (its run_id is None)."""

    run_id: str | None
    def log_params(self, params: Mapping[str, Any]) -> None: ...
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None: ...
    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None: ...
    def set_tags(self, tags: Mapping[str, str]) -> None: ...
    def log_model(self, model: Any, input_example: Any, metadata: Mapping[str, str | int | float]) -> None: ...
    def log_onnx_model(self, path: str | os.PathLike, input_example: Any, metadata: Mapping[str, str]) -> None: ...
    def flush(self) -> None: ...


class NullRun:
    """A Run that drops everything: for library use and tests that do not check logging."""

    run_id = None

    def log_params(self, params: Mapping[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        pass

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        pass

    def set_tags(self, tags: Mapping[str, str]) -> None:
        pass

    def log_model(self, model: Any, input_example: Any, metadata: Mapping[str, str | int | float]) -> None:
        pass

    def log_onnx_model(self, path: str | os.PathLike, input_example: Any, metadata: Mapping[str, str]) -> None:
        pass

    def flush(self) -> None:
        pass


NULL_RUN = NullRun()


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


class MlflowRun:
    """The active MLflow run of one stage execution.

    Metrics logged with a step (a training curve, one call per epoch) are written in batches, at most
    `FLUSH_SECONDS` after they were logged, when `FLUSH_METRICS` are waiting, and by `flush` (the stage's
    run calls it as it ends, failed or not): each call of its own cost ~3 ms in a sqlite store, 0.85 s of a
    270-epoch training's four curves (0.05 s batched). Each keeps the time it was logged at.
    """

    FLUSH_SECONDS = 5.0
    FLUSH_METRICS = 1000  # MLflow's limit per batch

    def __init__(self, mlflow_module: Any, run_id: str):
        self._mlflow = mlflow_module
        self.run_id = run_id
        self._pending: list[Any] = []  # mlflow.entities.Metric, oldest first

    def log_params(self, params: Mapping[str, Any]) -> None:
        self._mlflow.log_params(flatten(params))

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        numbers = {k: float(v) for k, v in flatten(metrics).items() if isinstance(v, (int, float))}
        if step is None:
            self._mlflow.log_metrics(numbers)
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._pending += [Metric(key, value, now, step) for key, value in numbers.items()]
        if len(self._pending) >= self.FLUSH_METRICS or now - self._pending[0].timestamp >= 1000 * self.FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        """Write the metrics logged with a step that are still waiting."""
        while self._pending:
            batch, self._pending = self._pending[:self.FLUSH_METRICS], self._pending[self.FLUSH_METRICS:]
            self._client.log_batch(self.run_id, metrics=batch)

    @functools.cached_property
    def _client(self) -> Any:
        """One client for all the run's batches, made at the first."""
        return self._mlflow.MlflowClient()

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            self._mlflow.log_artifacts(str(path), artifact_path=artifact_path)
        else:
            self._mlflow.log_artifact(str(path), artifact_path=artifact_path)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self._mlflow.set_tags(dict(tags))

    def log_model(self, model: Any, input_example: Any, metadata: Mapping[str, str | int | float]) -> None:
        """Log a torch network with its signature (`input_example` in, its output out) and `metadata`."""
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
            metadata=dict(metadata),
        )

    def log_onnx_model(self, path: str | os.PathLike, input_example: Any, metadata: Mapping[str, str]) -> None:
        """Log an ONNX model file (the onnx flavor) with its signature (`input_example` in, onnxruntime's output
        out) and `metadata`."""
        import mlflow.onnx
        import onnx
        import onnxruntime
        from mlflow.models import infer_signature

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        output = session.run(None, {session.get_inputs()[0].name: input_example})[0]
        self._mlflow.onnx.log_model(
            onnx.load(str(path)),
            name="onnx",
            signature=infer_signature(input_example, output),
            input_example=input_example,
            # pinned rather than inferred, as for the pytorch flavor
            pip_requirements=[f"onnxruntime=={onnxruntime.__version__}", f"onnx=={onnx.__version__}"],
            save_as_external_data=False,  # one file, as the evaluate stage's export wrote it
            metadata=dict(metadata),
        )
