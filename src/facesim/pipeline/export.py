"""The evaluate stage's export: a trained model as ONNX, which `facesim verify/search/embed` run on onnxruntime
without torch.

The graph is the checkpoint's network in eval mode: an ensemble as one graph (its members side by side),
for the dlib backbone the head alone (on dlib's 128 numbers, which `facesim.core.dlib_face` computes as
ever). torch's TorchScript exporter traces it and folds each BatchNorm into its convolution, at the pinned
opset `OPSET`, for batches of any size. It is the exporter torch 2.9 and later call legacy; its successor
(`dynamo=True`: torch.export, then onnxscript) writes the same graph but took 9.3 s a model on the project's
2 cores, against 1.4 s for this one, the most of every export stage. Its metadata (`OnnxMetadata`) carry the
preprocessing, the threshold the evaluate stage calibrated and where it came from, the input kind and the
embedding size.

The same bytes on every run and machine: DVC hashes the file and CI compares dvc.lock byte for byte. The
exporter records where each node came from (this checkout's source paths, stack traces) and torch's build
(`2.14.1+cu130`, `+cpu`); both are dropped, leaving what the checkpoint, the threshold and the pinned
package versions decide. The arithmetic done at export (the folded BatchNorms) is numpy's float32 add,
multiply, divide and square root, which every CPU rounds alike.

Before the file is published, onnxruntime runs it on two faces from picture to embedding (the torch-free
path) and must give torch's embeddings of them within `PARITY`; they are also the MLflow input example.
The evaluate stage then registers the pair verifier on it (`facesim.mlops.pyfunc.FaceVerifier`, run by
onnxruntime) as `facesim-<model>-onnx`, for `mlflow models serve` without torch.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from facesim.core.atomic import staged_outputs
from facesim.core.data import prepare_pixels
from facesim.core.images import ImageError, load_pixels
from facesim.core.embedding import embed_all
from facesim.core.inference import calibrated_source
from facesim.core.models import EmbeddingNet
from facesim.core.onnx_model import (FORMAT, FORMAT_VERSION, INPUT_KINDS, INPUT_NAMES, OUTPUT_NAME, PARITY, OnnxMetadata,
                                     OnnxNetwork)
from facesim.core.paths import natural_key
from facesim.core.preprocess import Preprocess
from facesim.mlops.runs import NULL_RUN, Run

OPSET = 18  # ONNX opset of every export: onnxruntime 1.14 and later run it
EXAMPLE_FACES = 2


def onnx_bytes(network: torch.nn.Module, example: torch.Tensor, metadata: OnnxMetadata) -> bytes:
    """`network` (eval mode, on the CPU) as ONNX: the same bytes for the same weights and metadata anywhere.
    `example` is a batch of its input, of at least two faces (shapes only: a batch of 1 would be fixed at 1)."""
    buffer = io.BytesIO()
    input_name = INPUT_NAMES[metadata.input]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="You are using the legacy TorchScript-based ONNX export")
        # the networks check their input's shape, which the example passes: the trace need not record the checks
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(network, (example,), buffer, dynamo=False, opset_version=OPSET,
                          input_names=[input_name], output_names=[OUTPUT_NAME],
                          dynamic_axes={input_name: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
    model = onnx.load_from_string(buffer.getvalue())
    _drop_provenance(model.graph)
    for function in model.functions:
        _drop_provenance(function)
    del model.metadata_props[:]
    model.doc_string = ""
    model.producer_version = torch.__version__.split("+")[0]  # not the build (+cu130, +cpu)
    for key, value in sorted(metadata.to_props().items()):
        model.metadata_props.add(key=key, value=value)
    return model.SerializeToString(deterministic=True)


def _drop_provenance(graph) -> None:
    """Clear what the exporter notes of where each part came from (source paths, stack traces, module names)."""
    graph.doc_string = ""
    for item in (*graph.node, *getattr(graph, "input", ()), *getattr(graph, "output", ()),
                 *getattr(graph, "value_info", ()), *getattr(graph, "initializer", ())):
        item.doc_string = ""
        del item.metadata_props[:]
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("g"):
                _drop_provenance(attribute.g)
            for subgraph in attribute.graphs:
                _drop_provenance(subgraph)
    if hasattr(graph, "metadata_props"):
        del graph.metadata_props[:]


def example_faces(faces_dir: str | os.PathLike, count: int = EXAMPLE_FACES) -> dict[Path, np.ndarray]:
    """The first `count` readable pictures under `faces_dir` in natural order (ORL: testing/s5/1.pgm, 2.pgm):
    each file and its pixels."""
    root = Path(faces_dir)
    files = sorted((p for p in root.rglob("*") if p.is_file()), key=lambda p: natural_key(p.relative_to(root).as_posix()))
    found = {}
    for path in files:
        try:
            found[path] = load_pixels(path)
        except ImageError:
            continue
        if len(found) == count:
            return found
    raise ImageError(f"{faces_dir}: fewer than {count} readable pictures, needed as the ONNX model's input example; "
                     "run the fetch stage (dvc repro)")


def export_model(
    model_name: str,
    network: EmbeddingNet,
    checkpoint: dict[str, Any],
    threshold: float,
    threshold_from: str | os.PathLike,
    examples: dict[Path, np.ndarray],
    out_path: str | os.PathLike,
    run: Run = NULL_RUN,
) -> OnnxMetadata:
    """The trained `network` (and the rest of its `checkpoint`, from `load_checkpoint`) with the evaluate stage's
    `threshold` as ONNX at `out_path`, checked against torch on the `examples` (`example_faces`) and logged to
    MLflow (the onnx flavor) before it is published. `threshold_from`: the metrics file that publishes the
    threshold, named in the metadata as where it came from. The exporter traces on the CPU: `network` is moved
    there."""
    network.cpu()
    preprocess = Preprocess(**checkpoint["preprocess"])
    pixels = list(examples.values())
    torch_input = prepare_pixels(pixels, preprocess)
    expected = embed_all(network, torch_input).numpy()
    metadata = OnnxMetadata(format=FORMAT, format_version=FORMAT_VERSION, model=model_name, preprocess=preprocess,
                            threshold=threshold,
                            threshold_source=calibrated_source(Path(threshold_from).as_posix()),
                            input=INPUT_KINDS[preprocess.features], embedding_size=int(expected.shape[1]))
    data = onnx_bytes(network, torch.zeros_like(torch_input), metadata)
    with staged_outputs(out_path) as (staged,):
        staged.write_bytes(data)
        exported = OnnxNetwork(staged)
        model_input = exported.model_input(pixels)
        difference = float(np.abs(exported.run(model_input) - expected).max())
        if not difference <= PARITY:
            raise ArithmeticError(f"{out_path}: onnxruntime's embeddings differ from torch's by {difference:.3g} "
                                  f"(more than {PARITY:g}) on the example faces; report it with the torch, onnx and "
                                  "onnxruntime versions")
        run.log_metrics({"onnx_max_abs_difference": difference, "onnx_bytes": len(data)})
        run.log_onnx_model(staged, model_input, metadata.to_props())
    return metadata
