"""A trained model as ONNX, run by onnxruntime: what `facesim verify/search/embed` use, without torch or MLflow.

The evaluate stage (`facesim.pipeline.export`) writes `models/<backbone>-<loss>.onnx`: the network's graph
(an ensemble as one graph; for the dlib backbone its head, which takes dlib's 128 numbers) and, in the
model's metadata, what it takes to use it (`METADATA`): how a picture becomes its input (the checkpoint's
`Preprocess`, as JSON), the distance threshold and where it came from, the kind of input and the embedding
size. `OnnxNetwork` reads and checks them, prepares pictures as training did (`facesim.core.preprocess`;
dlib's descriptor from `facesim.core.dlib_face`) and runs the graph. A file that is not such a model is
refused in one line naming it and what it lacks.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from facesim.core.dlib_face import DESCRIPTOR_SIZE, describe
from facesim.core.model_files import ModelError
from facesim.core.preprocess import Preprocess, prepare_grey

FORMAT = "facesim-onnx"  # the value of `facesim.format`: this file is a facesim model
FORMAT_VERSION = 1  # bump when the metadata change meaning; a reader refuses versions it does not know
# what the graph takes, by `Preprocess.features`: prepared pixels (N, 1, height, width) or dlib's descriptors (N, 128)
INPUT_KINDS = {"pixels": "pixels", "dlib": "dlib_descriptor"}
INPUT_NAMES = {"pixels": "faces", "dlib_descriptor": "descriptors"}
OUTPUT_NAME = "embeddings"
# largest difference allowed between onnxruntime's and torch's embeddings (max abs): the evaluate stage
# refuses a model beyond it, tests and benchmarks/serve.py hold the two flavors to it
PARITY = 1e-4
# onnxruntime is a dependency of facesim; this says how to get it back where it is missing
INSTALL_HINT = "pip install 'onnxruntime>=1.17,<2' (a facesim dependency: `pip install -e .` installs it)"
BATCH = 256  # faces per onnxruntime call, as `facesim.core.embedding.embed_all` batches them


@dataclass(frozen=True)
class OnnxMetadata:
    """What an exported model records of itself, each field under the metadata key `facesim.<field>`."""

    format: str  # FORMAT
    format_version: int  # FORMAT_VERSION
    model: str  # the model's name, <backbone>-<loss>
    preprocess: Preprocess  # how a picture becomes its input (stored as JSON)
    threshold: float  # same person when the distance is at most this
    threshold_source: str  # where the threshold came from
    input: str  # a value of INPUT_KINDS
    embedding_size: int  # numbers per face

    def to_props(self) -> dict[str, str]:
        """The metadata as ONNX stores it: text under `facesim.<field>`, numbers in exact text."""
        props = {}
        for field in fields(self):
            value = getattr(self, field.name)
            if isinstance(value, Preprocess):
                value = json.dumps(value.to_dict(), sort_keys=True)
            elif isinstance(value, float):
                value = repr(value)
            props[f"facesim.{field.name}"] = str(value)
        return props


METADATA = tuple(f"facesim.{field.name}" for field in fields(OnnxMetadata))


class OnnxUnavailable(ImportError):
    """onnxruntime is not installed."""


def read_metadata(props: Mapping[str, str], path: str | os.PathLike) -> OnnxMetadata:
    """The facesim metadata of an ONNX model's metadata props; a ModelError naming the file and what is
    missing or wrong for anything but a model the evaluate stage wrote."""
    missing = [key for key in METADATA if key not in props]
    if len(missing) == len(METADATA):
        raise ModelError(f"{path}: not a facesim ONNX model (no facesim metadata: {', '.join(METADATA)}); "
                         "give a .onnx the evaluate stage wrote (models/<backbone>-<loss>.onnx)")
    if missing:
        raise ModelError(f"{path}: facesim ONNX model without {', '.join(missing)} in its metadata; "
                         "export it again (dvc repro)")
    if props["facesim.format"] != FORMAT:
        raise ModelError(f"{path}: facesim.format is {props['facesim.format']!r}, not {FORMAT!r}; "
                         "give a .onnx the evaluate stage wrote")
    try:
        version = int(props["facesim.format_version"])
        preprocess = Preprocess(**json.loads(props["facesim.preprocess"]))
        threshold = float(props["facesim.threshold"])
        size = int(props["facesim.embedding_size"])
    except (ValueError, TypeError) as exc:
        raise ModelError(f"{path}: unreadable facesim metadata ({exc}); export it again (dvc repro)") from None
    if version != FORMAT_VERSION:
        raise ModelError(f"{path}: facesim ONNX format version {version}; this facesim reads version "
                         f"{FORMAT_VERSION}: export it again with this version (dvc repro), or use the facesim that wrote it")
    if props["facesim.input"] not in INPUT_KINDS.values() or not math.isfinite(threshold) or size < 1:
        raise ModelError(f"{path}: facesim metadata out of range (facesim.input {props['facesim.input']!r}, "
                         f"facesim.threshold {threshold!r}, facesim.embedding_size {size}); export it again (dvc repro)")
    return OnnxMetadata(format=FORMAT, format_version=version, model=props["facesim.model"], preprocess=preprocess,
                        threshold=threshold, threshold_source=props["facesim.threshold_source"],
                        input=props["facesim.input"], embedding_size=size)


def input_shape(metadata: OnnxMetadata) -> tuple[str | int, ...]:
    """The input shape a model of these metadata takes, its batch dimension named `batch`."""
    if metadata.input == "dlib_descriptor":
        return ("batch", DESCRIPTOR_SIZE)
    return ("batch", 1, metadata.preprocess.height, metadata.preprocess.width)


def _session(path: Path) -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise OnnxUnavailable(f"{path}: running an ONNX model needs onnxruntime, which is not installed: "
                              f"{INSTALL_HINT}; or pass a .pt checkpoint to run the model on torch") from None
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only: its warnings would reach a user's stderr
    try:
        return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own types; all mean the file is no model it can run
        reason = " ".join(str(exc).split())[:200]
        raise ModelError(f"{path}: not an ONNX model onnxruntime can load ({reason}); give a .onnx the export "
                         "stage wrote (models/<backbone>-<loss>.onnx)") from None


def _check_graph(session: Any, metadata: OnnxMetadata, path: Path) -> None:
    """One input of the shape the metadata say, one output of embedding_size numbers a face."""
    inputs, outputs = session.get_inputs(), session.get_outputs()
    wanted = input_shape(metadata)

    def fits(shape: Sequence[Any], expected: Sequence[Any]) -> bool:
        return len(shape) == len(expected) and all(isinstance(want, str) or have == want
                                                   for have, want in zip(shape, expected))

    if len(inputs) != 1 or not fits(inputs[0].shape, wanted) or inputs[0].type != "tensor(float)":
        found = ", ".join(f"{i.name} {i.type} {list(i.shape)}" for i in inputs) or "none"
        raise ModelError(f"{path}: its input ({found}) is not the float {list(wanted)} its facesim metadata "
                         f"({metadata.input}) say; give a .onnx the evaluate stage wrote")
    if len(outputs) != 1 or not fits(outputs[0].shape, ("batch", metadata.embedding_size)):
        found = ", ".join(f"{o.name} {list(o.shape)}" for o in outputs) or "none"
        raise ModelError(f"{path}: its output ({found}) is not the ['batch', {metadata.embedding_size}] "
                         "embeddings its facesim metadata say; give a .onnx the evaluate stage wrote")


class OnnxNetwork:
    """An exported model on onnxruntime: 8-bit grey faces in, embeddings out, as its checkpoint gives them."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: ONNX model not found; check the path")
        self.session = _session(self.path)
        self.metadata = read_metadata(self.session.get_modelmeta().custom_metadata_map, self.path)
        _check_graph(self.session, self.metadata, self.path)
        self.input_name = self.session.get_inputs()[0].name

    @property
    def preprocess(self) -> Preprocess:
        return self.metadata.preprocess

    def model_input(self, pixels: Sequence[np.ndarray]) -> np.ndarray:
        """What the graph takes for (height, width) uint8 grey faces: prepared pixels, or dlib's descriptors."""
        if self.metadata.input == "dlib_descriptor":
            return describe(pixels).vectors
        return prepare_grey(pixels, self.preprocess)

    def run(self, model_input: np.ndarray) -> np.ndarray:
        """Embeddings (N, embedding_size) float32 of prepared model input, BATCH faces at a time."""
        if len(model_input) == 0:
            return np.empty((0, self.metadata.embedding_size), dtype=np.float32)
        return np.concatenate([self.session.run(None, {self.input_name: model_input[i : i + BATCH]})[0]
                               for i in range(0, len(model_input), BATCH)])

    def embed(self, pixels: Sequence[np.ndarray]) -> np.ndarray:
        """Embeddings (N, embedding_size) float32 of (height, width) uint8 grey faces, in their order."""
        return self.run(self.model_input(pixels))
