"""facesim.mlops.pyfunc: the served pair verifier, in this process: base64 images in, distances and
verdicts out, and every bad cell named. (Served by `mlflow models serve` in test_serving.py.)

The synthetic faces of helpers.py are patterns no face detector finds: here they are used whole, as
`tiny_repo` does, by taking the framing out of `facesim.core.inference`.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from helpers import TESTING, face_image_bytes, model_config, needs_orl, write_faces_dir, write_tiny_model
from facesim.core.inference import from_checkpoint
from facesim.core.onnx_model import OnnxNetwork
from facesim.core.model_files import ModelError
from facesim.mlops.pyfunc import INPUT_COLUMNS, FaceVerifier, decode_image, encode_image

THRESHOLD = 0.05
METRICS = {"threshold": THRESHOLD}  # what the evaluate stage logs with the model, in short


@pytest.fixture
def faces(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Four synthetic face files (two of person 5, two of person 6), framed as they are."""
    monkeypatch.setattr("facesim.core.inference.framed_face", lambda pixels, name: pixels)
    paths = []
    for person, image in ((5, 1), (5, 2), (6, 1), (6, 2)):
        paths.append(tmp_path / f"s{person}-{image}.pgm")
        paths[-1].write_bytes(face_image_bytes(person, image))
    return paths


def loaded_verifier(tmp_path: Path, metrics: dict | None = METRICS) -> FaceVerifier:
    """A FaceVerifier loaded as MLflow loads it, from a tiny checkpoint and `metrics` (None: no such file)."""
    checkpoint = write_tiny_model(tmp_path / "model" / "tiny.pt", threshold=None)
    path = tmp_path / "model" / "metrics.json"
    if metrics is not None:
        path.write_text(json.dumps(metrics))
    verifier = FaceVerifier()
    verifier.load_context(SimpleNamespace(artifacts={"checkpoint": str(checkpoint), "metrics": str(path)}))
    return verifier


def test_the_verifier_of_an_onnx_export_answers_as_the_checkpoints(faces, tmp_path: Path):
    from facesim.core.checkpoint import load_checkpoint
    from facesim.pipeline.export import PARITY, example_faces, export_model

    on_torch = loaded_verifier(tmp_path)
    metrics, onnx = tmp_path / "model" / "metrics.json", tmp_path / "model" / "tiny.onnx"
    export_model("compact-contrastive", *load_checkpoint(tmp_path / "model" / "tiny.pt"), THRESHOLD, metrics,
                 example_faces(write_faces_dir(tmp_path / "faces")), onnx)
    on_onnx = FaceVerifier()
    on_onnx.load_context(SimpleNamespace(artifacts={"onnx": str(onnx)}))  # what the evaluate stage registers
    assert isinstance(on_onnx.model.encoder, OnnxNetwork) and on_onnx.model.threshold == THRESHOLD
    a, b, c, d = (encode_image(path) for path in faces)
    pairs = table((a, a), (a, b), (a, c), (b, d), (c, d))
    torch_answer, onnx_answer = on_torch.predict(None, pairs), on_onnx.predict(None, pairs)
    assert np.abs(onnx_answer["distance"] - torch_answer["distance"]).max() <= PARITY
    assert onnx_answer["same_person"].tolist() == torch_answer["same_person"].tolist()


def table(*rows: tuple[str, str]) -> pd.DataFrame:
    return pd.DataFrame(list(rows), columns=list(INPUT_COLUMNS))


def test_encode_then_decode_gives_the_grey_picture(faces):
    encoded = encode_image(faces[0])
    assert base64.b64decode(encoded) == faces[0].read_bytes()
    decoded = decode_image(encoded, "row 0, image1")
    assert decoded.mode == "L" and np.array_equal(np.asarray(decoded), np.asarray(Image.open(faces[0])))


def test_decode_image_names_the_bad_cell():
    with pytest.raises(ValueError, match="row 3, image2: not base64"):
        decode_image("***", "row 3, image2")
    with pytest.raises(ValueError, match="row 0, image1: not a readable image"):
        decode_image(base64.b64encode(b"plain text").decode(), "row 0, image1")


