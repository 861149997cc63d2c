"""What names a trained model and its threshold, without torch: the two Siamese models (`MODELS`), the
threshold the evaluate stage calibrated (`read_threshold`, `read_evaluation`), and the error of a model that cannot be used.

The command line needs these before it knows which runtime runs the model (onnxruntime for an exported
`.onnx`, torch for a `.pt` checkpoint), so they import neither.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

MODELS = ("contrastive", "triplet")  # the two Siamese models: what their loss makes them


class ModelError(ValueError):
    """A model cannot be found or loaded, or has no threshold where one is needed."""


def read_threshold(metrics_path: str | os.PathLike) -> float:
    """The finite `threshold` of an evaluate stage's metrics JSON (calibrated on the validation people)."""
    path = Path(metrics_path)
    try:
        evaluation = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: metrics file not found; run the evaluate stage (`dvc repro`) first") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(f"{path}: not an evaluate metrics file with a 'threshold' (JSON: {exc}); rerun the "
                         "evaluate stage") from None
    if not isinstance(evaluation, dict) or "threshold" not in evaluation:
        raise ModelError(f"{path}: not an evaluate metrics file with a 'threshold' (a JSON object with one); rerun "
                         "the evaluate stage")
    threshold = evaluation["threshold"]
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold):
        raise ModelError(f"{path}: 'threshold' must be a finite number, got {threshold!r}")
    return float(threshold)
