"""DVC stage `train@<model>`: train the contrastive or the triplet Siamese network.

With train.processes > 1 it starts itself again under torchrun, that many processes on this machine
(DistributedDataParallel); under torchrun started by hand (several machines) it joins their group.
Only rank 0 logs to MLflow and writes the outputs."""

import argparse
import contextlib

from facesim.core.models import MODELS, require_backbone
from facesim.core.params import load_section
from facesim.mlops.tracking import NULL_RUN, stage_run
from facesim.pipeline.distributed import process_group, relaunch_if_needed
from facesim.pipeline.fit import resolve_device
from facesim.pipeline.fetch import content_digest
from facesim.pipeline.runtime import RuntimeParams, pin_arithmetic, run_stage
from facesim.pipeline.train import train_and_save
from facesim.pipeline.train_params import TrainParams


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml", help="params file; this stage reads 'train' and 'runtime'")
    parser.add_argument("--model", required=True, choices=MODELS)
    parser.add_argument("--faces", required=True, help="raw faces directory (data/raw/faces)")
    parser.add_argument("--train", required=True, help="the model's training CSV (pairs or triplets)")
    parser.add_argument("--val", required=True, help="the model's validation CSV (pairs or triplets)")
    parser.add_argument("--val-pairs", required=True, help="validation pairs: ROC AUC after each epoch")
    parser.add_argument("--checkpoint", required=True, help="output: model checkpoint (.pt)")
    parser.add_argument("--history", required=True, help="output: per-epoch losses (CSV, a DVC plot)")
    args = parser.parse_args()
    pin_arithmetic(load_section(RuntimeParams, args.params, "runtime"))  # before any tensor

    params = load_section(TrainParams, args.params, "train")
    require_backbone(params)  # no MLflow run for a stage that cannot start (weights or dlib missing)
    relaunch_if_needed(params.processes)  # this script again, params.processes times, under torchrun
    samples = {"train": args.train, "val": args.val, "val_pairs": args.val_pairs}
    with process_group(params.processes, resolve_device(params.device)) as world:
        tracking = (stage_run("train", params.resolved(args.model), tags={"data_digest": content_digest(args.faces)})
                    if world.is_main else contextlib.nullcontext(NULL_RUN))
        with tracking as run:
            result = train_and_save(args.model, params, args.faces, samples, args.checkpoint, args.history, run, world)
    if world.is_main:
        print(f"train@{args.model}: best epoch {result.best_epoch} of {len(result.history)}, "
              f"val_loss {result.best_val_loss:.4f} -> {args.checkpoint}")


if __name__ == "__main__":
    run_stage("train", main)
