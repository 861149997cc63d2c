"""DVC stage `summary@<backbone>-<model>` of cv/dvc.yaml: mean, spread and per-fold figures of one model's
cross-validation runs with one backbone (`cv.backbones`)."""

from facesim.core.model_files import MODELS
from facesim.mlops.tracking import group_key, stage_run
from facesim.pipeline.cv_params import cv_config, load_cv_params
from facesim.pipeline.cv_summary import summary_line, write_summary
from facesim.pipeline.runtime import run_stage, stage_args


def main() -> None:
    args = stage_args(__doc__, "'cv' and 'train'", backbone="which of cv.backbones", model={"choices": MODELS},
                      folds="folder of the model's fold metrics JSON files",
                      metrics="output: headline figures (JSON, a DVC metrics file)",
                      details="output: every figure of the summary (JSON)")
    cv, train = load_cv_params(args.params, args.backbone)
    config = cv_config(cv, train, args.backbone)
    with stage_run("cv_summary", config, group=group_key(config), group_name="cv", into_group=True) as run:
        figures = write_summary(cv, args.model, args.folds, args.metrics, args.details, run)
    print(summary_line(f"{args.backbone}-{args.model}", figures))


if __name__ == "__main__":
    run_stage("cv_summary", main)
