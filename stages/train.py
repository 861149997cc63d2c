"""DVC stage `train@<backbone>-<model>`: train the contrastive or the triplet Siamese network on one backbone.

With train.processes > 1 it starts itself again under torchrun, that many processes on this machine
(DistributedDataParallel); under torchrun started by hand (several machines) it joins their group.
Only rank 0 logs to MLflow and writes the outputs."""

import argparse
import contextlib

from facesim.core.dlib_face import DlibUnavailable
from facesim.core.model_files import MODELS
from facesim.core.models import require_backbone
from facesim.core.params import load_section
from facesim.mlops.tracking import NULL_RUN, stage_run
from facesim.pipeline.distributed import process_group, relaunch_if_needed
from facesim.pipeline.fit import resolve_device
from facesim.core.digest import content_digest
from facesim.pipeline.runtime import RuntimeParams, pin_arithmetic, run_stage
from facesim.pipeline.train import train_and_save
from facesim.pipeline.train_params import load_train_params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml",
                        help="params file; this stage reads 'train' with 'backbones.<backbone>' over it, and 'runtime'")
    parser.add_argument("--backbone", required=True, help="which of the backbones section to train on")
    parser.add_argument("--model", required=True, choices=MODELS)
    parser.add_argument("--faces", required=True, help="raw faces directory (data/raw/faces)")
    for kind in ("pairs", "triplets"):  # the model's own kind trains; the validation pairs give ROC AUC per epoch
        parser.add_argument(f"--{kind}-train", required=True, help=f"the sample stage's training {kind} (CSV)")
        parser.add_argument(f"--{kind}-val", required=True, help=f"the sample stage's validation {kind} (CSV)")
    parser.add_argument("--checkpoint", required=True, help="output: model checkpoint (.pt)")
    parser.add_argument("--history", required=True, help="output: per-epoch losses (CSV, a DVC plot)")
    args = parser.parse_args()
    pin_arithmetic(load_section(RuntimeParams, args.params, "runtime"))  # before any tensor

    params = load_train_params(args.params, args.backbone)
    try:  # no MLflow run for a stage that cannot start (weights or dlib missing)
        require_backbone(params)
    except DlibUnavailable as exc:
        raise DlibUnavailable(f"{exc}; or leave the backbone out: dvc exp run -S 'pipeline.backbones=[compact]' "
                              "(pipeline.backbones in params.yaml)") from None
    relaunch_if_needed(params.processes)  # this script again, params.processes times, under torchrun
    kind = "pairs" if args.model == "contrastive" else "triplets"
    samples = {"train": getattr(args, f"{kind}_train"), "val": getattr(args, f"{kind}_val"), "val_pairs": args.pairs_val}
    with process_group(params.processes, resolve_device(params.device)) as world:
        tracking = (stage_run("train", params.resolved(args.model), tags={"data_digest": content_digest(args.faces)})
                    if world.is_main else contextlib.nullcontext(NULL_RUN))
        with tracking as run:
            result = train_and_save(args.model, params, args.faces, samples, args.checkpoint, args.history, run, world)
    if world.is_main:
        print(f"train@{args.backbone}-{args.model}: kept epoch {result.kept_epoch} of {len(result.history)}, "
              f"val_loss {result.kept_val_loss:.4f} -> {args.checkpoint}")


if __name__ == "__main__":
    run_stage("train", main)
