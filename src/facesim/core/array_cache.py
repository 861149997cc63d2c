"""Arrays computed once and kept on disk, read back memory-mapped: `cached_array`.

The file appears under its final name only when it is complete (written
beside it under a temporary name, flushed, then renamed), so a reader never
maps a half-written array, even when the writer was killed; a file that does
not read back with the expected shape and type is computed again.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from facesim.core.atomic import whole_file

# The environment variable naming the cache folder (default ~/.cache/facesim); each kind of array
# has its own subfolder.
CACHE_ENV = "FACESIM_CACHE"


def cache_root() -> Path:
    """$FACESIM_CACHE, else $XDG_CACHE_HOME/facesim, else ~/.cache/facesim."""
    found = os.environ.get(CACHE_ENV)
    return Path(found) if found else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "facesim"


def _open(path: Path, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray | None:
    try:
        array = np.load(path, mmap_mode="r")
    except (OSError, ValueError, EOFError):
        return None
    return array if array.shape == shape and array.dtype == dtype else None


def cached_array(
    folder: str | os.PathLike,
    key: str,
    shape: tuple[int, ...],
    dtype: np.dtype | type,
    fill: Callable[[int, int], np.ndarray],
    chunk: int = 4096,
) -> np.ndarray:
    """The read-only memory map of `folder/<key>.npy`, an array of `shape` and `dtype` whose rows
    [start, stop) are `fill(start, stop)`, computed `chunk` rows at a time when the file is missing
    (or unreadable), so that only one chunk is ever in memory."""
    folder, dtype = Path(folder), np.dtype(dtype)
    path = folder / f"{key}.npy"
    found = _open(path, shape, dtype)
    if found is not None:
        return found
    with whole_file(path) as temporary:
        out = np.lib.format.open_memmap(temporary, mode="w+", dtype=dtype, shape=shape)
        for start in range(0, shape[0], chunk):
            stop = min(start + chunk, shape[0])
            rows = fill(start, stop)
            if rows.shape != (stop - start, *shape[1:]):
                raise ValueError(f"cached_array {key}: rows {start}..{stop} came as {rows.shape}, "
                                 f"expected {(stop - start, *shape[1:])}")
            out[start:stop] = rows
        out.flush()
        del out
    array = _open(path, shape, dtype)
    if array is None:
        raise OSError(f"{path}: the cached array does not read back as {shape} {dtype}")
    return array
