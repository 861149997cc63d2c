"""DVC stage `summary@<backbone>-<model>` of cv/dvc.yaml: mean, spread and per-fold figures of one model's
cross-validation runs with one backbone (`cv.backbones`)."""

import argparse

from facesim.pipeline.cv import cv_config, load_cv_params, write_summary
from facesim.core.model_files import MODELS
from facesim.pipeline.runtime import run_stage
from facesim.mlops.tracking import group_key, stage_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml", help="params file; reads 'cv' and 'train'")
    parser.add_argument("--backbone", required=True, help="which of cv.backbones")
    parser.add_argument("--model", required=True, choices=MODELS)
    parser.add_argument("--folds", required=True, help="folder of the model's fold metrics JSON files")
    parser.add_argument("--metrics", required=True, help="output: headline figures (JSON, a DVC metrics file)")
    parser.add_argument("--details", required=True, help="output: every figure of the summary (JSON)")
    args = parser.parse_args()

    cv, train = load_cv_params(args.params, args.backbone)
    config = cv_config(cv, train, args.backbone)
    with stage_run("cv_summary", config, group=group_key(config), group_name="cv", into_group=True) as run:
        figures = write_summary(cv, args.model, args.folds, args.metrics, args.details, run)
    mean, std = figures["mean"], figures["std"]
    print(f"cv@{args.backbone}-{args.model}: EER {mean['eer']:.4f} +- {std['eer']:.4f} over {figures['runs']} runs, "
          f"AUC {mean['roc_auc']:.4f}, P@1 {mean['precision_at_1']:.3f}, accuracy {mean['accuracy']:.4f} "
          f"(best {mean['best_accuracy']:.4f}), FAR {mean['far']:.4f}, FRR {mean['frr']:.4f}, "
          f"TAR at FAR 0.1% {mean['tar_at_far_1e-3']:.4f}, worst calibration gap {figures['worst_calibration_gap']:.4f}")


if __name__ == "__main__":
    run_stage("cv_summary", main)
