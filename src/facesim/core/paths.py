"""How paths are ordered and shown: the same in the sample CSVs, the CLI and the served model."""

from __future__ import annotations

import os
import re
from pathlib import Path


def natural_key(text: str) -> list:
    """Sort key that reads numbers as numbers: s2/10.pgm after s2/9.pgm, s10 after s9."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def show_path(path: str | os.PathLike) -> str:
    """Relative to the working directory when below it, as given otherwise."""
    try:
        return Path(path).resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return str(path)
