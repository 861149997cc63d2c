"""DVC stage `train@<backbone>-<model>`: train the contrastive or the triplet Siamese network on one backbone.

With train.processes > 1 it starts itself again under torchrun, that many processes on this machine
(DistributedDataParallel); under torchrun started by hand (several machines) it joins their group.
Only rank 0 logs to MLflow and writes the outputs."""

from facesim.core.model_files import MODELS
from facesim.pipeline.runtime import pin_runtime, run_stage, stage_args
from facesim.pipeline.train import run_train_stage
from facesim.training.train_params import load_train_params


def main() -> None:
    args = stage_args(
        __doc__, "'train' with 'backbones.<backbone>' over it, and 'runtime'",
        backbone="which of the backbones section to train on", model={"choices": MODELS},
        faces="raw faces directory (data/raw/faces)",
        # the model's own kind trains; the validation pairs give ROC AUC per epoch
        **{f"{kind}_{split}": f"the sample stage's {role} {kind} (CSV)" for kind in ("pairs", "triplets")
           for split, role in (("train", "training"), ("val", "validation"))},
        checkpoint="output: model checkpoint (.pt)", history="output: per-epoch losses (CSV, a DVC plot)")
    pin_runtime(args.params)  # before any tensor
    params = load_train_params(args.params, args.backbone)
    kind = "pairs" if args.model == "contrastive" else "triplets"
    samples = {"train": getattr(args, f"{kind}_train"), "val": getattr(args, f"{kind}_val"),
               "val_pairs": args.pairs_val}
    result = run_train_stage(args.model, params, args.faces, samples, args.checkpoint, args.history)
    if result is not None:  # rank 0
        print(f"train@{args.backbone}-{args.model}: kept epoch {result.kept_epoch} of {len(result.history)}, "
              f"val_loss {result.kept_val_loss:.4f} -> {args.checkpoint}")


if __name__ == "__main__":
    run_stage("train", main)
