"""facesim.core.inference: a checkpoint as a ready model, pictures of any kind as the grey faces it takes."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import TESTING, face_image_bytes, needs_orl, write_tiny_model
from helpers import face_pixels as synthetic_pixels
from facesim.core.images import ImageError
from facesim.core.inference import FaceModel, face_pixels, file_digest, from_checkpoint
from facesim.core.model_files import ModelError


def synthetic(person: int, image: int) -> Image.Image:
    return Image.fromarray(synthetic_pixels(person, image))


# ---- face_pixels ------------------------------------------------------------------------------------------


def test_face_pixels_of_a_file_its_bytes_and_a_pillow_image_agree(tmp_path: Path):
    path = tmp_path / "face.png"
    path.write_bytes(face_image_bytes(5, 1, fmt="PNG"))
    expected = synthetic_pixels(5, 1)
    for picture in (path, str(path), path.read_bytes(), Image.open(path), Image.open(path).convert("RGB")):
        pixels = face_pixels(picture, "face.png", detect=False)
        assert pixels.dtype == np.uint8 and np.array_equal(pixels, expected), type(picture)


def test_face_pixels_frames_the_face_unless_told_not_to(monkeypatch):
    framed = []

    def frame(pixels: np.ndarray, name: str) -> np.ndarray:
        framed.append(name)
        return pixels[1:-1, 1:-1]

    monkeypatch.setattr("facesim.core.inference.framed_face", frame)
    picture = synthetic(5, 1)
    assert face_pixels(picture, "row 0, image1").shape == (10, 8) and framed == ["row 0, image1"]
    assert face_pixels(picture, "row 0, image1", detect=False).shape == (12, 10) and len(framed) == 1


def test_face_pixels_errors_name_the_picture(tmp_path: Path):
    with pytest.raises(ImageError, match="row 2, image2: not a readable image"):
        face_pixels(b"no image", "row 2, image2")
    blank = io.BytesIO()
    Image.new("L", (300, 200), 90).save(blank, format="PNG")
    with pytest.raises(ImageError, match="blank: no face found"):
        face_pixels(blank.getvalue(), "blank")


@needs_orl
def test_face_pixels_of_an_orl_face_is_the_face_itself():
    orl = TESTING / "s5" / "1.pgm"
    assert np.array_equal(face_pixels(orl, "s5/1.pgm"), np.asarray(Image.open(orl)))


# ---- from_checkpoint and FaceModel ------------------------------------------------------------------------


def test_from_checkpoint_takes_the_threshold_given_else_the_metrics_files(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    checkpoint = write_tiny_model(tmp_path / "tiny.pt", threshold=0.25)
    model = from_checkpoint(checkpoint, tmp_path / "tiny.json")
    assert isinstance(model, FaceModel) and not model.encoder.network.training
    assert (model.name, model.checkpoint) == (str(checkpoint), str(checkpoint))
    assert model.threshold == 0.25 and model.threshold_source == "calibrated on people unseen in training, tiny.json"
    assert model.digest == file_digest(checkpoint) == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert (model.preprocess.height, model.preprocess.width) == (16, 16)
    given = from_checkpoint(checkpoint, tmp_path / "tiny.json", threshold=2, name="mine")
    assert (given.threshold, given.threshold_source, given.name) == (2.0, "given", "mine")
    assert type(given.threshold) is float


def test_a_model_without_a_threshold_says_why_when_one_is_needed(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    checkpoint = write_tiny_model(tmp_path / "tiny.pt", threshold=None)
    absent = from_checkpoint(checkpoint, tmp_path / "tiny.json")
    assert absent.threshold is None and absent.threshold_source == "tiny.json not found"
    with pytest.raises(ModelError, match=r"tiny\.pt: no distance threshold \(tiny\.json not found\); pass one with "
                                         r"--threshold"):
        absent.require_threshold()
    assert from_checkpoint(checkpoint).threshold_source == "no metrics file"
    absent.missing_threshold = "reports/metrics/tiny.json: missing; dvc checkout it"
    with pytest.raises(ModelError, match="^reports/metrics/tiny.json: missing; dvc checkout it$"):
        absent.require_threshold()
    (tmp_path / "tiny.json").write_text(json.dumps({"threshold": 0.5}))
    assert from_checkpoint(checkpoint, tmp_path / "tiny.json").require_threshold() == 0.5


def test_distances_are_those_of_the_embeddings_pair_by_pair(tmp_path: Path):
    model = from_checkpoint(write_tiny_model(tmp_path / "tiny.pt"))
    first = [synthetic(5, 1), synthetic(5, 2), synthetic(6, 1)]
    second = [synthetic(5, 1), synthetic(6, 2), synthetic(7, 1)]
    distances = model.distances(first, second)
    embeddings = model.embed(first + second)
    assert embeddings.shape == (6, 8) and embeddings.dtype == np.float32
    assert distances.shape == (3,) and distances[0] == pytest.approx(0.0, abs=1e-6)
    assert distances == pytest.approx(np.linalg.norm(embeddings[:3] - embeddings[3:], axis=1), abs=1e-6)
    # each pair on its own: the same distance as in the batch
    assert model.distances([first[2]], [second[2]])[0] == pytest.approx(distances[2], abs=1e-6)
    with pytest.raises(ValueError, match="need pairs: 2 first images but 1 second images"):
        model.distances(first[:2], second[:1])
