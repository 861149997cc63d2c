"""The served model: an MLflow pyfunc that verifies image pairs.

`FaceVerifier` answers a table of image pairs (base64-encoded image bytes in
columns `image1` and `image2`) with `distance` and `same_person`, so that

    mlflow models serve -m "models:/facesim-compact-triplet@champion" --env-manager local

serves it. Its artifacts are either a checkpoint and the evaluate stage's metrics
(for the threshold), run by torch (`facesim-<model>`, registered by the evaluate
stage), or an ONNX export, whose metadata carry the threshold, run by onnxruntime
without torch (`facesim-<model>-onnx`, registered by the evaluate stage too). Both read
pictures as `facesim verify` does (`facesim.core.inference`: decoded, framed,
prepared as in training), so both answer a pair with the same distance.
"""

from __future__ import annotations

import base64
import binascii
import os
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd
from PIL import Image

from facesim.core.images import ImageError
from facesim.core.inference import face_pixels, from_checkpoint, from_onnx

INPUT_COLUMNS = ("image1", "image2")


def encode_image(path: str | os.PathLike) -> str:
    """An image file's bytes as base64 text: what the served model takes in `image1` and `image2`."""
    return base64.b64encode(Path(path).read_bytes()).decode("ascii")


def decode_image(value: Any, where: str) -> Image.Image:
    """base64 text (or bytes) of an image file -> 8-bit grey pixels as a Pillow image, decoded and
    framed as `facesim verify` does; errors say which row and column."""
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, TypeError, ValueError):
        raise ValueError(f"{where}: not base64-encoded image bytes; send each image file's bytes in base64") from None
    try:
        return Image.fromarray(face_pixels(data, where))
    except ImageError as exc:
        raise ValueError(str(exc)) from None


class FaceVerifier(mlflow.pyfunc.PythonModel):
    """Image pairs in (`image1`, `image2`: base64 image bytes), `distance` and `same_person` out."""

    def load_context(self, context) -> None:
        artifacts = context.artifacts
        if "onnx" in artifacts:  # torch is never imported on this path
            self.model = from_onnx(artifacts["onnx"])
        else:
            self.model = from_checkpoint(artifacts["checkpoint"], artifacts["metrics"])
        self.model.require_threshold()

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        table = pd.DataFrame(model_input)
        missing = [c for c in INPUT_COLUMNS if c not in table.columns]
        if missing:
            raise ValueError(f"input must have columns image1 and image2 (base64 image bytes); "
                             f"missing {', '.join(missing)}")
        pairs = [[decode_image(value, f"row {row}, {column}") for row, value in enumerate(table[column])]
                 for column in INPUT_COLUMNS]
        if not pairs[0]:
            return pd.DataFrame({"distance": pd.Series(dtype="float64"), "same_person": pd.Series(dtype="bool")})
        distances = self.model.distances(pairs[0], pairs[1]).astype("float64")
        return pd.DataFrame({"distance": distances, "same_person": distances <= self.model.threshold})
