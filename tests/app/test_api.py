"""facesim.app.api (`from facesim import api`): verify, search and embed, on the pipeline's real models and
on a tiny one.

The real-model tests use `models/compact-*.pt`, `reports/metrics/compact-*.json` (and, for the default
'best', whichever model the committed `reports/cv` ranks first) and `data/raw/faces/testing` of this
repository and are skipped where the pipeline has not run. The rest build a tiny untrained
network and synthetic faces (helpers.py), which is enough for loading, caching and every error path.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from helpers import (
    MODELS,
    REPO,
    TESTING,
    TINY_CV_EER,
    TINY_THRESHOLD,
    export_tiny_models,
    face,
    face_image_bytes,
    needs_orl,
    real,
    write_cv_summary,
    write_dvc_lock,
    write_tiny_model,
)
import facesim.app.api
from facesim import api
from facesim.app.api import best_model  # not in api.__all__, so not in `from facesim import api`
from facesim.core.images import ImageError
from facesim.core.inference import TorchNetwork, file_digest
from facesim.core.onnx_model import OnnxNetwork


def test_facesim_api_is_the_app_layers_api():
    """`from facesim import api` (the documented import) names the very objects of facesim.app.api."""
    assert api.__all__ == facesim.app.api.__all__
    for name in api.__all__:
        assert getattr(api, name) is getattr(facesim.app.api, name), name


# ---- the real models on real test faces ------------------------------------------------------------


@real
@pytest.mark.parametrize("model", MODELS)
def test_verify_same_person(model):
    threshold = json.loads((REPO / "reports" / "metrics" / f"{model}.json").read_text())["threshold"]
    result = api.verify(TESTING / "s5" / "1.pgm", TESTING / "s5" / "2.pgm", model, root=REPO)
    assert result.same_person is True
    assert result.threshold == threshold  # the one the evaluate stage calibrated, not a constant
    assert result.distance < threshold
    assert result.margin == pytest.approx(threshold - result.distance)
    assert result.relative_margin == pytest.approx(result.margin / threshold)
    assert result.model == model and "calibrated on people unseen in training" in result.threshold_source


@real
@pytest.mark.parametrize("model", MODELS)
def test_verify_different_people(model):
    result = api.verify(TESTING / "s5" / "1.pgm", TESTING / "s6" / "1.pgm", model, root=REPO)
    assert result.same_person is False
    assert result.distance > result.threshold
    assert result.margin == pytest.approx(result.distance - result.threshold)


@real
def test_verify_takes_any_format_size_and_colour(tmp_path: Path):
    original = Image.open(TESTING / "s5" / "2.pgm")
    grey = np.asarray(original)
    # the same pixels as RGB PNG: identical once made grey, so an identical distance
    Image.fromarray(np.stack([grey] * 3, axis=2)).save(tmp_path / "colour.png")
    # a colour JPEG at twice the size: not identical, still the same person
    tinted = np.stack([grey, grey * 0.9, grey * 0.8], axis=2).astype(np.uint8)
    Image.fromarray(tinted).resize((184, 224)).save(tmp_path / "big.jpg", quality=95)
    model = api.load_model("compact-contrastive", root=REPO)
    baseline = api.verify(TESTING / "s5" / "1.pgm", TESTING / "s5" / "2.pgm", model)
    png = api.verify(TESTING / "s5" / "1.pgm", tmp_path / "colour.png", model)
    jpeg = api.verify(TESTING / "s5" / "1.pgm", tmp_path / "big.jpg", model)
    assert png.distance == pytest.approx(baseline.distance, abs=1e-6)
    assert jpeg.same_person and abs(jpeg.distance - baseline.distance) < 0.5 * baseline.threshold
    # and a Pillow image in memory, for notebooks and services
    assert api.verify(original, TESTING / "s5" / "1.pgm", model).distance == pytest.approx(baseline.distance, abs=1e-6)


@real
def test_search_finds_the_same_person_and_leaves_the_query_out():
    best, eer = best_model(REPO)  # the default: the lowest committed cross-validation EER
    result = api.search(TESTING / "s5" / "1.pgm", k=5, root=REPO, cache=False)
    assert result.model == f"{best} (the most accurate by cross-validation EER, {eer:.2%})"
    assert result.query_person == "s5"
    assert result.gallery_size == 30 and result.query_in_gallery
    assert [m.person for m in result.matches] == ["s5"] * 5
    assert all(not m.path.endswith("s5/1.pgm") for m in result.matches)
    distances = [m.distance for m in result.matches]
    assert distances == sorted(distances) and [m.rank for m in result.matches] == [1, 2, 3, 4, 5]
    assert all(m.same_person for m in result.matches)
    # the same distances as verify's, face by face
    first = result.matches[0]
    assert api.verify(TESTING / "s5" / "1.pgm", Path(first.path).resolve(), best,
                      root=REPO).distance == pytest.approx(first.distance, abs=1e-5)


@real
@pytest.mark.parametrize("model", MODELS)
def test_embed_matches_the_evaluate_stage(model):
    pipeline = REPO / "data" / "eval" / model / "embeddings.csv"
    if not pipeline.exists():
        pytest.skip("needs data/eval (dvc repro)")
    expected = pd.read_csv(pipeline)
    if "person" not in expected.columns:  # the column was `subject` before the refactor into layers
        pytest.skip(f"{pipeline.relative_to(REPO)} predates its `person` column: dvc repro evaluate")
    result = api.embed([TESTING], model, root=REPO, cache=False)
    got = result.to_frame()
    got["path"] = [str(Path(p).resolve().relative_to(TESTING.parent)) for p in result.paths]
    got = got.set_index("path").loc[expected["path"]]
    assert (got["person"].to_numpy() == expected["person"].to_numpy()).all()
    columns = [c for c in expected.columns if c.startswith("e")]
    # prepared exactly as in training: the same numbers the evaluate stage wrote (to 7 digits)
    assert np.allclose(got[columns].to_numpy(), expected[columns].to_numpy(), rtol=1e-4, atol=1e-5)


# ---- models by name, path and threshold -----------------------------------------------------------------


def test_load_model_by_name_reads_the_metrics_threshold(tiny_repo: Path):
    model = api.load_model("compact-contrastive", root=tiny_repo)
    assert model.threshold == TINY_THRESHOLD and model.name == "compact-contrastive"
    assert model.digest == file_digest(tiny_repo / "models" / "compact-contrastive.pt")
    assert api.load_model("compact-contrastive", root=tiny_repo, threshold=0.7).threshold == 0.7
    assert api.load_model(model, threshold=0.3).threshold == 0.3 and model.threshold == TINY_THRESHOLD


@pytest.mark.parametrize("legacy", ["contrastive", "triplet"])
def test_the_short_names_are_the_compact_models(tiny_repo: Path, legacy: str):
    """'contrastive' and 'triplet', the names before there were backbones, load models/compact-<loss>.pt and
    the threshold of reports/metrics/compact-<loss>.json."""
    name = f"compact-{legacy}"
    (tiny_repo / "reports" / "metrics" / f"{name}.json").write_text(json.dumps({"threshold": 0.375}))
    model = api.load_model(legacy, root=tiny_repo)
    assert model.name == name and model.threshold == 0.375 and f"{name}.json" in model.threshold_source
    digests = {other: file_digest(tiny_repo / "models" / f"{other}.pt") for other in MODELS}
    assert len(set(digests.values())) == 2 and model.digest == digests[name]  # that model, not the other


def test_a_model_of_another_backbone_is_named_backbone_dash_loss(tiny_repo: Path):
    write_tiny_model(tiny_repo / "models" / "dlib-triplet.pt", threshold=None, seed=3)
    (tiny_repo / "reports" / "metrics" / "dlib-triplet.json").write_text(json.dumps({"threshold": 0.625}))
    model = api.load_model("dlib-triplet", root=tiny_repo)
    assert model.name == "dlib-triplet" and model.threshold == 0.625
    assert model.digest == file_digest(tiny_repo / "models" / "dlib-triplet.pt")
    # a loss the pipeline does not train is not a model name, whatever the backbone
    with pytest.raises(api.ModelError, match="compact-arcface: not a model name"):
        api.load_model("compact-arcface", root=tiny_repo)


# ---- 'best': the lowest cross-validation EER among the trained models ----------------------------------------


def best_name(name: str, eer: str) -> str:
    """The name a model loaded as 'best' goes by: its own and its CV EER, as a percentage to two places."""
    return f"{name} (the most accurate by cross-validation EER, {eer})"


def test_best_is_the_trained_model_with_the_lowest_cv_eer_and_says_so(tiny_repo: Path):
    # TINY_CV_EER: compact-contrastive 12.5%, compact-triplet 6.25%
    assert best_model(tiny_repo) == ("compact-triplet", TINY_CV_EER["compact-triplet"])
    for model in (api.load_model("best", root=tiny_repo), api.load_model(root=tiny_repo)):  # 'best' is the default
        assert model.name == best_name("compact-triplet", "6.25%")
        assert model.digest == file_digest(tiny_repo / "models" / "compact-triplet.pt")
        assert model.threshold == TINY_THRESHOLD and "compact-triplet.json" in model.threshold_source
    assert api.load_model(root=tiny_repo, threshold=0.2).threshold == 0.2
    # verify, search and embed take it by default, and say which it is
    a, b = face(tiny_repo, 5, 1), face(tiny_repo, 5, 2)
    assert api.verify(a, b, root=tiny_repo).model == best_name("compact-triplet", "6.25%")
    assert api.search(a, root=tiny_repo, k=1, cache=False).model == best_name("compact-triplet", "6.25%")
    assert api.embed([a], root=tiny_repo, cache=False).model == best_name("compact-triplet", "6.25%")
    # the EER decides, not the name: contrastive's falls below triplet's
    write_cv_summary(tiny_repo, "compact-contrastive", 0.03)
    assert best_model(tiny_repo) == ("compact-contrastive", 0.03)
    best = api.load_model(root=tiny_repo)
    assert best.name == best_name("compact-contrastive", "3.00%")
    assert best.digest == file_digest(tiny_repo / "models" / "compact-contrastive.pt")


def test_best_ranks_every_backbone_but_only_models_that_were_trained(tiny_repo: Path):
    # a summary of a model that is not in models/ is not a candidate, however low its EER
    write_cv_summary(tiny_repo, "dlib-triplet", 0.001)
    assert best_model(tiny_repo)[0] == "compact-triplet"
    # once trained it wins, on another backbone
    write_tiny_model(tiny_repo / "models" / "dlib-triplet.pt", threshold=None, seed=3)
    (tiny_repo / "reports" / "metrics" / "dlib-triplet.json").write_text(json.dumps({"threshold": 0.625}))
    assert best_model(tiny_repo) == ("dlib-triplet", 0.001)
    model = api.load_model(root=tiny_repo)
    assert model.name == best_name("dlib-triplet", "0.10%") and model.threshold == 0.625
    assert model.digest == file_digest(tiny_repo / "models" / "dlib-triplet.pt")


@pytest.mark.parametrize("summary", [None, "{not json", '{"auc": 0.99}', '{"eer": null}', '{"eer": "low"}'],
                         ids=["missing", "not-json", "no-eer", "null-eer", "text-eer"])
def test_best_leaves_out_a_model_without_a_cv_summary(tiny_repo: Path, summary: str | None):
    triplet = tiny_repo / "reports" / "cv" / "compact" / "triplet.json"  # the one that would win
    if summary is None:
        triplet.unlink()
    else:
        triplet.write_text(summary)
    assert best_model(tiny_repo) == ("compact-contrastive", TINY_CV_EER["compact-contrastive"])
    assert api.load_model(root=tiny_repo).name == best_name("compact-contrastive", "12.50%")


def test_best_leaves_out_checkpoints_that_are_not_pipeline_models(tiny_repo: Path):
    # models/<name>.pt that is not <backbone>-<loss>: not ranked, even with a summary where it would be looked for
    for stem in ("triplet", "compact-arcface", "my-model"):
        write_tiny_model(tiny_repo / "models" / f"{stem}.pt", threshold=None)
    write_cv_summary(tiny_repo, "compact-arcface", 0.0)
    write_cv_summary(tiny_repo, "my-model", 0.0)
    assert best_model(tiny_repo) == ("compact-triplet", TINY_CV_EER["compact-triplet"])


def test_with_no_model_to_rank_best_says_what_to_run(tiny_repo: Path, monkeypatch):
    monkeypatch.chdir(tiny_repo)
    shutil.rmtree(tiny_repo / "reports" / "cv")
    expected = ("^\\.: no trained model with a cross-validation summary \\(models/<backbone>-<loss>\\.onnx or \\.pt and "
                "reports/cv/<backbone>/<loss>\\.json\\) to pick the most accurate from; run `dvc repro` \\(and "
                "`dvc repro cv/dvc\\.yaml`\\), or name one with --model, e\\.g\\. --model compact-triplet$")
    with pytest.raises(api.ModelError, match=expected):
        best_model()
    with pytest.raises(api.ModelError, match=expected):
        api.load_model()
    a = face(tiny_repo, 5, 1)
    for use in (lambda: api.verify(a, a), lambda: api.search(a, k=1), lambda: api.embed([a])):
        with pytest.raises(api.ModelError, match="no trained model with a cross-validation summary"):
            use()
    # the summaries without the models they rank: the same
    for name in ("compact-contrastive", "compact-triplet"):
        write_cv_summary(tiny_repo, name, 0.1)
        (tiny_repo / "models" / f"{name}.pt").unlink()
    with pytest.raises(api.ModelError, match=expected):
        best_model()
    # a model named outright needs no summary
    shutil.rmtree(tiny_repo / "reports" / "cv")
    write_tiny_model(tiny_repo / "models" / "compact-triplet.pt", threshold=None)
    assert api.load_model("compact-triplet").name == "compact-triplet"


def test_no_repository_root_is_an_error(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for spec in ("compact-contrastive", "best"):
        with pytest.raises(FileNotFoundError, match="no dvc.yaml .* pass --root"):
            api.load_model(spec)


def test_a_path_model_takes_the_threshold_beside_it_or_given(tmp_path: Path, tiny_repo: Path):
    beside = write_tiny_model(tmp_path / "mine.pt", threshold=0.25)
    assert api.load_model(str(beside)).threshold == 0.25
    bare = write_tiny_model(tmp_path / "bare.pt", threshold=None)
    a, b = face(tiny_repo, 5, 1), face(tiny_repo, 5, 2)
    with pytest.raises(api.ModelError, match="no distance threshold.*--threshold"):
        api.verify(a, b, bare)
    result = api.verify(a, b, bare, threshold=0.5)
    assert result.threshold == 0.5 and result.same_person == (result.distance <= 0.5)
    # search and embed need no threshold
    found = api.search(a, tiny_repo / "data" / "raw" / "faces" / "testing", k=2, model=bare, cache=False)
    assert found.threshold is None and all(m.same_person is None for m in found.matches)


def test_missing_checkpoint_names_it(tiny_repo: Path):
    (tiny_repo / "models" / "compact-triplet.pt").unlink()
    for spec in ("compact-triplet", "triplet"):
        with pytest.raises(FileNotFoundError, match=r"compact-triplet\.pt: checkpoint not found"):
            api.load_model(spec, root=tiny_repo)
    with pytest.raises(FileNotFoundError, match=r"nothing\.pt: checkpoint not found; check the path, or name a "
                                                r"model the pipeline trained \(best, or <backbone>-<loss>"):
        api.load_model(str(tiny_repo / "nothing.pt"))


# ---- ONNX models: onnxruntime, without torch or MLflow ---------------------------------------------------


def test_a_name_runs_the_exported_onnx_model_when_there_is_one(tiny_repo: Path):
    torch_model = api.load_model("compact-contrastive", root=tiny_repo)
    assert isinstance(torch_model.encoder, TorchNetwork)
    export_tiny_models(tiny_repo)
    model = api.load_model("compact-contrastive", root=tiny_repo)
    assert isinstance(model.encoder, OnnxNetwork) and model.checkpoint.endswith("compact-contrastive.onnx")
    assert model.name == "compact-contrastive" and model.threshold == TINY_THRESHOLD
    source = (tiny_repo / "reports" / "metrics" / "compact-contrastive.json").as_posix()
    assert model.threshold_source == f"calibrated on people unseen in training, {source}"
    assert model.digest == file_digest(tiny_repo / "models" / "compact-contrastive.onnx")  # its own cache key
    faces = [Image.open(face(tiny_repo, person, 1)) for person in (5, 6, 7)]
    assert np.abs(model.embed(faces) - torch_model.embed(faces)).max() <= 1e-4
    # 'best' too; a .pt or .onnx named outright runs on what it is
    assert isinstance(api.load_model(root=tiny_repo).encoder, OnnxNetwork)
    assert isinstance(api.load_model(str(tiny_repo / "models" / "compact-triplet.pt")).encoder, TorchNetwork)
    given = api.load_model(str(tiny_repo / "models" / "compact-triplet.onnx"), threshold=0.7)
    assert isinstance(given.encoder, OnnxNetwork) and (given.threshold, given.threshold_source) == (0.7, "given")
    a, b = face(tiny_repo, 5, 1), face(tiny_repo, 5, 2)
    result = api.verify(a, b, "compact-contrastive", root=tiny_repo)
    assert result.distance == pytest.approx(api.verify(a, b, torch_model).distance, abs=1e-4)


def test_best_ranks_exported_models_without_their_checkpoints(tiny_repo: Path):
    export_tiny_models(tiny_repo)
    for name in MODELS:
        (tiny_repo / "models" / f"{name}.pt").unlink()
    assert best_model(tiny_repo) == ("compact-triplet", TINY_CV_EER["compact-triplet"])


def test_the_onnx_path_imports_neither_torch_nor_mlflow(tiny_repo: Path):
    """`facesim verify`, `search` and `embed` and the Python API, in a fresh interpreter, on ONNX models."""
    export_tiny_models(tiny_repo)
    a, b, gallery = face(tiny_repo, 5, 1), face(tiny_repo, 6, 1), face(tiny_repo, 5, 1).parent.parent
    script = f"""
