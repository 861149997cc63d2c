"""The repository the commands run in: where it is, and what to do when a pipeline output is missing."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from facesim.core.paths import show_path


def find_root(root: str | os.PathLike | None = None) -> Path:
    """The facesim repository: `root` when given, else the first folder from the cwd upward with a dvc.yaml."""
    if root is not None:
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: repository root not found; pass --root (root= in Python) the "
                                    "facesim repository, the folder that holds dvc.yaml")
        return root
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / "dvc.yaml").is_file():
            return folder
    raise FileNotFoundError(f"{here}: no dvc.yaml here or in any folder above it; run facesim inside the facesim "
                            "repository or pass --root (root= in Python)")


def dvc_lock_output(root: str | os.PathLike, path: str) -> tuple[str, str] | None:
    """(stage, output) of `<root>/dvc.lock` whose output is `path` (relative to root, POSIX) or a folder
    holding it; None when none is, or there is no readable dvc.lock."""
    import yaml  # imported here: needed only to explain a missing file

    try:
        lock = yaml.safe_load((Path(root) / "dvc.lock").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    stages = lock.get("stages") if isinstance(lock, dict) else None
    target = PurePosixPath(path)
    for stage, entry in (stages.items() if isinstance(stages, dict) else ()):
        outs = entry.get("outs") if isinstance(entry, dict) else None
        for out in outs if isinstance(outs, list) else ():
            listed = out.get("path") if isinstance(out, dict) else None
            if isinstance(listed, str) and (PurePosixPath(listed) == target or PurePosixPath(listed) in target.parents):
                return str(stage), listed
    return None


def missing_output(root: Path, path: str, kind: str, make: str) -> tuple[str, str, str]:
    """(what, problem, what to do) for a missing pipeline output `path` (relative to root), as dvc.lock
    explains it: restore it from DVC's cache when a stage records it, else run the pipeline to `make` it."""
    where = "" if Path.cwd().resolve() == root.resolve() else f" (in {show_path(root)})"
    recorded = dvc_lock_output(root, path)
    if recorded is None:
        return show_path(root / path), f"{kind} not found", f"run `dvc repro`{where} to {make} it"
    stage, output = recorded
    return (show_path(root / path), f"missing, though dvc.lock records it (stage {stage})",
            f"`dvc checkout {output}`{where} brings it back from the DVC cache "
            "(or `dvc pull` from a remote, `dvc repro` rebuilds it)")
