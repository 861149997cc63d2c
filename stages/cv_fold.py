"""DVC stage `fold@<backbone>-<model>-<fold>` of cv/dvc.yaml: train one model of one backbone
(`cv.backbones`) on every group of people but one, once per training seed (`cv.seeds`), and score each on the
people of the group it never saw. One MLflow run per seed."""

from facesim.core.digest import content_digest
from facesim.core.model_files import MODELS
from facesim.mlops.tracking import group_key, stage_run
from facesim.pipeline.cv import fold_faces, load_fold, run_fold_seeds
from facesim.pipeline.cv_params import cv_config, load_cv_params, load_operating_point
from facesim.pipeline.runtime import pin_runtime, run_stage, stage_args


def main() -> None:
    args = stage_args(
        __doc__, "'cv', 'train' with 'cv.train' and 'backbones.<backbone>' over it, the operating point of "
                 "'evaluate', 'runtime' and sample.layout",
        backbone="which of cv.backbones (backbones.<name>: its train keys) to train",
        model={"choices": MODELS}, fold={"type": int, "help": "which group of people is held out (1-based)"},
        faces="raw faces directory (data/raw/faces)",
        metrics="output: a folder of this fold's metrics, seed<seed>.json per training seed",
        roc="output: a folder of the ROC points of every unseen pair, seed<seed>.csv per seed (a DVC plot)")
    pin_runtime(args.params)  # before any tensor
    cv, train = load_cv_params(args.params, args.backbone)
    target_far = load_operating_point(args.params).target()
    # the split and the faces, before any MLflow run: a fold that cannot start (weights or dlib missing) opens none
    data = load_fold(cv, train, args.fold, fold_faces(args.params, args.faces), args.faces)
    tags = {"data_digest": content_digest(args.faces)}
    group = group_key(cv_config(cv, train, args.backbone))

    def open_run(seed: int):
        # the fold's own seed (one of cv.seeds) is the seed it trains with, not train.seed
        params = {**train.resolved(args.model), "cv_backbone": args.backbone, "model": args.model,
                  "fold": args.fold, "seed": seed, "target_far": target_far}
        return stage_run("cv_fold", params, tags=tags, group=group, group_name="cv", name_suffix=f"-seed{seed}")

    run_fold_seeds(cv, train, args.model, data, args.metrics, args.roc, target_far, open_run)


if __name__ == "__main__":
    run_stage("cv_fold", main)
