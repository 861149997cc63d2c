"""facesim.pipeline.export: the same bytes on every run, onnxruntime's embeddings equal to torch's, the stage's
outputs and MLflow logging; on the pipeline's own models, all 400 faces and every held-out pair.

The tiny networks are random (seeded), a compact one, an ensemble and a dlib head on random 128-d descriptors:
what is checked is the export of the arithmetic, not what the weights learned.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch

from helpers import REPO, TESTING, RecordingRun, model_config, write_faces_dir, write_tiny_model
from facesim.core.images import ImageError, load_pixels
from facesim.core.inference import from_checkpoint, from_onnx
from facesim.core.embedding import embed_all
from facesim.core.models import build_embedding_net
from facesim.core.onnx_model import FORMAT, FORMAT_VERSION, PARITY, OnnxMetadata, OnnxNetwork
from facesim.core.preprocess import Preprocess
from facesim.core.checkpoint import load_checkpoint
from facesim.pipeline.export import OPSET, example_faces, export_model, onnx_bytes

pytestmark = pytest.mark.usefixtures("torch_global_state")

TINY = dict(input_height=16, input_width=16, channels=(4, 8), embedding_dim=8)


def tiny_network(seed: int = 0, **config) -> torch.nn.Module:
    with torch.random.fork_rng(), torch.no_grad():
        torch.manual_seed(seed)
        network = build_embedding_net(model_config(**{**TINY, **config}))
        # BatchNorm statistics other than 0 and 1, so that folding them into the convolutions is checked
        for module in network.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    return network.eval()


def metadata_for(network: torch.nn.Module, size: int, features: str = "pixels") -> OnnxMetadata:
    preprocess = Preprocess(height=16, width=16, features=features)
    return OnnxMetadata(format=FORMAT, format_version=FORMAT_VERSION, model="compact-triplet", preprocess=preprocess,
                        threshold=0.5, threshold_source="given", embedding_size=size,
                        input="pixels" if features == "pixels" else "dlib_descriptor")


def run_onnx(data: bytes, inputs: np.ndarray) -> np.ndarray:
    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: inputs})[0]


def test_exporting_twice_gives_the_same_bytes_and_no_trace_of_this_checkout():
    network = tiny_network(members=2)
    metadata = metadata_for(network, 16)
    first = onnx_bytes(network, torch.zeros(2, 1, 16, 16), metadata)
    assert onnx_bytes(tiny_network(members=2), torch.zeros(2, 1, 16, 16), metadata) == first
    # the exporter's notes of where each node came from would differ between checkouts and machines
    for trace in (str(REPO).encode(), b"models.py", b"stack_trace", b"+cu", b"+cpu"):
        assert trace not in first, trace
    import onnx

    model = onnx.load_from_string(first)
    assert [(o.domain, o.version) for o in model.opset_import if o.domain == ""] == [("", OPSET)]
    assert {p.key: p.value for p in model.metadata_props} == metadata.to_props()
    assert "BatchNormalization" not in {node.op_type for node in model.graph.node}  # folded


@pytest.mark.parametrize("config", [dict(), dict(members=3), dict(normalize=True, members=2)],
                         ids=["compact", "ensemble", "normalised-ensemble"])
def test_onnx_and_torch_embeddings_agree(config):
    network = tiny_network(seed=1, **config)
    data = onnx_bytes(network, torch.zeros(2, 1, 16, 16), metadata_for(network, 8 * config.get("members", 1)))
    faces = torch.randn(5, 1, 16, 16, generator=torch.Generator().manual_seed(2))
    expected = embed_all(network, faces).numpy()
    assert np.abs(run_onnx(data, faces.numpy()) - expected).max() <= PARITY
    assert np.abs(run_onnx(data, faces[:1].numpy()) - expected[:1]).max() <= PARITY  # any batch size


def test_a_dlib_head_exports_as_the_head_on_descriptors():
    network = tiny_network(seed=3, backbone="dlib", embedding_dim=128, normalize=True, members=3)
    with torch.no_grad():  # a head away from its identity start
        for member in network.members:
            member.backbone.linear.weight.add_(0.05 * torch.randn(128, 128, generator=torch.Generator().manual_seed(4)))
    data = onnx_bytes(network, torch.zeros(2, 128), metadata_for(network, 384, features="dlib"))
    descriptors = torch.randn(7, 128, generator=torch.Generator().manual_seed(5)) * 0.1
    assert np.abs(run_onnx(data, descriptors.numpy()) - embed_all(network, descriptors).numpy()).max() <= PARITY


def test_the_stage_writes_a_checked_model_and_logs_it(tmp_path: Path):
    faces = write_faces_dir(tmp_path / "faces")
    checkpoint = write_tiny_model(tmp_path / "models" / "compact-contrastive.pt", threshold=None)
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"threshold": 0.125}))
    out = tmp_path / "models" / "compact-contrastive.onnx"
    run = RecordingRun()
    metadata = export_model("compact-contrastive", *load_checkpoint(checkpoint), 0.125, metrics, example_faces(faces),
                            out, run)
    assert (metadata.model, metadata.input, metadata.embedding_size, metadata.threshold) == \
        ("compact-contrastive", "pixels", 8, 0.125)
    assert metadata.threshold_source == f"calibrated on people unseen in training, {metrics.as_posix()}"
    [(logged, example, props)] = run.onnx_models
    assert logged == out.read_bytes() and props == metadata.to_props()
    assert example.shape == (2, 1, 16, 16) and example.dtype == np.float32  # the first two faces, prepared
    assert run.metrics[-1][0]["onnx_max_abs_difference"] <= PARITY
    # the file is a FaceModel as the checkpoint is, on onnxruntime: the same embeddings of any face
    pictures = [load_pixels(path) for path in sorted((faces / "testing").rglob("*.pgm"))]
    torch_model, onnx_model = from_checkpoint(checkpoint, metrics), from_onnx(out)
    assert isinstance(onnx_model.encoder, OnnxNetwork) and onnx_model.threshold == torch_model.threshold
    assert np.abs(onnx_model.encoder.embed(pictures) - torch_model.encoder.embed(pictures)).max() <= PARITY
    # the same export again: the same bytes
    again = tmp_path / "again.onnx"
    export_model("compact-contrastive", *load_checkpoint(checkpoint), 0.125, metrics, example_faces(faces), again)
    assert again.read_bytes() == out.read_bytes()


def test_a_failed_export_leaves_no_model(tmp_path: Path):
    faces = write_faces_dir(tmp_path / "faces")
    checkpoint = write_tiny_model(tmp_path / "m.pt", threshold=0.1)
    out = tmp_path / "m.onnx"
    with pytest.raises(RuntimeError, match="model registry is down"):
        export_model("compact-contrastive", *load_checkpoint(checkpoint), 0.1, tmp_path / "m.json",
                     example_faces(faces), out, RecordingRun(fail_on_log_model=True))
    assert not out.exists()


def test_the_example_faces_are_the_first_two_readable_pictures(tmp_path: Path):
    faces = write_faces_dir(tmp_path / "faces")
    (faces / "testing" / "s5" / "1.pgm").write_text("not a picture")
    examples = example_faces(faces)
    assert [path.relative_to(faces).as_posix() for path in examples] == ["testing/s5/2.pgm", "testing/s5/3.pgm"]
    assert all(np.array_equal(pixels, load_pixels(path)) for path, pixels in examples.items())
    with pytest.raises(ImageError, match="no-faces: fewer than 2 readable pictures"):
        example_faces(tmp_path / "no-faces")


def test_the_stage_logs_the_onnx_flavor_with_signature_and_example(tmp_path: Path, monkeypatch):
    import mlflow

    from facesim.mlops.tracking import stage_run

    for var in ("DVC_ROOT", "DVC_STAGE", "DVC_EXP_NAME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    faces = write_faces_dir(tmp_path / "faces")
    checkpoint = write_tiny_model(tmp_path / "m.pt", threshold=0.1)
    try:
        with stage_run("evaluate", {"model": "compact-contrastive", "opset": OPSET}, root=tmp_path) as run:
            export_model("compact-contrastive", *load_checkpoint(checkpoint), 0.1, tmp_path / "m.json",
                         example_faces(faces), tmp_path / "m.onnx", run)
        info = mlflow.models.get_model_info(f"runs:/{run.run_id}/onnx")
        assert "onnx" in info.flavors and info.metadata["facesim.model"] == "compact-contrastive"
        inputs = info.signature.inputs.to_dict()
        assert list(inputs[0]["tensor-spec"]["shape"]) == [-1, 1, 16, 16]
        assert list(info.signature.outputs.to_dict()[0]["tensor-spec"]["shape"]) == [-1, 8]
        assert info.saved_input_example_info is not None
        loaded = mlflow.onnx.load_model(f"runs:/{run.run_id}/onnx")
        assert loaded.SerializeToString(deterministic=True) == (tmp_path / "m.onnx").read_bytes()
    finally:
        mlflow.set_tracking_uri(None)


# ---- the pipeline's own models ----------------------------------------------------------------------------

PIPELINE_MODELS = [f"{backbone}-{loss}" for backbone in ("compact", "dlib") for loss in ("contrastive", "triplet")]


@pytest.mark.parametrize("name", PIPELINE_MODELS)
def test_the_exported_models_give_torchs_embeddings_of_all_400_faces_and_its_verdict_on_every_held_out_pair(name):
    files = [REPO / "models" / f"{name}.pt", REPO / "models" / f"{name}.onnx",
             REPO / "reports" / "metrics" / f"{name}.json", TESTING / "s5" / "1.pgm"]
    if not all(path.exists() for path in files):
        pytest.skip(f"needs models/{name}.pt and .onnx, its metrics and the ORL faces (dvc repro)")
    if name.startswith("dlib"):
        pytest.importorskip("dlib")
    torch_model = from_checkpoint(files[0], files[2])
    onnx_model = from_onnx(files[1])
    assert onnx_model.threshold == torch_model.threshold  # the evaluate stage's, exactly
    paths = sorted(TESTING.parent.rglob("*.pgm"))
    assert len(paths) == 400
    pictures = [load_pixels(path) for path in paths]  # whole, as the pipeline embeds them
    ours, theirs = onnx_model.encoder.embed(pictures), torch_model.encoder.embed(pictures)
    assert np.abs(ours - theirs).max() <= PARITY
    held_out = [row for row, path in enumerate(paths) if TESTING in path.parents]
    assert len(held_out) == 30
    pairs = np.array(list(itertools.combinations(held_out, 2)))
    verdicts = [np.linalg.norm(e[pairs[:, 0]] - e[pairs[:, 1]], axis=1) <= torch_model.threshold for e in (ours, theirs)]
    assert len(pairs) == 435 and np.array_equal(verdicts[0], verdicts[1])
