"""facesim.core.atomic: outputs appear whole, on success only; a failure leaves the targets as they were."""

from __future__ import annotations

from pathlib import Path

import pytest

from facesim.core.atomic import staged_outputs, whole_file, write_text_atomic


def listing(root: Path) -> dict[str, bytes | None]:
    """Every path below `root` with its bytes (None for a directory)."""
    return {p.relative_to(root).as_posix(): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def test_publishes_a_file_and_a_directory(tmp_path: Path) -> None:
    file_target, dir_target = tmp_path / "out" / "a.csv", tmp_path / "faces"
    with staged_outputs(file_target, dir_target) as (file_tmp, dir_tmp):
        # staged beside their targets, under other names, and nothing published yet
        assert file_tmp.parent.parent == file_target.parent and file_tmp.name == "a.csv"
        assert dir_tmp.parent.parent == dir_target.parent and dir_tmp != dir_target
        file_tmp.write_text("x,y\n")
        (dir_tmp / "s1").mkdir(parents=True)
        (dir_tmp / "s1" / "1.pgm").write_bytes(b"P5")
        assert not file_target.exists() and not dir_target.exists()
    assert file_target.read_text() == "x,y\n"
    assert listing(dir_target) == {"s1": None, "s1/1.pgm": b"P5"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["faces", "out"]
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["a.csv"]


def test_replaces_an_existing_directory_and_file(tmp_path: Path) -> None:
    dir_target, file_target = tmp_path / "faces", tmp_path / "a.csv"
    (dir_target / "old").mkdir(parents=True)
    (dir_target / "old" / "1.pgm").write_bytes(b"old")
    file_target.write_text("old\n")
    with staged_outputs(dir_target, file_target) as (dir_tmp, file_tmp):
        (dir_tmp / "new").mkdir(parents=True)
        (dir_tmp / "new" / "1.pgm").write_bytes(b"new")
        file_tmp.write_text("new\n")
    # the old directory's content is gone, not merged
    assert listing(dir_target) == {"new": None, "new/1.pgm": b"new"}
    assert file_target.read_text() == "new\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.csv", "faces"]


def test_a_file_can_replace_a_directory(tmp_path: Path) -> None:
    target = tmp_path / "out"
    (target / "inner").mkdir(parents=True)
    with staged_outputs(target) as (staged,):
        staged.write_text("now a file")
    assert target.read_text() == "now a file"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_an_exception_leaves_targets_untouched_and_no_temporaries(tmp_path: Path) -> None:
    (tmp_path / "faces" / "s1").mkdir(parents=True)
    (tmp_path / "faces" / "s1" / "1.pgm").write_bytes(b"keep me")
    (tmp_path / "a.csv").write_text("keep me too\n")
    before = listing(tmp_path)

    with pytest.raises(KeyError, match="boom"):
        with staged_outputs(tmp_path / "faces", tmp_path / "a.csv", tmp_path / "new.csv") as (d, f, n):
            (d / "s2").mkdir(parents=True)
            f.write_text("half written")
            n.write_text("new")
            raise KeyError("boom")

    assert listing(tmp_path) == before  # no new output, no temporary directory


def test_a_declared_output_that_was_not_written_raises_and_publishes_nothing(tmp_path: Path) -> None:
    (tmp_path / "b.csv").write_text("old b\n")
    with pytest.raises(RuntimeError, match=r"did not write its declared outputs: .*b\.csv"):
        with staged_outputs(tmp_path / "a.csv", tmp_path / "b.csv") as (a, _b):
            a.write_text("new a\n")
    # a was written but must not appear without b; b keeps its old content
    assert listing(tmp_path) == {"b.csv": b"old b\n"}


def test_write_text_atomic(tmp_path: Path) -> None:
    target = tmp_path / "reports" / "metrics.json"
    write_text_atomic(target, '{"auc": 0.5}\n')
    write_text_atomic(target, '{"auc": 0.9}\n')
    assert target.read_text(encoding="utf-8") == '{"auc": 0.9}\n'
    assert [p.name for p in target.parent.iterdir()] == ["metrics.json"]


def test_whole_file_appears_only_when_written_and_replaces_the_old_one(tmp_path: Path) -> None:
    target = tmp_path / "cache" / "k.npy"
    with whole_file(target) as temporary:
        assert temporary.parent == target.parent and temporary != target
        temporary.write_bytes(b"new")
        assert not target.exists()
    assert target.read_bytes() == b"new"
    with pytest.raises(RuntimeError, match="killed"):
        with whole_file(target) as temporary:
            temporary.write_bytes(b"half")
            raise RuntimeError("killed")
    assert target.read_bytes() == b"new"
    assert [p.name for p in target.parent.iterdir()] == ["k.npy"]  # no temporary left behind
