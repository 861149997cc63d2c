"""A trained model ready to use, below both the Python API and the served MLflow model.

`from_checkpoint` gives a `FaceModel`: the network, the preprocessing it was
trained with and the distance threshold the evaluate stage calibrated.
`face_pixels` turns a picture (a file, its bytes, or a Pillow image) into the
8-bit grey face the models take: decoded by `facesim.core.images` and, where
the face is only part of the photo, framed like the ORL faces
(`facesim.core.detect`).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from facesim.core.data import Preprocess, prepare_images
from facesim.core.detect import framed_face
from facesim.core.images import decode_pixels, grey_pixels, load_pixels
from facesim.core.metrics import pair_distances
from facesim.core.model_files import ModelError, read_threshold
from facesim.core.models import embed_all, load_checkpoint
from facesim.core.paths import show_path


@dataclass
class FaceModel:
    """A trained embedding network ready to use, with the distance threshold calibrated by the evaluate stage."""

    name: str  # what was asked for: a model name, a checkpoint path or an MLflow URI
    checkpoint: str  # the checkpoint file it was loaded from
    network: torch.nn.Module
    preprocess: Preprocess
    digest: str  # sha256 of the checkpoint's bytes: the cache key of its embeddings
    threshold: float | None  # same person when distance <= threshold; None when unknown
    threshold_source: str  # where the threshold came from, or why there is none
    # the error when a threshold is needed and there is none, where more is known than threshold_source
    # says (the pipeline's metrics file is missing: how to get it back); None: the generic one
    missing_threshold: str | None = None

    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        """(N, D) float32 embeddings of pictures, prepared exactly as in training."""
        return embed_all(self.network, prepare_images(images, self.preprocess)).numpy()

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


def file_digest(path: str | os.PathLike) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def from_checkpoint(
    checkpoint: str | os.PathLike,
    metrics: str | os.PathLike | None = None,
    threshold: float | None = None,
    name: str | None = None,
) -> FaceModel:
    """A FaceModel from a checkpoint; the threshold is `threshold` when given, else the metrics file's."""
    network, saved = load_checkpoint(checkpoint)
    if threshold is not None:
        source = "given"
    elif metrics is not None and Path(metrics).is_file():
        threshold, source = read_threshold(metrics), f"calibrated on people unseen in training, {show_path(metrics)}"
    else:
        source = f"{show_path(metrics)} not found" if metrics is not None else "no metrics file"
    return FaceModel(name=name or str(checkpoint), checkpoint=str(checkpoint), network=network,
                     preprocess=Preprocess(**saved["preprocess"]), digest=file_digest(checkpoint),
                     threshold=None if threshold is None else float(threshold), threshold_source=source)


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