import json, sys
from facesim import api
from facesim.app.cli import main
root = {str(tiny_repo)!r}
result = api.verify({str(a)!r}, {str(b)!r}, "compact-triplet", root=root, detect=False)
codes = [main(["verify", {str(a)!r}, {str(b)!r}, "--root", root, "--no-detect"]),
         main(["search", {str(a)!r}, "--gallery", {str(gallery)!r}, "--root", root, "--no-detect", "-k", "2"]),
         main(["embed", {str(gallery)!r}, "--out", {str(tiny_repo / "e.npy")!r}, "--root", root, "--no-detect"])]
loaded = sorted({{name.split(".")[0] for name in sys.modules}} & {{"torch", "mlflow", "torchvision", "onnxruntime"}})
print(json.dumps({{"codes": codes, "model": result.model, "loaded": loaded}}))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tiny_repo, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.splitlines()[-1])
    assert report == {"codes": [0, 0, 0], "model": "compact-triplet", "loaded": ["onnxruntime"]}
    assert done.stderr == ""


def test_unknown_model_and_broken_metrics_are_errors(tiny_repo: Path):
    with pytest.raises(api.ModelError, match=r"resnet: not a model name \(best, <backbone>-<loss> such as "
                                             r"dlib-triplet, contrastive, triplet\), model file \(\.onnx, \.pt\) or MLflow "
                                             r"model URI; pass one of those, e\.g\. --model compact-triplet"):
        api.load_model("resnet", root=tiny_repo)
    metrics = tiny_repo / "reports" / "metrics" / "compact-contrastive.json"
    metrics.write_text("{not json")
    with pytest.raises(api.ModelError, match=r"compact-contrastive\.json: not an evaluate metrics file"):
        api.load_model("compact-contrastive", root=tiny_repo)
    metrics.write_text('{"threshold": "high"}')
    with pytest.raises(api.ModelError, match="finite number"):
        api.load_model("compact-contrastive", root=tiny_repo)