def test_predict_gives_the_distance_and_verdict_of_each_pair(faces, tmp_path: Path):
    verifier = loaded_verifier(tmp_path)
    a, b, c, d = (encode_image(path) for path in faces)
    answer = verifier.predict(None, table((a, a), (a, b), (a, c), (c, d)))
    assert list(answer.columns) == ["distance", "same_person"] and len(answer) == 4
    assert answer["distance"].dtype == np.float64 and answer["same_person"].dtype == bool
    assert answer["distance"][0] == pytest.approx(0.0, abs=1e-6) and answer["same_person"][0]
    # the distances of the model the checkpoint holds, the verdict at the threshold of the metrics file
    model = from_checkpoint(tmp_path / "model" / "tiny.pt", threshold=THRESHOLD)
    pictures = [Image.open(path) for path in faces]
    expected = model.distances([pictures[0]] * 3 + [pictures[2]], [pictures[0], pictures[1], pictures[2], pictures[3]])
    assert answer["distance"].to_numpy() == pytest.approx(expected, abs=1e-6)
    assert answer["same_person"].tolist() == (expected <= THRESHOLD).tolist()


def test_predict_of_no_pairs_is_an_empty_typed_table(tmp_path: Path):
    answer = loaded_verifier(tmp_path).predict(None, table())
    assert answer.empty and list(answer.columns) == ["distance", "same_person"]
    assert answer.dtypes.tolist() == [np.dtype("float64"), np.dtype("bool")]


def test_predict_refuses_missing_columns_and_names_bad_cells(faces, tmp_path: Path):
    verifier = loaded_verifier(tmp_path)
    with pytest.raises(ValueError, match="input must have columns image1 and image2 .*; missing image2"):
        verifier.predict(None, pd.DataFrame({"image1": [encode_image(faces[0])]}))
    good = encode_image(faces[0])
    with pytest.raises(ValueError, match="row 1, image2: not base64-encoded image bytes"):
        verifier.predict(None, table((good, good), (good, "***")))


def test_a_model_without_a_threshold_is_refused_when_loaded(tmp_path: Path):
    with pytest.raises(ModelError, match="not an evaluate metrics file with a 'threshold'"):
        loaded_verifier(tmp_path / "no threshold", metrics={"auc": 0.9})
    with pytest.raises(ModelError, match="no distance threshold"):
        loaded_verifier(tmp_path / "no metrics", metrics=None)


@needs_orl
def test_the_served_dlib_backbone_verifies_real_faces(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A dlib checkpoint served: photos framed and described by dlib, then the head, as in training."""
    pytest.importorskip("dlib", reason="the dlib extra is not installed (pip install -e '.[dlib]')")
    import torch

    from facesim.core.data import Preprocess
    from facesim.core.models import build_embedding_net

    monkeypatch.setenv("FACESIM_CACHE", str(tmp_path / "cache"))
    config = model_config(backbone="dlib", embedding_dim=128)  # the head as it starts: dlib's own distances
    checkpoint = tmp_path / "dlib.pt"
    torch.save({"model_state": build_embedding_net(config).state_dict(), "model_config": config.to_dict(),
                "preprocess": Preprocess(features="dlib").to_dict(), "epoch": 1}, checkpoint)
    (tmp_path / "metrics.json").write_text(json.dumps({"threshold": 0.6}))  # dlib's rule: below 0.6, same
    verifier = FaceVerifier()
    verifier.load_context(SimpleNamespace(artifacts={"checkpoint": str(checkpoint),
                                                     "metrics": str(tmp_path / "metrics.json")}))
    s5a, s5b, s6 = (encode_image(TESTING / p) for p in ("s5/1.pgm", "s5/2.pgm", "s6/1.pgm"))
    answer = verifier.predict(None, table((s5a, s5b), (s5a, s6)))
    assert answer["same_person"].tolist() == [True, False]
