"""facesim.core.model_files: reading what the evaluate stage wrote, with errors that name the file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from facesim.core.model_files import ModelError, read_threshold


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_the_threshold_is_read_as_a_float(tmp_path: Path) -> None:
    metrics = write(tmp_path / "m.json", json.dumps({"threshold": 1, "eer": 0.25}))
    assert read_threshold(metrics) == 1.0 and isinstance(read_threshold(metrics), float)


@pytest.mark.parametrize("text, problem", [
    ("{", r"m\.json: not an evaluate metrics file with a 'threshold' \(JSON: Expecting"),
    ("[1, 2]", r"m\.json: not an evaluate metrics file with a 'threshold' \(a JSON object with one\)"),
    ('{"eer": 0.1}', r"m\.json: not an evaluate metrics file with a 'threshold' \(a JSON object with one\)"),
    ('{"threshold": "high"}', r"m\.json: 'threshold' must be a finite number, got 'high'"),
    ('{"threshold": true}', r"m\.json: 'threshold' must be a finite number, got True"),
    ('{"threshold": NaN}', r"m\.json: 'threshold' must be a finite number, got nan"),
])
def test_a_file_without_a_usable_threshold_is_refused_naming_it(tmp_path: Path, text: str, problem: str) -> None:
    metrics = write(tmp_path / "m.json", text)
    with pytest.raises(ModelError, match=problem):
        read_threshold(metrics)


def test_a_missing_file_names_itself_and_what_to_run(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"absent\.json: metrics file not found; run the evaluate "
                                                r"stage \(`dvc repro`\) first"):
        read_threshold(tmp_path / "absent.json")
