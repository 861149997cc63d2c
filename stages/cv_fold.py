"""DVC stage `fold@<backbone>-<model>-<fold>-<seed>` of cv/dvc.yaml: train one model of one backbone
(`cv.backbones`) on every group of people but one, with one training seed, and score it on the people of the
group it never saw."""

import argparse
import json

from facesim.core.atomic import staged_outputs
from facesim.pipeline.cv import cv_config, load_cv_params, load_operating_point, run_fold
from facesim.core.digest import content_digest
from facesim.core.model_files import MODELS
from facesim.core.models import require_backbone
from facesim.pipeline.sample import SampleParams, all_faces
from facesim.mlops.tracking import group_key, stage_run
from facesim.core.params import load_section
from facesim.pipeline.runtime import RuntimeParams, pin_arithmetic, run_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml",
                        help="params file; reads 'cv', 'train' with 'cv.train' and 'backbones.<backbone>' "
                             "over it, the operating point of 'evaluate', 'runtime' and sample.layout")
    parser.add_argument("--backbone", required=True, help="which of cv.backbones (backbones.<name>: its train keys) to train")
    parser.add_argument("--model", required=True, choices=MODELS)
    parser.add_argument("--fold", required=True, type=int, help="which group of people is held out (1-based)")
    parser.add_argument("--seed", required=True, type=int, help="the training seed (one of cv.seeds)")
    parser.add_argument("--faces", required=True, help="raw faces directory (data/raw/faces)")
    parser.add_argument("--metrics", required=True, help="output: this fold's metrics (JSON)")
    parser.add_argument("--roc", required=True, help="output: ROC points of every unseen pair (CSV, a DVC plot)")
    args = parser.parse_args()
    pin_arithmetic(load_section(RuntimeParams, args.params, "runtime"))  # before any tensor

    cv, train = load_cv_params(args.params, args.backbone)
    target_far = load_operating_point(args.params).target()
    require_backbone(train)  # no MLflow run for a fold that cannot start (weights or dlib missing)
    # every person of either layout (sample.layout): the folds deal them into groups themselves
    faces = all_faces(args.faces, load_section(SampleParams, args.params, "sample").layout)
    config = cv_config(cv, train, args.backbone)
    # the fold's own seed (one of cv.seeds) is the seed it trains with, not train.seed
    run_params = {**train.resolved(args.model), "cv_backbone": args.backbone, "model": args.model, "fold": args.fold,
                  "seed": args.seed, "target_far": target_far}
    with stage_run("cv_fold", run_params, tags={"data_digest": content_digest(args.faces)},
                   group=group_key(config), group_name="cv") as run:
        result = run_fold(cv, train, args.model, args.fold, args.seed, faces, args.faces, target_far)
        with staged_outputs(args.metrics, args.roc) as (metrics_path, roc_path):
            metrics_path.write_text(json.dumps(result.metrics, indent=2) + "\n", encoding="utf-8")
            result.roc.to_csv(roc_path, index=False, lineterminator="\n", float_format="%.6g")
            run.log_metrics({k: v for k, v in result.metrics.items() if k != "model"})
            run.log_metrics({"epochs_run": result.epochs_run, "seconds": result.seconds})
            run.log_artifact(roc_path, "plots")


if __name__ == "__main__":
    run_stage("cv_fold", main)
