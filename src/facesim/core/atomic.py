"""Write outputs so that a failure never leaves anything half-written.

Every stage builds its outputs under temporary names beside their targets and
publishes them with a rename only once everything (including the MLflow
logging) has succeeded. A failed stage therefore leaves each target either as
it was before or, where DVC removed it before running the stage, absent.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _publish(staged: Path, target: Path) -> None:
    """Move `staged` onto `target`, keeping the old target until the move succeeded."""
    if not target.exists() or (staged.is_file() and target.is_file()):
        os.replace(staged, target)  # atomic for a file over a file
        return
    # os.replace cannot swap a directory for another; park the old one first
    # so that it can be put back if the move fails.
    backup = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    parked = backup / target.name
    os.replace(target, parked)
    try:
        os.replace(staged, target)
    except BaseException:
        os.replace(parked, target)
        raise
    finally:
        shutil.rmtree(backup, ignore_errors=True)


@contextlib.contextmanager
def staged_outputs(*targets: str | os.PathLike) -> Iterator[tuple[Path, ...]]:
    """Yield one temporary path per target (beside it, same filesystem).

    The caller writes each output to its temporary path (a file or a
    directory). When the block exits normally, every path that was written is
    moved onto its target; when it raises, all temporary paths are deleted and
    the targets are left untouched.
    """
    resolved = [Path(t) for t in targets]
    workdirs: list[Path] = []
    try:
        staged = []
        for target in resolved:
            target.parent.mkdir(parents=True, exist_ok=True)
            workdir = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
            workdirs.append(workdir)
            staged.append(workdir / target.name)
        yield tuple(staged)
        missing = [str(t) for t, s in zip(resolved, staged) if not s.exists()]
        if missing:
            raise RuntimeError(f"stage did not write its declared outputs: {', '.join(missing)}")
        for target, path in zip(resolved, staged):
            _publish(path, target)
    finally:
        for workdir in workdirs:
            shutil.rmtree(workdir, ignore_errors=True)


@contextlib.contextmanager
def whole_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path` to write one file to; when the block exits normally it is
    renamed onto `path` (so `path` only ever appears complete), when it raises it is deleted."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        yield Path(temporary)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write a small text file in one step (temporary file, then rename)."""
    with staged_outputs(path) as (staged,):
        staged.write_text(text, encoding="utf-8")
