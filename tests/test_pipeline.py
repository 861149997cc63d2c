"""The whole `dvc repro` in a temporary copy of the repository, on a small archive built here.

Offline and self-contained: the fetch stage reads the synthetic archive through
FACESIM_DATA_URL, tiny params keep training to seconds, and MLflow logs into the
copy's own sqlite store. Checks every declared output, that a second `dvc repro`
has nothing to do, and one MLflow run per stage execution.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from facesim.core.digest import content_digest
from helpers import (
    PIPELINE_BACKBONES,
    build_faces_archive,
    run_checked,
    tiny_pipeline_params,
    write_faces_dir,
    write_people_dir,
)

REPO = Path(__file__).resolve().parents[1]
BACKBONES = PIPELINE_BACKBONES  # pipeline.backbones and cv.backbones of params.yaml
MODELS = [f"{backbone}-{loss}" for backbone in BACKBONES for loss in ("contrastive", "triplet")]
STAGES = ["fetch", "sample",
          *(f"{stage}@{model}" for stage in ("train", "evaluate") for model in MODELS),
          *(f"render@{backbone}" for backbone in BACKBONES)]
# the cross-validation pipeline of the copy: 2 backbones x 2 models x 2 folds x 1 seed, then the summaries
CV_BACKBONES = BACKBONES
CV_STAGES = ([f"fold@{backbone}-{model}-{fold}" for backbone in CV_BACKBONES for model in ("contrastive", "triplet")
              for fold in (1, 2)]
             + [f"summary@{backbone}-{model}" for backbone in CV_BACKBONES for model in ("contrastive", "triplet")])

pytestmark = pytest.mark.integration


def _repo_copy(tmp: Path, params: dict, env_extra: dict[str, str]) -> tuple[Path, dict[str, str]]:
    """A git repository at `tmp/repo` with this one's pipeline, code and `params`; the environment to run it in."""
    repo = tmp / "repo"
    repo.mkdir()
    for name in ("dvc.yaml", ".dvcignore", ".gitignore", "pyproject.toml"):
        shutil.copy(REPO / name, repo / name)
    for name in ("stages", "src", "cv"):
        shutil.copytree(REPO / name, repo / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    (repo / ".dvc").mkdir()
    shutil.copy(REPO / ".dvc" / "config", repo / ".dvc" / "config")
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_", "FACESIM_DATA_URL"))}
    env.update(
        # The stages run `python`: the interpreter running the tests, with the copy's src first.
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        PYTHONPATH=str(repo / "src"),
        FACESIM_CACHE=str(tmp / "cache"),
        GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t",
        **env_extra,
    )
    run_checked(["git", "init", "-q"], repo, env)
    run_checked(["git", "add", "-A"], repo, env)
    run_checked(["git", "commit", "-qm", "copy"], repo, env)
    return repo, env


DVC = [sys.executable, "-m", "dvc"]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("pipeline")
    archive = build_faces_archive(tmp / "archive")
    digest = content_digest(write_faces_dir(tmp / "expected"))
    repo, env = _repo_copy(tmp, tiny_pipeline_params(digest), {"FACESIM_DATA_URL": str(archive)})
    first = run_checked(DVC + ["repro"], repo, env)
    second = run_checked(DVC + ["repro"], repo, env)
    status = run_checked(DVC + ["status", "dvc.yaml"], repo, env)
    dlib_cache_before_cv = len(list((tmp / "cache" / "dlib").rglob("*.npy")))
    cv = run_checked(DVC + ["repro", "cv/dvc.yaml"], repo, env)
    metrics = run_checked(DVC + ["metrics", "show", "--json"], repo, env)
    table = run_checked(DVC + ["metrics", "show"], repo, {**env, "COLUMNS": "160"})
    return {"repo": repo, "env": env, "first": first, "second": second, "status": status, "cv": cv,
            "dlib_cache_before_cv": dlib_cache_before_cv,
            "metrics": json.loads(metrics.stdout), "metrics_table": table.stdout}


def test_every_stage_ran_and_wrote_its_outputs(pipeline: dict) -> None:
    repo = pipeline["repo"]
    for stage in STAGES:
        assert f"Running stage '{stage}'" in pipeline["first"].stdout
    assert len(list((repo / "data/raw/faces").rglob("*.pgm"))) == 110
    for split in ("train", "val", "test"):
        assert (repo / f"data/processed/pairs_{split}.csv").stat().st_size > 0
        assert (repo / f"data/processed/triplets_{split}.csv").stat().st_size > 0
    for model in MODELS:
        assert (repo / f"models/{model}.pt").stat().st_size > 0 and (repo / f"models/{model}.onnx").stat().st_size > 0
        for path in (f"reports/plots/{model}/history.csv", f"reports/plots/{model}/roc.csv",
                     f"data/eval/{model}/predictions.csv", f"data/eval/{model}/embeddings.csv"):
            assert (repo / path).stat().st_size > 0, path
        details = json.loads((repo / f"reports/metrics/{model}_details.json").read_text())
        assert details["all_pairs"]["n_pairs"] == 30 * 29 // 2
        assert 0.0 <= details["all_pairs"]["roc_auc"] <= 1.0
        metrics = json.loads((repo / f"reports/metrics/{model}.json").read_text())
        assert metrics["auc"] == details["all_pairs"]["roc_auc"] and metrics["threshold"] == details["threshold"]
        robustness = json.loads((repo / f"reports/metrics/robustness_{model}.json").read_text())
        assert set(robustness) == {"worst_same", "worst_diff"} and 0.0 <= robustness["worst_same"] <= 1.0
        assert details["target_far"] == 0.05  # calibrated for it (on the validation faces against the training faces)
    for backbone in BACKBONES:
        figures = sorted(p.name for p in (repo / "reports/figures" / backbone).iterdir())
        assert figures == sorted([f"distances_{backbone}-contrastive.png", f"distances_{backbone}-triplet.png",
                                  "loss_curves.png", f"pca_{backbone}-contrastive.png", f"pca_{backbone}-triplet.png",
                                  "robustness.png", "roc.png", f"top5_{backbone}-contrastive.png",
                                  f"top5_{backbone}-triplet.png"])



def test_cross_validation_is_a_pipeline_of_its_own(pipeline: dict) -> None:
    repo = pipeline["repo"]
    assert "fold@" not in pipeline["first"].stdout
    for stage in CV_STAGES:
        assert f"Running stage 'cv/dvc.yaml:{stage}'" in pipeline["cv"].stdout or \
            f"Running stage '{stage}'" in pipeline["cv"].stdout, stage
    assert "Running stage 'train@" not in pipeline["cv"].stdout  # the main pipeline was up to date
    files = next(iter(pipeline["metrics"].values()))["data"]
    for backbone in CV_BACKBONES:
        for model in ("contrastive", "triplet"):
            for fold in (1, 2):
                row = json.loads((repo / f"reports/cv/{backbone}/folds/{model}/fold{fold}/seed1.json").read_text())
                assert (row["model"], row["fold"], row["seed"]) == (model, fold, 1)
                assert row["target_far"] == 0.05 and row["calibration_far"] <= 0.05
                assert (repo / f"reports/cv/{backbone}/roc/{model}/fold{fold}/seed1.csv").stat().st_size > 0
            details = json.loads((repo / f"reports/cv/{backbone}/{model}_details.json").read_text())
            assert details["runs"] == 2
            assert f"reports/cv/{backbone}/{model}.json" in files  # `dvc metrics show` lists it
            assert files[f"reports/cv/{backbone}/{model}.json"]["data"]["eer"] == details["mean"]["eer"]
    # the dlib descriptors of the 110 faces (and of the evaluate stage's changed faces) were computed by the
    # main pipeline's dlib stages, and every CV stage read them from the cache
    assert pipeline["dlib_cache_before_cv"] >= 110
    assert len(list((repo.parent / "cache" / "dlib").rglob("*.npy"))) == pipeline["dlib_cache_before_cv"]


def test_second_repro_has_nothing_to_do(pipeline: dict) -> None:
    assert "Running stage" not in pipeline["second"].stdout
    assert "up to date" in pipeline["status"].stdout


def test_dvc_metrics_show_reads_every_model(pipeline: dict) -> None:
    files = next(iter(pipeline["metrics"].values()))["data"]
    for model in MODELS:
        data = files[f"reports/metrics/{model}.json"]["data"]
        assert set(data) == {"threshold", "far", "frr", "accuracy", "tar_at_far_1e-2", "tar_at_far_1e-3", "auc",
                             "eer", "p_at_1", "map"}
    lines = pipeline["metrics_table"].splitlines()
    # the header, then the evaluate stage's two metrics files of every model, and cv of both losses for both backbones
    assert len(lines) == 1 + 2 * len(MODELS) + 2 * len(CV_BACKBONES)


def test_one_mlflow_run_per_stage(pipeline: dict) -> None:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{pipeline['repo'] / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("facesim")
    runs = client.search_runs([experiment.experiment_id])
    main = [r for r in runs if r.data.tags.get("facesim_stage") not in ("cv_fold", "cv_summary")]
    assert sorted(r.info.run_name for r in main) == sorted(STAGES)
    assert all(r.info.status == "FINISHED" for r in runs)
    # each fold is a child of its backbone's parent run, which the summaries logged into
    folds = [r for r in runs if r.data.tags.get("facesim_stage") == "cv_fold"]
    parents = {r.data.tags["mlflow.parentRunId"] for r in folds}
    assert len(folds) == 8 and len(parents) == 2
    assert {r.data.params["seed"] for r in folds} == {"1"}  # the fold's training seed (cv.seeds), not train.seed
    # one run per seed, named after its stage (DVC names a stage of cv/dvc.yaml run from the root with that prefix)
    assert {r.info.run_name.removeprefix("cv/dvc.yaml:") for r in folds} == \
        {f"{stage}-seed1" for stage in CV_STAGES if stage.startswith("fold@")}
    for parent in map(client.get_run, parents):
        assert parent.info.run_name == "cv" and "triplet.mean.eer" in parent.data.metrics
    by_name = {r.info.run_name: r for r in runs}
    assert by_name["fetch"].data.metrics["images"] == 110
    assert by_name["sample"].data.params["seed"] == "42"
    assert by_name["train@compact-triplet"].data.params["loss.mining"] == "semihard"
    assert by_name["train@dlib-triplet"].data.params["backbone"] == "dlib"
    evaluated = by_name["evaluate@compact-contrastive"].data.metrics
    assert {"all_pairs.roc_auc", "worst_same", "same.blur_radius_1", "onnx_max_abs_difference"} <= set(evaluated)
    # each model registered under a name that says its backbone and loss, by its evaluate run: its checkpoint's
    # verifier and its ONNX export's
    registered = client.search_model_versions()
    assert {v.name for v in registered} == {f"facesim-{model}{flavor}" for model in MODELS for flavor in ("", "-onnx")}
    assert all(client.get_run(v.run_id).info.run_name == f"evaluate@{v.name.removeprefix('facesim-').removesuffix('-onnx')}"
               for v in registered)
    assert all(r.data.tags["git_commit"] != "unknown" for r in runs)


# ---- a folder of one's own faces: layout people, examples/params-people.yaml -----------------------------------

# 1 to 6 images each, mixed formats, sizes and colour; three people held out by name (10 faces, one a single image)
PEOPLE = {"ada": 6, "bo": 5, "cy": 4, "di": 3, "ed": 2, "flo": 1, "gus": 6, "hal": 5, "ivy": 4, "jo": 3, "kit": 2,
          "lu": 1}
HELD_OUT = ["cy", "hal", "lu"]


@pytest.fixture(scope="module")
def people_pipeline(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("people")
    folder = write_people_dir(tmp / "my-faces" / "photos", PEOPLE, sizes=[(30, 36), (47, 41)])
    example = yaml.safe_load((REPO / "examples" / "params-people.yaml").read_text())
    params = tiny_pipeline_params(content_digest(folder))
    params["fetch"] = {**example["fetch"], "url": str(tmp / "my-faces"), "digest": content_digest(folder)}
    params["sample"] = {**example["sample"], "held_out": HELD_OUT, "held_out_fraction": 0.0}
    # a handful of validation faces resolve no 1% target: the best-accuracy threshold
    params["evaluate"]["operating_point"] = "best_accuracy"
    repo, env = _repo_copy(tmp, params, {})
    return {"repo": repo, "repro": run_checked(DVC + ["repro"], repo, env)}


def test_a_people_folder_runs_every_stage(people_pipeline: dict) -> None:
    import pandas as pd

    repo = people_pipeline["repo"]
    for stage in STAGES:
        assert f"Running stage '{stage}'" in people_pipeline["repro"].stdout, stage
    assert len([p for p in (repo / "data/raw/faces").rglob("*") if p.is_file()]) == sum(PEOPLE.values())
    test = pd.read_csv(repo / "data/processed/pairs_test.csv")
    assert set(test["subject1"]) | set(test["subject2"]) == set(HELD_OUT)
    for name in ("pairs_train", "pairs_val", "triplets_train", "triplets_val"):
        table = pd.read_csv(repo / f"data/processed/{name}.csv")
        assert not set(table.filter(like="subject").to_numpy().ravel()) & set(HELD_OUT), name
    for model in MODELS:
        details = json.loads((repo / f"reports/metrics/{model}_details.json").read_text())
        assert details["all_pairs"]["n_pairs"] == 10 * 9 // 2  # every pair of the 4 + 5 + 1 held-out faces
        assert (repo / f"reports/metrics/robustness_{model}.json").is_file()
    assert (repo / "reports/figures/compact/top5_compact-triplet.png").stat().st_size > 0