def test_a_model_without_its_metrics_file_says_so_when_verifying(tiny_repo: Path):
    (tiny_repo / "reports" / "metrics" / "compact-contrastive.json").unlink()
    model = api.load_model("compact-contrastive", root=tiny_repo)
    assert model.threshold is None
    with pytest.raises(api.ModelError, match=r"compact-contrastive\.json: metrics file not found, so "
                                             r"compact-contrastive has no distance threshold; run `dvc repro` .*to "
                                             r"evaluate it, or pass one with --threshold"):
        api.verify(face(tiny_repo, 5, 1), face(tiny_repo, 5, 2), model)
    assert api.verify(face(tiny_repo, 5, 1), face(tiny_repo, 5, 2), model, threshold=0.5).threshold == 0.5


def test_the_best_model_without_its_metrics_file_says_so_too(tiny_repo: Path):
    (tiny_repo / "reports" / "metrics" / "compact-triplet.json").unlink()
    model = api.load_model(root=tiny_repo)
    assert model.name == best_name("compact-triplet", "6.25%") and model.threshold is None
    with pytest.raises(api.ModelError, match=r"compact-triplet\.json: metrics file not found, so compact-triplet "
                                             r"has no distance threshold"):
        api.verify(face(tiny_repo, 5, 1), face(tiny_repo, 5, 2), root=tiny_repo)


