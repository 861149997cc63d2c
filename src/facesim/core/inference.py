"""A trained model ready to use, below both the Python API and the served MLflow model.

A `FaceModel` is a network, the preprocessing it was trained with and the distance threshold the
evaluate stage calibrated. `from_onnx` loads what the evaluate stage wrote (`.onnx`), run by onnxruntime
(`facesim.core.onnx_model`): neither torch nor MLflow is imported on that path. `from_checkpoint` loads
a `.pt` checkpoint, run by torch, imported only then. `face_pixels` turns a picture (a file, its bytes,
or a Pillow image) into the 8-bit grey face the models take: decoded by `facesim.core.images` and, where
the face is only part of the photo, framed like the ORL faces (`facesim.core.detect`).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from facesim.core.detect import framed_face
from facesim.core.images import decode_pixels, grey_pixels, load_pixels
from facesim.core.metrics import pair_distances
from facesim.core.model_files import ModelError, read_threshold
from facesim.core.onnx_model import OnnxNetwork
from facesim.core.paths import show_path
from facesim.core.preprocess import Preprocess


class Encoder(Protocol):
    """What turns 8-bit grey faces into embeddings: `TorchNetwork` (a checkpoint) or `OnnxNetwork` (an export)."""

    def embed(self, pixels: Sequence[np.ndarray]) -> np.ndarray: ...


@dataclass
class TorchNetwork:
    """A checkpoint's network, run by torch."""

    network: Any  # the torch.nn.Module of `facesim.core.checkpoint.load_checkpoint`, in eval mode
    preprocess: Preprocess

    def embed(self, pixels: Sequence[np.ndarray]) -> np.ndarray:
        # imported here: torch loads only for a .pt model (from_checkpoint has imported it already)
        from facesim.core.data import prepare_pixels
        from facesim.core.embedding import embed_all

        return embed_all(self.network, prepare_pixels(pixels, self.preprocess)).numpy()


@dataclass
class FaceModel:
    """A trained embedding network ready to use, with the distance threshold calibrated by the evaluate stage."""

    name: str  # what was asked for: a model name, a model file's path or an MLflow URI
    checkpoint: str  # the model file it was loaded from: a .pt checkpoint or a .onnx export
    encoder: Encoder  # the network, on torch or onnxruntime
    preprocess: Preprocess
    digest: str  # sha256 of the model file's bytes: the cache key of its embeddings
    threshold: float | None  # same person when distance <= threshold; None when unknown
    threshold_source: str  # where the threshold came from, or why there is none
    # the error when a threshold is needed and there is none, where more is known than threshold_source
    # says (the pipeline's metrics file is missing: how to get it back); None: the generic one
    missing_threshold: str | None = None

    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        """(N, D) float32 embeddings of pictures, prepared exactly as in training."""
        return self.encoder.embed([grey_pixels(image) for image in images])

    def distances(self, first: Sequence[Image.Image], second: Sequence[Image.Image]) -> np.ndarray:
        """Euclidean distance between the embeddings of first[i] and second[i]."""
        if len(first) != len(second):
            raise ValueError(f"need pairs: {len(first)} first images but {len(second)} second images; "
                             "pass as many of each")
        rows = np.arange(len(first))
        return pair_distances(self.embed([*first, *second]), rows, rows + len(first))

    def require_threshold(self) -> float:
        if self.threshold is None:
            if self.missing_threshold is not None:
                raise ModelError(self.missing_threshold)
            raise ModelError(f"{self.name}: no distance threshold ({self.threshold_source}); "
                             "pass one with --threshold (threshold= in Python)")
        return self.threshold


def calibrated_source(where: str) -> str:
    """A `FaceModel.threshold_source` for the evaluate stage's threshold, published `where` (a metrics file, an
    export's metadata, an MLflow model)."""
    return f"calibrated on people unseen in training, {where}"


def file_digest(path: str | os.PathLike) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def from_checkpoint(
    checkpoint: str | os.PathLike,
    metrics: str | os.PathLike | None = None,
    threshold: float | None = None,
    name: str | None = None,
) -> FaceModel:
    """A FaceModel from a checkpoint, on torch; the threshold is `threshold` when given, else the metrics file's."""
    from facesim.core.checkpoint import load_checkpoint  # imported here: torch, for .pt models only

    network, saved = load_checkpoint(checkpoint)
    if threshold is not None:
        source = "given"
    elif metrics is not None and Path(metrics).is_file():
        threshold, source = read_threshold(metrics), calibrated_source(show_path(metrics))
    else:
        source = f"{show_path(metrics)} not found" if metrics is not None else "no metrics file"
    preprocess = Preprocess(**saved["preprocess"])
    return FaceModel(name=name or str(checkpoint), checkpoint=str(checkpoint),
                     encoder=TorchNetwork(network, preprocess), preprocess=preprocess,
                     digest=file_digest(checkpoint), threshold=None if threshold is None else float(threshold),
                     threshold_source=source)


def from_onnx(path: str | os.PathLike, threshold: float | None = None, name: str | None = None) -> FaceModel:
    """A FaceModel from an exported ONNX model, on onnxruntime; the threshold is `threshold` when given, else
    the one its metadata carry (the evaluate stage's, when it was exported)."""
    network = OnnxNetwork(path)
    metadata = network.metadata
    return FaceModel(name=name or str(path), checkpoint=str(path), encoder=network, preprocess=metadata.preprocess,
                     digest=file_digest(path),
                     threshold=metadata.threshold if threshold is None else float(threshold),
                     threshold_source=metadata.threshold_source if threshold is None else "given")


def face_pixels(image: str | os.PathLike | bytes | Image.Image, name: str, detect: bool = True) -> np.ndarray:
    """8-bit grey pixels of the face in a picture: an image file's path, its bytes, or a Pillow image.

    Where the face is a small part of the photo it is cropped with ORL's loose framing
    (`detect=False`: the whole picture, for pictures already framed like ORL that the detector
    misses). `name` is what errors say."""
    if isinstance(image, Image.Image):
        pixels = grey_pixels(image)
    elif isinstance(image, bytes):
        pixels = decode_pixels(image, name)
    else:
        pixels = load_pixels(image)
    return framed_face(pixels, name) if detect else pixels
