"""The content digest of a folder of files: what `fetch.digest` pins and what every stage's MLflow run is
tagged with (`data_digest`), so that a run names the exact faces it read.

Its own module, so that a stage that only tags its run with the digest does not depend on the download code
(`facesim.pipeline.fetch`): changing a retry there reruns only the fetch stage.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def content_digest(root: str | os.PathLike) -> str:
    """sha256 over every file below `root`: its relative POSIX path, its size, its bytes, in path order."""
    root = Path(root)
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix().encode()
        data = path.read_bytes()
        # Length prefixes keep the encoding unambiguous (no path/content run-together).
        digest.update(len(rel).to_bytes(8, "big") + rel)
        digest.update(len(data).to_bytes(8, "big") + data)
    return f"sha256:{digest.hexdigest()}"