def test_a_missing_pipeline_output_says_what_dvc_lock_records(tiny_repo: Path, monkeypatch):
    monkeypatch.chdir(tiny_repo)
    (tiny_repo / "models" / "compact-triplet.pt").unlink()
    with pytest.raises(FileNotFoundError, match=r"^models/compact-triplet\.pt: checkpoint not found; run `dvc repro` "
                                                r"to train it$"):
        api.load_model("compact-triplet")
    write_dvc_lock(tiny_repo, {"fetch": ["data/raw/faces"], "train@compact-triplet": ["models/compact-triplet.pt"],
                               "evaluate@compact-contrastive": ["reports/metrics/compact-contrastive.json"]})
    with pytest.raises(FileNotFoundError) as missing:
        api.load_model("compact-triplet")
    assert str(missing.value) == (
        "models/compact-triplet.pt: missing, though dvc.lock records it (stage train@compact-triplet); `dvc "
        "checkout models/compact-triplet.pt` brings it back from the DVC cache (or `dvc pull` from a remote, `dvc "
        "repro` rebuilds it)")
    (tiny_repo / "reports" / "metrics" / "compact-contrastive.json").unlink()
    with pytest.raises(api.ModelError, match=r"^reports/metrics/compact-contrastive\.json: missing, though dvc\.lock "
                                             r"records it \(stage evaluate@compact-contrastive\), so "
                                             r"compact-contrastive has no distance threshold; `dvc checkout "
                                             r"reports/metrics/compact-contrastive\.json` brings it back .*, or pass "
                                             r"one with --threshold"):
        api.verify(face(tiny_repo, 5, 1), face(tiny_repo, 5, 2), "compact-contrastive")
    # a folder output holds the default gallery: check out the folder dvc.lock names
    shutil.rmtree(tiny_repo / "data" / "raw" / "faces" / "testing")
    with pytest.raises(FileNotFoundError, match=r"^data/raw/faces/testing: missing, though dvc\.lock records it "
                                                r"\(stage fetch\); `dvc checkout data/raw/faces` brings it back"):
        api.search(tiny_repo / "data" / "raw" / "faces" / "training" / "s1" / "1.pgm", k=1,
                   model="compact-contrastive")


