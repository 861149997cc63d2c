"""facesim.core.array_cache: arrays computed once, memory-mapped, never read half-written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from facesim.core.array_cache import CACHE_ENV, cache_root, cached_array


def counting_fill(calls: list[tuple[int, int]]):
    def fill(start: int, stop: int) -> np.ndarray:
        calls.append((start, stop))
        return np.arange(start * 6, stop * 6, dtype=np.int64).reshape(stop - start, 2, 3).astype(np.uint8)
    return fill


def test_computed_in_chunks_once_then_read_back_mapped(tmp_path: Path) -> None:
    calls: list[tuple[int, int]] = []
    first = cached_array(tmp_path, "k1", (10, 2, 3), np.uint8, counting_fill(calls), chunk=4)
    assert calls == [(0, 4), (4, 8), (8, 10)]  # one chunk in memory at a time
    assert isinstance(first, np.memmap) and not first.flags.writeable
    np.testing.assert_array_equal(first, np.arange(60).reshape(10, 2, 3).astype(np.uint8))

    again = cached_array(tmp_path, "k1", (10, 2, 3), np.uint8, counting_fill(calls), chunk=4)
    assert len(calls) == 3  # not computed again
    np.testing.assert_array_equal(again, first)
    assert [p.name for p in tmp_path.iterdir()] == ["k1.npy"]  # no temporary left


def test_a_failed_write_leaves_nothing_and_the_next_call_computes_it(tmp_path: Path) -> None:
    def failing(start: int, stop: int) -> np.ndarray:
        if start >= 4:
            raise RuntimeError("killed mid-write")
        return np.zeros((stop - start, 2, 3), np.uint8)

    with pytest.raises(RuntimeError, match="killed mid-write"):
        cached_array(tmp_path, "k2", (10, 2, 3), np.uint8, failing, chunk=4)
    assert list(tmp_path.iterdir()) == []
    calls: list[tuple[int, int]] = []
    assert cached_array(tmp_path, "k2", (10, 2, 3), np.uint8, counting_fill(calls), chunk=4)[9, 1, 2] == 59
    assert len(calls) == 3


def test_a_half_written_file_is_never_used(tmp_path: Path) -> None:
    # what a writer killed before the rename leaves (its temporary) is ignored; a truncated or
    # wrongly shaped file under the final name is computed again
    (tmp_path / ".k3.abc.npy.tmp").write_bytes(b"\x93NUMPY partial")
    good = cached_array(tmp_path / "ref", "k3", (10, 2, 3), np.uint8, counting_fill([]))
    data = (tmp_path / "ref" / "k3.npy").read_bytes()
    (tmp_path / "k3.npy").write_bytes(data[: len(data) - 7])
    calls: list[tuple[int, int]] = []
    np.testing.assert_array_equal(cached_array(tmp_path, "k3", (10, 2, 3), np.uint8, counting_fill(calls)), good)
    assert calls == [(0, 10)]
    calls.clear()
    cached_array(tmp_path, "k3", (11, 2, 3), np.uint8, counting_fill(calls))  # another shape: recomputed
    assert calls == [(0, 11)]


def test_fill_of_the_wrong_shape_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"cached_array k4: rows 0\.\.3 came as \(3, 3, 2\)"):
        cached_array(tmp_path, "k4", (3, 2, 3), np.uint8, lambda a, b: np.zeros((b - a, 3, 2), np.uint8))
    assert list(tmp_path.iterdir()) == []


def test_cache_root_follows_the_environment(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "c"))
    assert cache_root() == tmp_path / "c"
    monkeypatch.delenv(CACHE_ENV)
    assert cache_root() == Path.home() / ".cache" / "facesim"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "facesim"
