"""facesim.pipeline.robustness: each photo change by hand, acceptance rates by hand, the stage end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from helpers import tiny_train_params, train_samples, write_tiny_inputs
from facesim.core.checkpoint import load_checkpoint
from facesim.pipeline.robustness import (
    CHANGES,
    acceptance_rates,
    case_name,
    contrast,
    evaluate_robustness,
    exposure,
    jpeg,
    looser,
    measure,
    mirror,
    robustness_metrics,
    rotation,
    scale,
    shifted,
    tighter,
)
from facesim.pipeline.train import train_and_save

pytestmark = pytest.mark.usefixtures("torch_global_state")

PIXELS = np.array([[10, 20, 30, 40], [50, 60, 70, 80], [90, 100, 110, 120]], dtype=np.uint8)


def test_exposure_and_contrast_by_hand():
    assert exposure(0.5)(PIXELS)[0].tolist() == [5, 10, 15, 20]
    assert exposure(3.0)(PIXELS)[2].tolist() == [255, 255, 255, 255]  # clipped, not wrapped
    # mean 65: 10 -> 65 + (10 - 65) * 2 = -45 -> 0; 120 -> 175
    stretched = contrast(2.0)(PIXELS)
    assert stretched[0, 0] == 0 and stretched[2, 3] == 175 and stretched.dtype == np.uint8


def test_framing_changes_by_hand():
    pixels = np.arange(100, dtype=np.uint8).reshape(10, 10)
    framed = looser(0.2)(pixels)
    assert framed.shape == (14, 14) and np.array_equal(framed[2:12, 2:12], pixels) and framed[0].max() == 0
    assert np.array_equal(tighter(0.1)(pixels), pixels[1:9, 1:9])
    assert np.array_equal(shifted(0.2)(pixels), pixels[:8, :8])
    assert np.array_equal(shifted(-0.2)(pixels), pixels[2:, 2:])


def test_geometric_and_codec_changes():
    assert np.array_equal(mirror()(PIXELS), PIXELS[:, ::-1])
    assert scale(2.0)(PIXELS).shape == (6, 8) and scale(0.5)(PIXELS).shape == (2, 2)
    assert np.array_equal(rotation(0)(PIXELS), PIXELS)
    turned = rotation(15)(np.random.default_rng(0).integers(0, 256, (40, 30), dtype=np.uint8))
    assert turned.shape == (40, 30)
    smooth = np.tile(np.linspace(0, 255, 32).astype(np.uint8), (32, 1))
    assert np.abs(jpeg(30)(smooth).astype(int) - smooth).mean() < 8


def test_every_change_keeps_8_bit_grey():
    face = np.random.default_rng(1).integers(0, 256, (112, 92), dtype=np.uint8)
    for family, strengths in CHANGES.items():
        for strength, change in strengths.items():
            out = change(face)
            assert out.dtype == np.uint8 and out.ndim == 2 and min(out.shape) > 10, (family, strength)


def test_acceptance_rates_by_hand():
    # people A A B; embeddings on a line at 0, 1, 5; changed copies at 0.5, 3, 5
    originals = np.array([[0.0], [1.0], [5.0]])
    changed = np.array([[0.5], [3.0], [5.0]])
    people = np.array(["A", "A", "B"])
    # same-person pairs (changed i, original j), j != i: (0,1) 0.5, (1,0) 3.0: at 2, one of two accepted
    # different: (0,2) 4.5, (1,2) 2, (2,0) 5, (2,1) 4: at 2, one of four accepted (2 <= 2)
    same, different = acceptance_rates(changed, originals, people, threshold=2.0)
    assert same == pytest.approx(0.5) and different == pytest.approx(0.25)
    assert acceptance_rates(changed, originals, people, threshold=2.0, rows=1) == (same, different)


def test_acceptance_rates_do_not_depend_on_the_block_size():
    rng = np.random.default_rng(2)
    originals = rng.normal(size=(23, 4)).astype(np.float32)
    changed = originals + rng.normal(scale=0.5, size=originals.shape).astype(np.float32)
    people = np.repeat(np.arange(6), 4)[:23]
    whole = acceptance_rates(changed, originals, people, 2.5, rows=23)
    assert 0 < whole[0] < 1 and 0 < whole[1] < 1
    assert acceptance_rates(changed, originals, people, 2.5, rows=5) == whole


def test_measure_with_an_identity_embedding_accepts_all_same_and_no_different():
    # an "embedding" that knows the person from the picture's mean level (faces of a person share a level band)
    people = ["a"] * 3 + ["b"] * 3
    pixels = [np.full((20, 16), 40, dtype=np.uint8)] * 3 + [np.full((20, 16), 200, dtype=np.uint8)] * 3

    def embed(batch):
        return np.array([[0.0] if p.mean() < 120 or p.max() < 120 else [10.0] for p in batch])

    rows = measure(embed, pixels, people, threshold=1.0)
    assert [(r["family"], r["strength"]) for r in rows] == [(f, s) for f, ss in CHANGES.items() for s in ss]
    none = rows[0]
    assert none["case"] == "none" and none["same_person_acceptance"] == 1.0
    assert none["different_person_acceptance"] == 0.0
    metrics = robustness_metrics(rows)
    assert metrics == {"worst_same": min(r["same_person_acceptance"] for r in rows),
                       "worst_diff": max(r["different_person_acceptance"] for r in rows)}


def test_case_names_are_flat_keys():
    assert case_name("none", "-") == "none"
    assert case_name("framing", "looser 10") == "framing_looser_10"


def test_evaluate_robustness_end_to_end(tmp_path: Path):
    faces_dir, outputs = write_tiny_inputs(tmp_path)
    params = tiny_train_params(seed=5, epochs=1, batch_size=32, normalization="per_image", trim_borders=True)
    checkpoint = tmp_path / "model.pt"
    train_and_save("contrastive", params, faces_dir, train_samples(outputs), checkpoint, tmp_path / "history.csv")
    paths = {"metrics": tmp_path / "out" / "robustness.json", "table": tmp_path / "out" / "robustness.csv"}
    metrics = evaluate_robustness(*load_checkpoint(checkpoint), 0.5, faces_dir, outputs["pairs"]["test"], paths)
    assert json.loads(paths["metrics"].read_text()) == metrics
    table = pd.read_csv(paths["table"], keep_default_na=False)
    assert metrics == pytest.approx({"worst_same": table["same_person_acceptance"].min(),
                                     "worst_diff": table["different_person_acceptance"].max()}, abs=1e-6)
    assert list(table.columns) == ["case", "family", "strength", "same_person_acceptance",
                                   "different_person_acceptance"]
    assert len(table) == sum(len(s) for s in CHANGES.values())
    assert table["same_person_acceptance"].between(0, 1).all()
    # per-image normalisation makes a uniform exposure change nearly invisible to the model
    rates = dict(zip(table["case"], table["same_person_acceptance"]))
    assert abs(rates["exposure_x0.8"] - rates["none"]) <= 0.1


def test_case_names_are_valid_mlflow_metric_names():
    # MLflow: "Names may only contain alphanumerics, underscores, dashes, periods, spaces, colon and slashes"
    import re

    for family, strengths in CHANGES.items():
        for strength in strengths:
            assert re.fullmatch(r"[A-Za-z0-9_\-. :/]+", f"same_person_acceptance.{case_name(family, strength)}")