# ---- images and their errors -----------------------------------------------------------------------------


def test_verify_is_consistent_with_its_threshold(tiny_repo: Path):
    model = api.load_model("compact-contrastive", root=tiny_repo)
    same = api.verify(face(tiny_repo, 5, 1), face(tiny_repo, 5, 1), model)
    assert same.distance == pytest.approx(0.0, abs=1e-6) and same.same_person
    other = api.verify(face(tiny_repo, 5, 1), face(tiny_repo, 6, 1), model)
    assert other.same_person == (other.distance <= TINY_THRESHOLD)
    pair = model.embed([Image.open(face(tiny_repo, 5, 1)), Image.open(face(tiny_repo, 6, 1))])
    assert other.distance == pytest.approx(np.linalg.norm(pair[0] - pair[1]), abs=1e-6)


def test_missing_or_unreadable_images_are_errors_naming_them(tiny_repo: Path, tmp_path: Path):
    good = face(tiny_repo, 5, 1)
    with pytest.raises(ImageError, match=r"nobody\.png: image file not found"):
        api.verify(good, tmp_path / "nobody.png", "compact-contrastive", root=tiny_repo)
    notes = tmp_path / "notes.jpg"
    notes.write_text("not a picture")
    with pytest.raises(ImageError, match=r"notes\.jpg: not a readable image"):
        api.verify(notes, good, "compact-contrastive", root=tiny_repo)
    with pytest.raises(ImageError, match=r"notes\.jpg: not a readable image"):
        api.search(notes, root=tiny_repo)
    with pytest.raises(ImageError, match=r"notes\.jpg: not a readable image"):
        api.embed([good, notes], root=tiny_repo)
    with pytest.raises(ImageError, match=r"gone: image file or folder not found"):
        api.embed([tmp_path / "gone"], root=tiny_repo)


