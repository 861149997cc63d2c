"""DVC stage `evaluate@<backbone>-<model>`: verification and retrieval metrics on the held-out subjects."""

import dataclasses

from facesim.core.digest import content_digest
from facesim.core.params import load_section
from facesim.mlops.tracking import stage_run
from facesim.pipeline.evaluate import OUTPUTS, EvaluateParams, evaluate_model, summary_line
from facesim.pipeline.runtime import pin_runtime, run_stage, stage_args


def main() -> None:
    args = stage_args(
        __doc__, "'evaluate' and 'runtime'",
        model="the model's name, <backbone>-<loss> (e.g. dlib-triplet): its registered name is facesim-<name>",
        checkpoint="the train stage's checkpoint (.pt)",
        faces="raw faces directory (data/raw/faces)",
        train_pairs="training pairs: their faces stand against the validation people at a target FAR",
        val_pairs="validation pairs: their faces calibrate the threshold",
        test_pairs="the sampled pairs of the held-out faces",
        **{name: f"output: {what}" for name, what in OUTPUTS.items()})
    pin_runtime(args.params)  # before any tensor
    params = load_section(EvaluateParams, args.params, "evaluate")
    pairs = {"pairs_train": args.train_pairs, "pairs_val": args.val_pairs, "pairs_test": args.test_pairs}
    with stage_run("evaluate", {"model": args.model, **dataclasses.asdict(params)},
                   tags={"data_digest": content_digest(args.faces)}) as run:
        metrics = evaluate_model(args.model, params, args.checkpoint, args.faces, pairs,
                                 {name: getattr(args, name) for name in OUTPUTS}, run)
    print(summary_line(args.model, metrics))


if __name__ == "__main__":
    run_stage("evaluate", main)
