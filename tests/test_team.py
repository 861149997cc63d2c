"""Working as a team: one engineer pushes the pipeline's outputs to a DVC remote, a colleague
clones the git repository and pulls them, and finds nothing left to run.

A is a git repository holding what `git add -A` would commit here (files as they are on disk),
with the tiny params of test_pipeline.py (`tiny_pipeline_params` of helpers.py); it runs both
pipelines on the dataset mirror, adds a remote (a plain local folder, as a shared or NFS folder would
be), pushes and commits. B is a `git clone` of A that only runs `dvc pull`. MLflow logs into a sqlite
store beside both clones.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helpers import run_checked, tiny_pipeline_params  # the same tiny params keep training to seconds

REPO = Path(__file__).resolve().parents[1]
# Where CI keeps the dataset mirror (.ci/run); FACESIM_DATA_URL, when it names a file, wins.
MIRROR = REPO.parent / "shared" / "datasets" / (
    "Face-Similarity-Siamese-Network-f67c5ffc041b8f95687f414fd205231feb740466.zip")

pytestmark = pytest.mark.integration


def _mirror() -> Path:
    given = os.environ.get("FACESIM_DATA_URL", "")
    for candidate in (Path(given.removeprefix("file://")) if given else None, MIRROR):
        if candidate is not None and candidate.is_file():
            return candidate.resolve()
    pytest.skip(f"the dataset mirror is absent: neither FACESIM_DATA_URL names a file nor {MIRROR} exists")


def _copy_what_git_would_commit(dest: Path) -> None:
    """Copy what `git add -A` would commit: tracked and new files as they are on disk, not ignored ones."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=REPO, capture_output=True, text=True, check=True)
    for name in filter(None, listed.stdout.split("\0")):
        source = REPO / name
        if source.is_file():  # a tracked file deleted on disk is left out
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)


def _file_digests(root: Path, outs: list[str]) -> dict[str, str]:
    """sha256 of every file under each of `outs` (files or folders), by path relative to `root`."""
    digests = {}
    for out in outs:
        path = root / out
        for file in sorted([path] if path.is_file() else (p for p in path.rglob("*") if p.is_file())):
            digests[file.relative_to(root).as_posix()] = hashlib.sha256(file.read_bytes()).hexdigest()
    return digests


def _lock_outs(repo: Path) -> tuple[list[str], list[str]]:
    """The outputs in `repo`'s dvc.lock: (those git ignores, which DVC's cache holds; those in git)."""
    outs = [out["path"] for stage in yaml.safe_load((repo / "dvc.lock").read_text())["stages"].values()
            for out in stage.get("outs", [])]
    ignored = subprocess.run(["git", "check-ignore", "--", *outs], cwd=repo, capture_output=True, text=True)
    cached = set(ignored.stdout.splitlines())
    return [o for o in outs if o in cached], [o for o in outs if o not in cached]


@pytest.fixture(scope="module")
def team(tmp_path_factory: pytest.TempPathFactory) -> dict:
    mirror = _mirror()
    tmp = tmp_path_factory.mktemp("team")
    a, b, remote = tmp / "a", tmp / "b", tmp / "remote"

    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env.update(
        FACESIM_DATA_URL=str(mirror),
        MLFLOW_TRACKING_URI=f"sqlite:///{tmp / 'mlflow.db'}",
        # The stages run `python`: the interpreter running the tests, with the clone's src first.
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t",
    )
    env_a, env_b = {**env, "PYTHONPATH": str(a / "src")}, {**env, "PYTHONPATH": str(b / "src")}
    dvc = [sys.executable, "-m", "dvc"]

    # A: the repository with tiny params; the real archive's digest stays, so fetch still checks it.
    a.mkdir()
    _copy_what_git_would_commit(a)
    digest = yaml.safe_load((a / "params.yaml").read_text())["fetch"]["digest"]
    (a / "params.yaml").write_text(yaml.safe_dump(tiny_pipeline_params(digest), sort_keys=False))
    run_checked(["git", "init", "-q"], a, env_a)
    run_checked(["git", "add", "-A"], a, env_a)
    run_checked(["git", "commit", "-qm", "copy, tiny params"], a, env_a)
    run_checked(dvc + ["repro", "--all-pipelines"], a, env_a)
    run_checked(dvc + ["remote", "add", "-d", "team", str(remote)], a, env_a)
    push = run_checked(dvc + ["push"], a, env_a)
    cloud = run_checked(dvc + ["status", "--cloud"], a, env_a)
    run_checked(["git", "add", "-A"], a, env_a)
    run_checked(["git", "commit", "-qm", "outputs of dvc repro; remote 'team'"], a, env_a)

    # B: a colleague's clone; git brings the code, dvc.lock and the remote, DVC the data.
    run_checked(["git", "clone", "-q", str(a), str(b)], tmp, env_b)
    cached, in_git = _lock_outs(b)
    missing_before_pull = [out for out in cached if not (b / out).exists()]
    pull = run_checked(dvc + ["pull"], b, env_b)
    status = run_checked(dvc + ["status"], b, env_b)
    repro = run_checked(dvc + ["repro", "--all-pipelines"], b, env_b)
    metrics = {name: json.loads(run_checked(dvc + ["metrics", "show", "--json"], repo, env_).stdout)
               for name, repo, env_ in (("a", a, env_a), ("b", b, env_b))}
    return {"a": a, "b": b, "remote": remote, "cached": cached, "in_git": in_git, "push": push,
            "cloud": cloud, "missing_before_pull": missing_before_pull, "pull": pull, "status": status,
            "repro": repro, "metrics": metrics}


def test_push_fills_the_remote(team: dict) -> None:
    assert any(p.is_file() for p in team["remote"].rglob("*")), team["push"].stdout
    assert "in sync" in team["cloud"].stdout, team["cloud"].stdout


def test_pull_brings_what_git_does_not(team: dict) -> None:
    # every cached output (faces, sample CSVs, models, predictions) came through the remote
    assert {"data/raw/faces", "data/processed/pairs_train.csv", "models/compact-contrastive.pt",
            "models/dlib-triplet.pt"} <= set(team["cached"])
    assert {"reports/figures/compact", "reports/figures/dlib"} <= set(team["in_git"])  # cache: false outputs travel with git
    assert sorted(team["missing_before_pull"]) == sorted(team["cached"])
    for out in team["cached"]:
        assert (team["b"] / out).exists(), out


def test_pulled_outputs_are_byte_identical(team: dict) -> None:
    outs = team["cached"] + team["in_git"]
    in_a, in_b = _file_digests(team["a"], outs), _file_digests(team["b"], outs)
    assert len(in_a) > 400  # the 400 faces and more
    assert in_b == in_a


def test_clone_is_up_to_date(team: dict) -> None:
    assert "Data and pipelines are up to date." in team["status"].stdout, team["status"].stdout
    assert "Running stage" not in team["repro"].stdout, team["repro"].stdout
    assert ("didn't change, skipping" in team["repro"].stdout
            or "Data and pipelines are up to date" in team["repro"].stdout), team["repro"].stdout


def test_metrics_are_the_same(team: dict) -> None:
    files = next(iter(team["metrics"]["a"].values()))["data"]
    assert {"reports/metrics/compact-contrastive.json", "reports/metrics/dlib-triplet.json"} <= set(files)
    assert team["metrics"]["b"] == team["metrics"]["a"]