def test_gallery_skips_non_images_with_a_counted_warning(tiny_repo: Path):
    gallery = tiny_repo / "data" / "raw" / "faces" / "testing"
    (gallery / "README.txt").write_text("three people")
    (gallery / "s6" / "broken.pgm").write_bytes(b"P5 not really")
    (gallery / ".hidden.pgm").write_text("hidden files are not looked at")
    with pytest.warns(api.SkippedFilesWarning, match=r"skipped 2 file\(s\).*README\.txt"):
        result = api.search(face(tiny_repo, 5, 1), root=tiny_repo, k=3)
    assert result.gallery_size == 30 and len(result.skipped) == 2
    assert {Path(p).name for p in result.skipped} == {"README.txt", "broken.pgm"}


def test_search_errors(tiny_repo: Path, tmp_path: Path):
    query = face(tiny_repo, 5, 1)
    with pytest.raises(FileNotFoundError, match=r"elsewhere: gallery folder not found"):
        api.search(query, tmp_path / "elsewhere", root=tiny_repo)
    with pytest.raises(ValueError, match=r"k=30: more than the 29 faces of the gallery .*; pass -k 29 or less"):
        api.search(query, root=tiny_repo, k=30)
    for k in (0, -1, 2.5):
        with pytest.raises(ValueError, match="not an integer >= 1; pass e.g. -k 5"):
            api.search(query, root=tiny_repo, k=k)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "list.csv").write_text("a,b\n")
    with pytest.warns(api.SkippedFilesWarning), pytest.raises(ValueError, match="no images to search in"):
        api.search(query, empty, root=tiny_repo)


