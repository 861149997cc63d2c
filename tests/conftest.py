"""The fixtures shared by the tests in every folder, and the test session's settings. The plain helpers and
constants they are built on are in helpers.py (`from helpers import ...`; pyproject puts tests/ on the import
path): test modules import those, never this file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from facesim.app.servers import free_port
from helpers import (
    MODELS,
    REGISTERED_MODEL,
    TINY_CV_EER,
    TINY_THRESHOLD,
    build_faces_archive,
    evaluate_stage_outputs,
    repo_params,
    write_cv_summary,
    write_faces_dir,
    write_tiny_inputs,
    write_tiny_model,
)

# One torch (OpenMP) thread for the tests, read when torch first computes: their tensors are tiny, so a
# second thread only adds synchronisation, and on two cores with the other one busy every fit took 30 to
# 70 times as long. The stages pin their own count (runtime.threads), so their numbers are unchanged.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture
def make_faces_archive():
    """The factory `build_faces_archive(directory, subjects_training=..., subjects_testing=...,
    images_per_subject=10, extra_members=None, prefix=DEFAULT_PREFIX, *, name="faces.zip",
    shuffle_seed=None, size=(10, 12))` -> path of the zip; see its docstring."""
    return build_faces_archive


@pytest.fixture
def make_faces_dir():
    """The factory `write_faces_dir(root, subjects_training=..., subjects_testing=...,
    images_per_subject=10, size=(10, 12))` -> root, laid out like data/raw/faces."""
    return write_faces_dir


@pytest.fixture
def faces_dir(tmp_path: Path) -> Path:
    """`tmp_path/data/raw/faces` holding 8 training subjects (s1-s4, s8-s11) and 3 testing
    subjects (s5-s7), 10 images each: 110 tiny PGMs, the layout the fetch stage publishes."""
    return write_faces_dir(tmp_path / "data" / "raw" / "faces")


@pytest.fixture
def unreachable_url(monkeypatch: pytest.MonkeyPatch) -> str:
    """`http://127.0.0.1:<port>` where nothing listens: a port the OS just handed out and took back.

    Also clears the proxy variables for the test, so that urllib connects to it directly and is
    refused at once instead of asking a proxy.
    """
    for var in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    return f"http://127.0.0.1:{free_port()}"


@pytest.fixture(scope="module")
def torch_global_state():
    """Put back torch's process-wide settings that `facesim.training.fit.fit` changes (CPU threads,
    deterministic algorithms), so that a module training models leaves none of them behind.

    Use with `pytestmark = pytest.mark.usefixtures("torch_global_state")`.
    """
    import torch

    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    benchmark = torch.backends.cudnn.benchmark
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
    torch.backends.cudnn.benchmark = benchmark


@pytest.fixture
def tiny_repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A repository root with a dvc.yaml, synthetic faces and, for each of `MODELS`, what the pipeline leaves:
    a tiny `models/<backbone>-<loss>.pt`, its threshold in `reports/metrics/<backbone>-<loss>.json` and a
    cross-validation summary `reports/cv/<backbone>/<loss>.json` with the EER of `TINY_CV_EER`.

    The synthetic faces are patterns no face detector sees as faces: here they are used whole, as
    `--no-detect` would (the detection path has its own tests, on real faces).
    """
    monkeypatch.setattr("facesim.core.inference.framed_face", lambda pixels, name: pixels)
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    for seed, name in enumerate(MODELS):
        write_tiny_model(tmp_path / "models" / f"{name}.pt", threshold=None, seed=seed)
        metrics = tmp_path / "reports" / "metrics" / f"{name}.json"
        metrics.parent.mkdir(parents=True, exist_ok=True)
        metrics.write_text(json.dumps({"model": name, "threshold": TINY_THRESHOLD}))
        write_cv_summary(tmp_path, name, TINY_CV_EER[name])
    write_faces_dir(tmp_path / "data" / "raw" / "faces")
    return tmp_path


# ---- an MLflow store with a registered model ---------------------------------------------------------------


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory):
    """A sqlite MLflow store (MLFLOW_TRACKING_URI, for the module) where the evaluate stage, on a tiny
    untrained model and the synthetic faces, registered version 1 of `REGISTERED` (helpers) and of its ONNX
    export's verifier, `REGISTERED`-onnx: a dict of its root, uri, faces, checkpoint, metrics, outputs and the
    evaluate stage's run_id."""
    import mlflow

    from facesim.mlops.tracking import stage_run
    from facesim.pipeline.evaluate import EvaluateParams, evaluate_stage

    root = tmp_path_factory.mktemp("registry")
    patch = pytest.MonkeyPatch()
    for var in ("DVC_ROOT", "DVC_STAGE", "DVC_EXP_NAME"):
        patch.delenv(var, raising=False)
    uri = f"sqlite:///{root}/mlflow.db"
    patch.setenv("MLFLOW_TRACKING_URI", uri)
    faces, samples = write_tiny_inputs(root)
    checkpoint = write_tiny_model(root / "models" / f"{REGISTERED_MODEL}.pt", threshold=None)
    outputs = evaluate_stage_outputs(root / "eval")
    try:
        with stage_run("evaluate", {"model": REGISTERED_MODEL}, root=root) as run:
            # the untrained tiny model puts some faces at distance 0 from others: at a target FAR its threshold
            # would accept nothing (below 0), so the best-accuracy point
            params = repo_params(EvaluateParams, "evaluate", operating_point="best_accuracy")
            metrics, _, _ = evaluate_stage(REGISTERED_MODEL, params, checkpoint, faces,
                                           {f"pairs_{s}": samples["pairs"][s] for s in ("train", "val", "test")},
                                           outputs, run)
        yield {"root": root, "uri": uri, "faces": faces, "checkpoint": checkpoint, "metrics": metrics,
               "outputs": outputs, "run_id": run.run_id}
    finally:
        mlflow.set_tracking_uri(None)  # leave no store behind for other modules
        patch.undo()
