"""facesim.app.repo: the repository the commands run in, and what dvc.lock says of a missing output."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import write_dvc_lock
from facesim.app.repo import dvc_lock_output, find_root, missing_output


def test_root_is_found_upward_from_the_working_directory(tiny_repo: Path, monkeypatch):
    monkeypatch.chdir(tiny_repo / "data" / "raw")
    assert find_root() == tiny_repo.resolve()
    assert find_root(tiny_repo / "models") == tiny_repo / "models"  # a given root is taken as it is
    with pytest.raises(FileNotFoundError, match="absent: repository root not found; pass --root"):
        find_root(tiny_repo / "absent")


def test_dvc_lock_output_finds_a_file_output_or_the_folder_holding_it(tmp_path: Path):
    write_dvc_lock(tmp_path, {"fetch": ["data/raw/faces"], "train@compact-triplet": ["models/compact-triplet.pt"]})
    assert dvc_lock_output(tmp_path, "models/compact-triplet.pt") == ("train@compact-triplet",
                                                                      "models/compact-triplet.pt")
    assert dvc_lock_output(tmp_path, "data/raw/faces/testing") == ("fetch", "data/raw/faces")
    assert dvc_lock_output(tmp_path, "models/compact-contrastive.pt") is None
    assert dvc_lock_output(tmp_path, "data/raw") is None  # a folder above an output is not one


@pytest.mark.parametrize("lock", ["", "stages: [a list]\n", "{not: yaml: at all", "stages:\n  train:\n    outs: 3\n"])
def test_an_empty_or_odd_dvc_lock_records_nothing(tmp_path: Path, lock: str):
    (tmp_path / "dvc.lock").write_text(lock)
    assert dvc_lock_output(tmp_path, "models/compact-triplet.pt") is None
    assert dvc_lock_output(tmp_path / "absent", "models/compact-triplet.pt") is None


def test_missing_output_says_to_check_out_what_dvc_lock_records_else_to_repro(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert missing_output(tmp_path, "models/compact-triplet.pt", "checkpoint", "train") == (
        "models/compact-triplet.pt", "checkpoint not found", "run `dvc repro` to train it")
    write_dvc_lock(tmp_path, {"train@compact-triplet": ["models/compact-triplet.pt"]})
    what, problem, todo = missing_output(tmp_path, "models/compact-triplet.pt", "checkpoint", "train")
    assert problem == "missing, though dvc.lock records it (stage train@compact-triplet)"
    assert todo.startswith("`dvc checkout models/compact-triplet.pt` brings it back")
    # run from elsewhere, it says in which repository to run dvc
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    assert " (in " in missing_output(tmp_path, "models/compact-triplet.pt", "checkpoint", "train")[2]