def test_search_gallery_anywhere_names_people_by_folder(tiny_repo: Path, tmp_path: Path):
    gallery = tmp_path / "people"
    for person, subject in (("alice", 5), ("bob", 6)):
        (gallery / person).mkdir(parents=True)
        for image in (1, 2, 3):
            (gallery / person / f"{image}.png").write_bytes(face_image_bytes(subject, image, fmt="PNG"))
    query = tmp_path / "who.pgm"
    query.write_bytes(face_image_bytes(5, 9))
    result = api.search(query, gallery, k=6, model="compact-triplet", root=tiny_repo)
    assert result.query_person is None and not result.query_in_gallery and result.gallery_size == 6
    assert sorted(m.person for m in result.matches) == ["alice"] * 3 + ["bob"] * 3


def test_search_figure_draws_the_query_and_its_matches(tiny_repo: Path, tmp_path: Path):
    known = api.search(face(tiny_repo, 5, 1), root=tiny_repo, k=3)
    titles = [ax.get_title() for ax in api.search_figure(known).axes]
    assert titles[0] == "query s5" and len(titles) == 4
    assert all(t[0] in "✓✗" and f"d={m.distance:.2f}" in t for t, m in zip(titles[1:], known.matches))
    stranger = tmp_path / "stranger.png"
    stranger.write_bytes(face_image_bytes(2, 1, fmt="PNG"))
    unknown = api.search(stranger, root=tiny_repo, k=2)
    assert unknown.query_person is None
    titles = [ax.get_title() for ax in api.search_figure(unknown).axes]
    assert titles[0] == "query" and all(t[0] not in "✓✗" for t in titles[1:])


