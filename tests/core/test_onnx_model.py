"""facesim.core.onnx_model: reading what the evaluate stage exports, and refusing, in one line, what it did not.

The models here are built with onnx's helpers (a flatten and a matrix product), so that these tests need no
torch; `tests/pipeline/test_export.py` checks real exports against torch.
"""

from __future__ import annotations

import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from helpers import modules_imported_by, random_grey_pixels
from facesim.core.model_files import ModelError
from facesim.core.onnx_model import (
    FORMAT,
    FORMAT_VERSION,
    METADATA,
    OnnxMetadata,
    OnnxNetwork,
    OnnxUnavailable,
    read_metadata,
)
from facesim.core.preprocess import Preprocess, prepare_grey

PREPROCESS = Preprocess(height=8, width=6)
SIZE = 4


def metadata(**changes) -> OnnxMetadata:
    values = dict(format=FORMAT, format_version=FORMAT_VERSION, model="compact-triplet", preprocess=PREPROCESS,
                  threshold=0.5, threshold_source="calibrated on people unseen in training, m.json", input="pixels",
                  embedding_size=SIZE)
    return OnnxMetadata(**{**values, **changes})


def write_model(path, props: dict[str, str], input_shape=("batch", 1, 8, 6), output_size: int = SIZE,
                weights: np.ndarray | None = None):
    """A linear model of the flattened input, with these metadata props."""
    features = int(np.prod([n for n in input_shape[1:]]))
    if weights is None:
        weights = np.random.default_rng(0).normal(size=(features, output_size)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["faces"], ["flat"], axis=1), helper.make_node("MatMul", ["flat", "w"], ["embeddings"])],
        "linear",
        [helper.make_tensor_value_info("faces", TensorProto.FLOAT, list(input_shape))],
        [helper.make_tensor_value_info("embeddings", TensorProto.FLOAT, ["batch", output_size])],
        [numpy_helper.from_array(weights, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))
    return path


def test_metadata_round_trip_as_text():
    props = metadata().to_props()
    assert sorted(props) == sorted(METADATA)
    assert props["facesim.threshold"] == "0.5" and props["facesim.format_version"] == str(FORMAT_VERSION)
    assert read_metadata(props, "m.onnx") == metadata()


def test_a_facesim_model_embeds_pictures_as_its_graph_says(tmp_path):
    weights = np.random.default_rng(1).normal(size=(48, SIZE)).astype(np.float32)
    network = OnnxNetwork(write_model(tmp_path / "m.onnx", metadata().to_props(), weights=weights))
    assert network.metadata == metadata() and network.preprocess == PREPROCESS
    pictures = [random_grey_pixels(20, 15, seed) for seed in range(3)]
    expected = prepare_grey(pictures, PREPROCESS).reshape(3, -1) @ weights
    assert np.allclose(network.embed(pictures), expected, atol=1e-5)
    assert network.embed([]).shape == (0, SIZE)


def test_an_onnx_model_without_facesim_metadata_is_refused_naming_the_file_and_what_is_missing(tmp_path):
    foreign = write_model(tmp_path / "resnet.onnx", {"author": "someone"})
    with pytest.raises(ModelError) as caught:
        OnnxNetwork(foreign)
    message = str(caught.value)
    assert message.startswith(f"{foreign}: not a facesim ONNX model (no facesim metadata: facesim.format, ")
    assert "facesim.preprocess" in message and "\n" not in message


def test_missing_or_bad_metadata_are_named(tmp_path):
    props = metadata().to_props()
    del props["facesim.threshold"], props["facesim.preprocess"]
    with pytest.raises(ModelError, match=r"m\.onnx: facesim ONNX model without facesim\.preprocess, facesim\.threshold"):
        OnnxNetwork(write_model(tmp_path / "m.onnx", props))
    with pytest.raises(ModelError, match=r"facesim ONNX format version 99; this facesim reads version 1"):
        OnnxNetwork(write_model(tmp_path / "m.onnx", {**metadata().to_props(), "facesim.format_version": "99"}))
    with pytest.raises(ModelError, match=r"facesim\.format is 'other', not 'facesim-onnx'"):
        OnnxNetwork(write_model(tmp_path / "m.onnx", {**metadata().to_props(), "facesim.format": "other"}))
    with pytest.raises(ModelError, match=r"unreadable facesim metadata"):
        OnnxNetwork(write_model(tmp_path / "m.onnx", {**metadata().to_props(), "facesim.preprocess": "{"}))


@pytest.mark.parametrize("shape", [("batch", 3, 8, 6), ("batch", 1, 224, 224), ("batch", 48)])
def test_an_input_of_another_shape_is_refused_in_one_line(tmp_path, shape):
    model = write_model(tmp_path / "m.onnx", metadata().to_props(), input_shape=shape)
    with pytest.raises(ModelError, match=r"^\S*m\.onnx: its input \(faces tensor\(float\) \[.*\]\) is not the float "
                                         r"\['batch', 1, 8, 6\] its facesim metadata \(pixels\) say"):
        OnnxNetwork(model)


def test_an_output_of_another_size_is_refused(tmp_path):
    model = write_model(tmp_path / "m.onnx", metadata(embedding_size=5).to_props())
    with pytest.raises(ModelError, match=r"its output \(embeddings \['batch', 4\]\) is not the \['batch', 5\] embeddings"):
        OnnxNetwork(model)


def test_a_file_that_is_no_onnx_model_says_so(tmp_path):
    notes = tmp_path / "notes.onnx"
    notes.write_text("hello, not a model\n")
    with pytest.raises(ModelError, match=r"notes\.onnx: not an ONNX model onnxruntime can load \(.*\); give a \.onnx"):
        OnnxNetwork(notes)
    with pytest.raises(FileNotFoundError, match=r"absent\.onnx: ONNX model not found"):
        OnnxNetwork(tmp_path / "absent.onnx")


def test_without_onnxruntime_it_says_what_to_install(tmp_path, monkeypatch):
    model = write_model(tmp_path / "m.onnx", metadata().to_props())
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # what an import of a missing package meets
    with pytest.raises(OnnxUnavailable, match=r"m\.onnx: running an ONNX model needs onnxruntime, which is not "
                                              r"installed: pip install 'onnxruntime>=1\.17,<2'"):
        OnnxNetwork(model)


@pytest.mark.parametrize("module", ["facesim.core.onnx_model", "facesim.core.inference", "facesim.core.preprocess"])
def test_the_onnx_path_imports_no_torch(module):
    assert modules_imported_by(module, ["torch", "mlflow", "onnx"]) == []
