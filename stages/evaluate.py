"""DVC stage `evaluate@<backbone>-<model>`: verification and retrieval on the held-out subjects, how the verdicts
hold under ordinary photo changes, and the model as ONNX, all at the threshold calibrated on people unseen in
training."""

import dataclasses

from facesim.core.digest import content_digest
from facesim.core.params import load_section
from facesim.mlops.tracking import stage_run
from facesim.pipeline.evaluate import STAGE_OUTPUTS, EvaluateParams, evaluate_stage, summary_line
from facesim.pipeline.export import OPSET
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
        **{name: f"output: {what}" for name, what in STAGE_OUTPUTS.items()})
    pin_runtime(args.params)  # before any tensor
    params = load_section(EvaluateParams, args.params, "evaluate")
    pairs = {"pairs_train": args.train_pairs, "pairs_val": args.val_pairs, "pairs_test": args.test_pairs}
    with stage_run("evaluate", {"model": args.model, **dataclasses.asdict(params), "opset": OPSET},
                   tags={"data_digest": content_digest(args.faces)}) as run:
        metrics, robustness, exported = evaluate_stage(args.model, params, args.checkpoint, args.faces, pairs,
                                                       {name: getattr(args, name) for name in STAGE_OUTPUTS}, run)
    print(summary_line(args.model, metrics))
    print(f"  under photo changes: worst same-person acceptance {robustness['worst_same']:.3f}, "
          f"worst different-person acceptance {robustness['worst_diff']:.3f}")
    print(f"  {args.onnx}: opset {OPSET}, {exported.input} in, {exported.embedding_size} numbers out")


if __name__ == "__main__":
    run_stage("evaluate", main)
