"""The `facesim` command line: output of each command, --json, --figure, --help and every error path.

Most tests call `facesim.app.cli.main` in this process; one runs the installed console script.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from helpers import REPO, TESTING, TINY_THRESHOLD, face, real, write_dvc_lock, write_tiny_model
from facesim.app.api import best_model
from facesim.app.cli import main

S5_1, S5_2, S6_1 = (str(TESTING / p) for p in ("s5/1.pgm", "s5/2.pgm", "s6/1.pgm"))


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# `facesim <command>: <what>: <problem>; <what to do>`, one line (a <what> may hold a colon: models:/...)
FAILURE = re.compile(r"facesim (verify|search|embed): [^;\n]+: [^;\n]+; [^\n]+\n")


def one_line_failure(err: str, command: str) -> str:
    """The failure line of stderr, checked to be the only line and of the agreed form."""
    assert FAILURE.fullmatch(err) and err.startswith(f"facesim {command}: "), err
    assert "Traceback" not in err
    return err.rstrip("\n")


# ---- the real models on real test faces ------------------------------------------------------------


def best_label(root: Path) -> tuple[str, str]:
    """The model `best` picks in `root` and the name it goes by: its own and its cross-validation EER."""
    name, eer = best_model(root)
    return name, f"{name} (the most accurate by cross-validation EER, {eer:.2%})"


@real
def test_verify_same_person(capsys):
    best, label = best_label(REPO)  # no --model: the lowest cross-validation EER
    threshold = json.loads((REPO / "reports" / "metrics" / f"{best}.json").read_text())["threshold"]
    code, out, err = run(capsys, "verify", S5_1, S5_2, "--root", str(REPO))
    assert code == 0 and err == ""
    lines = dict(line.split(maxsplit=1) for line in out.splitlines() if not line.startswith("image"))
    assert lines["model"] == label
    assert lines["threshold"].startswith(f"{threshold:.4f} (calibrated on people unseen in training")
    assert lines["verdict"].startswith("same person: ") and "below the threshold" in lines["verdict"]
    assert float(lines["distance"]) < threshold


@real
def test_verify_different_people_as_json(capsys):
    code, out, _ = run(capsys, "verify", S5_1, S6_1, "--model", "compact-triplet", "--root", str(REPO), "--json")
    result = json.loads(out)
    threshold = json.loads((REPO / "reports" / "metrics" / "compact-triplet.json").read_text())["threshold"]
    assert code == 0 and result["model"] == "compact-triplet" and result["threshold"] == threshold
    assert result["same_person"] is False and result["distance"] > threshold
    assert result["margin"] == pytest.approx(result["distance"] - threshold)
    assert set(result) == {"image_a", "image_b", "model", "distance", "threshold", "threshold_source",
                           "same_person", "margin", "relative_margin"}


@real
def test_search_text_json_and_figure(capsys, tmp_path: Path):
    figure = tmp_path / "top3.png"
    code, out, err = run(capsys, "search", S6_1, "-k", "3", "--root", str(REPO), "--no-cache", "--figure", str(figure))
    assert code == 0 and err == ""
    assert "(person s6)" in out and "30 faces, the query left out" in out
    rows = [line.split() for line in out.splitlines() if line[:4].strip().isdigit()]
    assert [row[0] for row in rows] == ["1", "2", "3"]
    assert [row[3] for row in rows] == ["s6"] * 3  # rank, distance, within threshold, person, path
    with Image.open(figure) as image:
        assert image.format == "PNG" and image.width > 2 * image.height  # one row: the query and 3 matches

    code, out, _ = run(capsys, "search", S6_1, "-k", "3", "--root", str(REPO), "--no-cache", "--json")
    result = json.loads(out)
    assert code == 0 and result["model"] == best_label(REPO)[1] and result["query_person"] == "s6"
    assert [m["person"] for m in result["matches"]] == ["s6"] * 3
    assert [m["distance"] for m in result["matches"]] == pytest.approx([float(row[1]) for row in rows], abs=1e-4)


@real
def test_embed_csv(capsys, tmp_path: Path):
    out_file = tmp_path / "embeddings.csv"
    code, out, _ = run(capsys, "embed", str(TESTING / "s7"), S5_1, "--out", str(out_file), "--root", str(REPO),
                       "--no-cache")
    from facesim.core.checkpoint import load_checkpoint

    best, label = best_label(REPO)  # no --model: the lowest cross-validation EER
    config = load_checkpoint(REPO / "models" / f"{best}.pt")[1]["model_config"]
    dims = config["embedding_dim"] * config.get("members", 1)  # an ensemble's members side by side
    assert code == 0 and out.strip() == f"11 embeddings ({dims} dimensions, {label}) written to {out_file}"
    table = pd.read_csv(out_file)
    assert table["person"].tolist() == ["s7"] * 10 + ["s5"] and table.shape == (11, 2 + dims)


@real
def test_console_script_runs(tmp_path: Path):
    script = Path(sys.executable).parent / "facesim"
    if not script.exists():
        pytest.skip("facesim is not installed in this environment (pip install -e .)")
    done = subprocess.run([str(script), "verify", S5_1, S5_2, "--json"], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["same_person"] is True
    helped = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=30)
    assert helped.returncode == 0 and "verify" in helped.stdout and "examples:" in helped.stdout


# ---- tiny models: formats and errors ----------------------------------------------------------------------


def test_embed_npy_and_json(capsys, tiny_repo: Path, tmp_path: Path):
    out_file = tmp_path / "e.npy"
    code, out, _ = run(capsys, "embed", str(tiny_repo / "data" / "raw" / "faces" / "testing"), "--out", str(out_file),
                       "--root", str(tiny_repo), "--json")
    listed = json.loads(out)
    assert code == 0 and listed["dimensions"] == 8 and len(listed["paths"]) == 30 and listed["skipped"] == []
    assert np.load(out_file).shape == (30, 8)


def test_verify_with_a_checkpoint_path_and_threshold(capsys, tmp_path: Path, tiny_repo: Path):
    bare = write_tiny_model(tmp_path / "bare.pt", threshold=None)
    a, b = str(face(tiny_repo, 5, 1)), str(face(tiny_repo, 6, 1))
    code, _, err = run(capsys, "verify", a, b, "--model", str(bare))
    assert code == 1 and "no distance threshold" in err and "--threshold" in err
    code, out, _ = run(capsys, "verify", a, b, "--model", str(bare), "--threshold", "0.5", "--json")
    assert code == 0 and json.loads(out)["threshold"] == 0.5


@pytest.mark.parametrize("command", [
    ["verify", "{good}", "{missing}"],
    ["verify", "{unreadable}", "{good}"],
    ["search", "{missing}"],
    ["embed", "{good}", "{unreadable}", "--out", "{tmp}/e.csv"],
])
def test_missing_and_unreadable_files_are_errors_naming_them(capsys, tiny_repo: Path, tmp_path: Path, command):
    unreadable = tmp_path / "letter.png"
    unreadable.write_text("Dear reader")
    names = {"good": str(face(tiny_repo, 5, 1)), "missing": str(tmp_path / "absent.pgm"),
             "unreadable": str(unreadable), "tmp": str(tmp_path)}
    argv = [part.format(**names) for part in command]
    code, out, err = run(capsys, *argv, "--root", str(tiny_repo))
    assert code == 1 and out == ""
    named = "absent.pgm" if any("absent" in a for a in argv) else "letter.png"
    assert err.startswith(f"facesim {command[0]}: ") and err.count("\n") == 1 and named in err
    assert ("image file not found" if named == "absent.pgm" else "not a readable image") in err


def test_gallery_non_images_are_skipped_with_a_warning(capsys, tiny_repo: Path):
    gallery = tiny_repo / "data" / "raw" / "faces" / "testing"
    (gallery / "notes.txt").write_text("x")
    (gallery / "s7" / "thumbs.db").write_bytes(b"\x00\x01")
    code, out, err = run(capsys, "search", str(face(tiny_repo, 5, 1)), "--root", str(tiny_repo))
    assert code == 0 and "30 faces" in out
    assert err.startswith("facesim search: warning: skipped 2 file(s) that are not readable images")
    assert "notes.txt" in err and "thumbs.db" in err


@pytest.mark.parametrize("argv, message", [
    (["search", "{query}", "-k", "40"], "k=40: more than the 29 faces of the gallery"),
    (["search", "{query}", "-k", "0"], "k=0: not an integer >= 1; pass e.g. -k 5"),
    (["search", "{query}", "--gallery", "{tmp}/nowhere"], "nowhere: gallery folder not found"),
    (["search", "{query}", "--model", "vgg"], "vgg: not a model name"),
    (["embed", "{query}", "--out", "{tmp}/e.txt"], "e.txt: the output must end in .csv or .npy"),
    (["verify", "{query}", "{query}", "--model", "{tmp}/none.pt"], "none.pt: checkpoint not found"),
])
def test_usage_errors(capsys, tiny_repo: Path, tmp_path: Path, argv, message):
    names = {"query": str(face(tiny_repo, 5, 1)), "tmp": str(tmp_path)}
    code, out, err = run(capsys, *[a.format(**names) for a in argv], "--root", str(tiny_repo))
    assert code == 1 and out == "" and message.format(**names) in err
    one_line_failure(err, argv[0])


def test_a_model_file_that_is_not_facesims_is_refused_in_words(capsys, tiny_repo: Path, tmp_path: Path):
    import onnx
    from onnx import TensorProto, helper

    a = str(face(tiny_repo, 5, 1))
    # an ONNX model of someone else's: no facesim metadata
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "other",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 224, 224])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 224, 224])])
    onnx.save(helper.make_model(graph), str(tmp_path / "resnet.onnx"))
    (tmp_path / "notes.pt").write_text("my notes, not a model\n")
    expected = {"resnet.onnx": f"{tmp_path}/resnet.onnx: not a facesim ONNX model (no facesim metadata: facesim.format, ",
                "notes.pt": f"{tmp_path}/notes.pt: not a facesim model (not a PyTorch checkpoint: torch.save writes "
                            "a zip archive, and this file is none)"}
    for name, message in expected.items():
        code, out, err = run(capsys, "verify", a, a, "--model", str(tmp_path / name), "--root", str(tiny_repo))
        assert code == 1 and out == "" and one_line_failure(err, "verify").startswith(f"facesim verify: {message}")


def test_outside_the_repository_without_root(capsys, tmp_path_factory, monkeypatch, tiny_repo: Path):
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))
    code, _, err = run(capsys, "verify", str(face(tiny_repo, 5, 1)), str(face(tiny_repo, 5, 2)))
    assert code == 1 and "no dvc.yaml" in err and "--root" in err


@pytest.mark.parametrize("command", ["verify", "search", "embed"])
def test_help_explains_each_argument_with_an_example(capsys, command):
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert "example:" in text and f"facesim {command} " in text
    for option in ("--model", "--root", "--json"):
        assert option in text
    flat = "".join(text.split())  # wrapping may break a line at a dash
    assert "models:/facesim-dlib-triplet@champion" in flat and "(default:best)" in flat
    assert "<backbone>-<loss>suchasdlib-tripletorcompact-contrastive" in flat


def test_bad_arguments_exit_with_usage(capsys):
    with pytest.raises(SystemExit) as done:
        main(["verify", "only-one.pgm"])
    assert done.value.code == 2 and "IMAGE_B" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["-1", "0", "nan", "inf"])
def test_a_threshold_must_be_a_finite_positive_distance(capsys, tiny_repo, value):
    face_a, face_b = face(tiny_repo, 5, 1), face(tiny_repo, 5, 2)
    code, out, err = run(capsys, "verify", str(face_a), str(face_b), "--root", str(tiny_repo),
                         f"--threshold={value}")
    assert code == 1 and out == ""
    line = one_line_failure(err, "verify")
    assert line.startswith("facesim verify: --threshold (threshold=): must be a finite distance above 0")
    assert line.endswith("; pass e.g. --threshold 0.9, or leave it out for the calibrated one")


def test_a_closed_pipe_ends_quietly_without_a_traceback(tiny_repo):
    # the reader closes its end before facesim writes (as `| head` does once it has enough)
    command = [sys.executable, "-m", "facesim.app.cli", "embed", str(tiny_repo / "data" / "raw" / "faces"),
               "--out", str(tiny_repo / "e.csv"), "--json", "--no-detect", "--no-cache", "--root", str(tiny_repo)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()
    err = process.stderr.read().decode()
    assert process.wait(timeout=120) == 141
    assert "Traceback" not in err and "BrokenPipeError" not in err


# ---- failures that explain themselves ------------------------------------------------------------------------


def test_a_missing_image_is_one_line_saying_what_to_do(capsys, tiny_repo: Path, tmp_path: Path):
    missing = tmp_path / "absent.pgm"
    code, out, err = run(capsys, "verify", str(face(tiny_repo, 5, 1)), str(missing), "--root", str(tiny_repo))
    assert code == 1 and out == ""
    assert one_line_failure(err, "verify") == f"facesim verify: {missing}: image file not found; check the path"


@pytest.mark.parametrize("recorded", [False, True], ids=["not-in-dvc-lock", "in-dvc-lock"])
def test_a_missing_model_says_what_dvc_lock_records(capsys, tiny_repo: Path, monkeypatch, recorded: bool):
    monkeypatch.chdir(tiny_repo)  # the repository found from the working directory, as a user runs it
    (tiny_repo / "models" / "compact-triplet.pt").unlink()
    if recorded:
        write_dvc_lock(tiny_repo, {"fetch": ["data/raw/faces"],
                                   "train@compact-contrastive": ["models/compact-contrastive.pt"],
                                   "train@compact-triplet": ["models/compact-triplet.pt"]})
    a, b = (str(face(tiny_repo, 5, i)) for i in (1, 2))
    for model in ("compact-triplet", "triplet"):  # the short name is the compact model
        code, out, err = run(capsys, "verify", a, b, "--model", model)
        assert code == 1 and out == ""
        if recorded:
            assert one_line_failure(err, "verify") == (
                "facesim verify: models/compact-triplet.pt: missing, though dvc.lock records it (stage "
                "train@compact-triplet); `dvc checkout models/compact-triplet.pt` brings it back from the DVC cache "
                "(or `dvc pull` from a remote, `dvc repro` rebuilds it)")
        else:
            assert one_line_failure(err, "verify") == (
                "facesim verify: models/compact-triplet.pt: checkpoint not found; run `dvc repro` to train it")


def test_missing_metrics_say_what_dvc_lock_records(capsys, tiny_repo: Path, monkeypatch):
    # the model 'best' picks (TINY_CV_EER: compact-triplet) has lost its metrics
    (tiny_repo / "reports" / "metrics" / "compact-triplet.json").unlink()
    write_dvc_lock(tiny_repo, {"evaluate@compact-triplet": ["reports/metrics/compact-triplet.json"]})
    elsewhere = tiny_repo / "data"
    monkeypatch.chdir(elsewhere)  # below the repository: paths shown from here, dvc told where to run
    code, _, err = run(capsys, "verify", "raw/faces/testing/s5/1.pgm", "raw/faces/testing/s5/2.pgm")
    line = one_line_failure(err, "verify")
    assert code == 1 and line.startswith(
        f"facesim verify: {tiny_repo / 'reports' / 'metrics' / 'compact-triplet.json'}: missing, though dvc.lock "
        f"records it (stage evaluate@compact-triplet), so compact-triplet has no distance threshold; `dvc checkout "
        f"reports/metrics/compact-triplet.json` (in {tiny_repo}) brings it back from the DVC cache")
    assert line.endswith(", or pass one with --threshold (threshold= in Python)")
    # search needs no threshold: it still runs
    code, out, _ = run(capsys, "search", "raw/faces/testing/s5/1.pgm", "-k", "1")
    assert code == 0 and ("model      compact-triplet (the most accurate by cross-validation EER, 6.25%), "
                          "threshold none") in out


# ---- the default model: 'best' --------------------------------------------------------------------------------


def test_verify_without_a_model_says_which_it_chose_and_its_threshold(capsys, tiny_repo: Path, monkeypatch):
    monkeypatch.chdir(tiny_repo)
    code, out, err = run(capsys, "verify", str(face(tiny_repo, 5, 1)), str(face(tiny_repo, 5, 1)))
    assert code == 0 and err == ""
    lines = out.splitlines()
    # TINY_CV_EER: compact-triplet's CV EER (6.25%) is below compact-contrastive's (12.5%)
    assert lines[2] == "model      compact-triplet (the most accurate by cross-validation EER, 6.25%)"
    assert lines[3] == "distance   0.0000"  # a face against itself
    assert lines[4] == (f"threshold  {TINY_THRESHOLD:.4f} (calibrated on people unseen in training, "
                        "reports/metrics/compact-triplet.json)")
    assert lines[5].startswith("verdict    same person: 0.0500 below the threshold (100% of it)")
    assert json.loads(run(capsys, "verify", str(face(tiny_repo, 5, 1)), str(face(tiny_repo, 6, 1)),
                          "--json")[1])["model"] == lines[2].split(maxsplit=1)[1]


def test_without_a_model_to_rank_the_default_says_what_to_run(capsys, tiny_repo: Path, monkeypatch):
    monkeypatch.chdir(tiny_repo)
    for loss in ("contrastive", "triplet"):
        (tiny_repo / "reports" / "cv" / "compact" / f"{loss}.json").unlink()
    a = str(face(tiny_repo, 5, 1))
    for argv in (["verify", a, a], ["search", a, "-k", "1"], ["embed", a, "--out", str(tiny_repo / "e.csv")]):
        code, out, err = run(capsys, *argv)
        assert code == 1 and out == ""
        assert one_line_failure(err, argv[0]) == (
            f"facesim {argv[0]}: .: no trained model with a cross-validation summary (models/<backbone>-<loss>.onnx "
            "or .pt and reports/cv/<backbone>/<loss>.json) to pick the most accurate from; run `dvc repro` (and `dvc repro "
            "cv/dvc.yaml`), or name one with --model, e.g. --model compact-triplet")
    # a model named outright still works
    code, out, _ = run(capsys, "verify", a, a, "--model", "compact-contrastive", "--json")
    assert code == 0 and json.loads(out)["model"] == "compact-contrastive"


@pytest.mark.parametrize("debug", [[], ["--debug"], ["env"], ["after"]], ids=["plain", "--debug", "FACESIM_DEBUG",
                                                                             "--debug-after-the-command"])
def test_an_unexpected_error_is_one_line_and_debug_shows_the_traceback(capsys, tiny_repo: Path, monkeypatch, debug):
    def broken(*args, **kwargs):
        raise RuntimeError("CUDA error: device-side assert triggered\nCompile with TORCH_USE_CUDA_DSA")

    monkeypatch.setattr("facesim.app.api.verify", broken)
    monkeypatch.delenv("FACESIM_DEBUG", raising=False)
    if debug == ["env"]:
        monkeypatch.setenv("FACESIM_DEBUG", "1")
    argv = ["verify", str(face(tiny_repo, 5, 1)), str(face(tiny_repo, 5, 2)), "--root", str(tiny_repo)]
    argv = [*debug, *argv] if debug == ["--debug"] else [*argv, "--debug"] if debug == ["after"] else argv
    code, out, err = run(capsys, *argv)
    expected = ("facesim verify: unexpected error: RuntimeError: CUDA error: device-side assert triggered "
                "Compile with TORCH_USE_CUDA_DSA; rerun with --debug (or FACESIM_DEBUG=1) for the traceback, "
                "and report it")
    assert code == 1 and out == ""
    if not debug:
        assert one_line_failure(err, "verify") == expected
    else:
        assert err.startswith("Traceback (most recent call last):") and "in broken" in err
        assert err.rstrip("\n").splitlines()[-1] == expected


@pytest.mark.parametrize("raised, line", [
    (PermissionError(13, "Permission denied", "out/e.csv"),
     "out/e.csv: permission denied; check the path and its permissions"),
    (MemoryError(), "unexpected error: MemoryError; rerun with --debug (or FACESIM_DEBUG=1) for the traceback, "
                    "and report it"),
    (ImportError("libcudnn.so.9: cannot open shared object file"),
     "unexpected error: ImportError: libcudnn.so.9: cannot open shared object file; rerun with --debug"),
])
def test_other_failures_are_one_line_too(capsys, tiny_repo: Path, tmp_path: Path, monkeypatch, raised, line):
    def broken(*args, **kwargs):
        raise raised

    monkeypatch.setattr("facesim.app.api.embed", broken)
    code, out, err = run(capsys, "embed", str(face(tiny_repo, 5, 1)), "--out", str(tmp_path / "e.csv"))
    assert code == 1 and out == "" and err.startswith(f"facesim embed: {line}") and err.count("\n") == 1
    assert "Traceback" not in err


def test_ctrl_c_ends_with_status_130_and_one_line(capsys, tiny_repo: Path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("facesim.app.api.search", interrupted)
    code, out, err = run(capsys, "search", str(face(tiny_repo, 5, 1)), "--root", str(tiny_repo))
    assert code == 130 and out == "" and err == "facesim search: interrupted\n"
