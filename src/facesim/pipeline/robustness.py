"""The evaluate stage's robustness part: do verdicts hold when a photo is taken a little differently?

Each held-out face is changed the way ordinary photos differ (exposure,
contrast, framing, rotation, mirroring, scale, blur, JPEG compression) and
compared, at the deployed threshold, with the *unchanged* other photos of the
same person and with every photo of the other people. A model that holds
keeps accepting the first and rejecting the second. The changes work on the
8-bit grey pixels, before the model's own preparation, as a camera would.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from facesim.core.atomic import staged_outputs
from facesim.core.data import Preprocess, prepare_pixels
from facesim.core.images import load_pixels
from facesim.core.photo import Change, blur, contrast, exposure, jpeg, looser, mirror, rotation, scale, shifted, tighter
from facesim.core.embedding import embed_all
from facesim.core.models import EmbeddingNet
from facesim.pipeline.faces import held_out_faces, load_tables
from facesim.mlops.runs import NULL_RUN, Run

# family -> strength -> change (framing in percent of the picture). "none" is the reference: the
# unchanged faces. Strengths become MLflow metric names: letters, digits, spaces, - and . only.
CHANGES: dict[str, dict[str, Change]] = {
    "none": {"-": lambda pixels: pixels},
    "exposure": {"x0.6": exposure(0.6), "x0.8": exposure(0.8), "x1.2": exposure(1.2), "x1.4": exposure(1.4)},
    "contrast": {"x0.6": contrast(0.6), "x1.4": contrast(1.4)},
    "framing": {"looser 10": looser(0.10), "looser 20": looser(0.20), "tighter 10": tighter(0.10),
                "shifted 10": shifted(0.10), "shifted -10": shifted(-0.10)},
    "rotation": {"-15 deg": rotation(-15), "-5 deg": rotation(-5), "5 deg": rotation(5), "15 deg": rotation(15)},
    "mirror": {"left-right": mirror()},
    "scale": {"x0.5": scale(0.5), "x2": scale(2.0)},
    "blur": {"radius 1": blur(1.0), "radius 2": blur(2.0)},
    "jpeg": {"quality 50": jpeg(50), "quality 30": jpeg(30)},
}


def case_name(family: str, strength: str) -> str:
    """A flat key for a metrics file: 'exposure_x0.6', 'framing_looser_10'."""
    return family if strength == "-" else f"{family}_{strength.replace(' ', '_')}"


def acceptance_rates(changed: np.ndarray, originals: np.ndarray, people: np.ndarray,
                     threshold: float, rows: int = 256) -> tuple[float, float]:
    """Share of (changed face i, original face j) pairs called the same person (distance <= threshold):
    over the same person's other photos (j != i), and over every other person's photos.

    `rows` changed faces at a time (each distance on its own, so the counts do not depend on it):
    2,000 faces of 64 numbers would otherwise take a 1 GB difference array."""
    counts = np.zeros(4, dtype=np.int64)  # same pairs, of them accepted, different pairs, of them accepted
    for start in range(0, len(changed), rows):
        block = slice(start, start + rows)
        distances = np.linalg.norm(changed[block, None, :] - originals[None, :, :], axis=2)
        same = people[block, None] == people[None, :]
        other_photo = np.arange(start, start + len(distances))[:, None] != np.arange(len(people))[None, :]
        accepted = distances <= threshold
        counts += [np.sum(same & other_photo), np.sum(accepted & same & other_photo),
                   np.sum(~same), np.sum(accepted & ~same)]
    return float(counts[1] / counts[0]), float(counts[3] / counts[2])


def measure(embed: Callable[[list[np.ndarray]], np.ndarray], pixels: list[np.ndarray], people: list[str],
            threshold: float) -> list[dict[str, Any]]:
    """Same- and different-person acceptance of every change in CHANGES, one row per (family, strength)."""
    people_array = np.asarray(people)
    originals = embed(pixels)
    rows = []
    for family, strengths in CHANGES.items():
        for strength, change in strengths.items():
            same, different = acceptance_rates(embed([change(p) for p in pixels]), originals, people_array,
                                               threshold)
            rows.append({"case": case_name(family, strength), "family": family, "strength": strength,
                         "same_person_acceptance": same,
                         "different_person_acceptance": different})
    return rows


def robustness_metrics(rows: list[dict[str, Any]]) -> dict[str, float]:
    """The metrics file, two numbers short enough for `dvc metrics show`: the worst same-person
    acceptance over every change (`worst_same`) and the worst different-person acceptance
    (`worst_diff`). Each change's rates are in the table (a DVC plot)."""
    return {
        "worst_same": min(r["same_person_acceptance"] for r in rows),
        "worst_diff": max(r["different_person_acceptance"] for r in rows),
    }


def evaluate_robustness(
    model: EmbeddingNet,
    checkpoint: dict[str, Any],
    threshold: float,
    faces_dir: str | os.PathLike,
    test_pairs_path: str | os.PathLike,
    outputs: dict[str, str | os.PathLike],
    run: Run = NULL_RUN,
) -> dict[str, Any]:
    """The held-out faces (those the sample stage's test pairs name) under every change, at the `threshold`
    the evaluate stage calibrated (`facesim.pipeline.evaluate.evaluate_stage` runs it after `evaluate_model`), with
    the trained network and the rest of its checkpoint (`load_checkpoint`).

    outputs: "metrics" (JSON, a DVC metric), "table" (CSV: family, strength, both acceptance rates).
    """
    preprocess = Preprocess(**checkpoint["preprocess"])
    faces = held_out_faces(load_tables({"pairs_test": test_pairs_path})["pairs_test"])
    pixels = [load_pixels(Path(faces_dir) / f.path) for f in faces]

    def embed(batch: list[np.ndarray]) -> np.ndarray:
        return embed_all(model, prepare_pixels(batch, preprocess)).numpy()

    rows = measure(embed, pixels, [f.subject for f in faces], threshold)
    metrics = robustness_metrics(rows)
    with staged_outputs(outputs["metrics"], outputs["table"]) as (metrics_file, table_file):
        metrics_file.write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
        pd.DataFrame(rows).to_csv(table_file, index=False, lineterminator="\n", float_format="%.6g")
        # the threshold is the evaluate stage's, logged with its metrics
        run.log_metrics({**metrics, **{f"same.{r['case']}": r["same_person_acceptance"] for r in rows}})
        run.log_artifact(table_file, "robustness")
    return metrics