# ---- embed ----------------------------------------------------------------------------------------------------


def test_embed_files_and_folders_to_csv_and_npy(tiny_repo: Path, tmp_path: Path):
    single = face(tiny_repo, 7, 3)
    result = api.embed([tiny_repo / "data" / "raw" / "faces" / "testing" / "s5", single], root=tiny_repo)
    assert len(result.paths) == 11 and result.vectors.shape == (11, 8) and result.vectors.dtype == np.float32
    assert result.persons == ["s5"] * 10 + ["s7"]
    assert [Path(p).name for p in result.paths[:3]] == ["1.pgm", "2.pgm", "3.pgm"]  # natural order: 10 last
    assert Path(result.paths[9]).name == "10.pgm"
    table = pd.read_csv(result.save(tmp_path / "out" / "e.csv"))
    assert list(table.columns) == ["path", "person"] + [f"e{i}" for i in range(8)]
    assert np.allclose(table[[f"e{i}" for i in range(8)]].to_numpy(), result.vectors, rtol=1e-6, atol=1e-7)
    assert np.array_equal(np.load(result.save(tmp_path / "e.npy")), result.vectors)
    with pytest.raises(ValueError, match=r"e\.parquet: the output must end in \.csv or \.npy"):
        result.save(tmp_path / "e.parquet")
    # the same vector as the model gives the single image
    model = api.load_model("compact-triplet", root=tiny_repo)  # the default, 'best'
    assert np.allclose(result.vectors[-1], model.embed([Image.open(single)])[0], atol=1e-6)


def test_embed_with_no_images_is_an_error(tiny_repo: Path, tmp_path: Path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("x")
    with pytest.warns(api.SkippedFilesWarning), pytest.raises(ValueError, match="no images found"):
        api.embed([tmp_path / "docs"], root=tiny_repo)
    with pytest.raises(ValueError, match="no images given"):
        api.embed([], root=tiny_repo)


# ---- photos: the face found and framed like ORL (more in test_gallery.py) --------------------------------


@needs_orl
def test_a_photo_without_a_face_is_an_error_naming_it(tmp_path: Path):
    model = write_tiny_model(tmp_path / "tiny.pt")
    blank = tmp_path / "blank.png"
    Image.new("L", (300, 200), 90).save(blank)
    with pytest.raises(ImageError, match="blank.png: no face found"):
        api.verify(TESTING / "s5" / "1.pgm", blank, model)
    # the whole picture, on request
    assert api.verify(TESTING / "s5" / "1.pgm", blank, model, detect=False).distance >= 0
