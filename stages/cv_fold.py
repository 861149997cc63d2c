"""DVC stage `fold@<backbone>-<model>-<fold>-<seed>` of cv/dvc.yaml: train one model of one backbone
(`cv.backbones`) on every group of people but one, with one training seed, and score it on the people of the
group it never saw."""

from facesim.core.digest import content_digest
from facesim.core.model_files import MODELS
from facesim.core.models import require_backbone
from facesim.mlops.tracking import group_key, stage_run
from facesim.pipeline.cv import fold_faces, run_fold, write_fold
from facesim.pipeline.cv_params import cv_config, load_cv_params, load_operating_point
from facesim.pipeline.runtime import pin_runtime, run_stage, stage_args


def main() -> None:
    args = stage_args(
        __doc__, "'cv', 'train' with 'cv.train' and 'backbones.<backbone>' over it, the operating point of "
                 "'evaluate', 'runtime' and sample.layout",
        backbone="which of cv.backbones (backbones.<name>: its train keys) to train",
        model={"choices": MODELS}, fold={"type": int, "help": "which group of people is held out (1-based)"},
        seed={"type": int, "help": "the training seed (one of cv.seeds)"},
        faces="raw faces directory (data/raw/faces)", metrics="output: this fold's metrics (JSON)",
        roc="output: ROC points of every unseen pair (CSV, a DVC plot)")
    pin_runtime(args.params)  # before any tensor
    cv, train = load_cv_params(args.params, args.backbone)
    target_far = load_operating_point(args.params).target()
    require_backbone(train)  # no MLflow run for a fold that cannot start (weights or dlib missing)
    faces = fold_faces(args.params, args.faces)
    # the fold's own seed (one of cv.seeds) is the seed it trains with, not train.seed
    run_params = {**train.resolved(args.model), "cv_backbone": args.backbone, "model": args.model, "fold": args.fold,
                  "seed": args.seed, "target_far": target_far}
    with stage_run("cv_fold", run_params, tags={"data_digest": content_digest(args.faces)},
                   group=group_key(cv_config(cv, train, args.backbone)), group_name="cv") as run:
        result = run_fold(cv, train, args.model, args.fold, args.seed, faces, args.faces, target_far)
        write_fold(result, args.metrics, args.roc, run)


if __name__ == "__main__":
    run_stage("cv_fold", main)
