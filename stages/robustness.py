"""DVC stage `robustness@<backbone>-<model>`: the held-out faces under ordinary photo changes, at the deployed threshold."""

from facesim.core.digest import content_digest
from facesim.mlops.tracking import stage_run
from facesim.pipeline.robustness import evaluate_robustness
from facesim.pipeline.runtime import pin_runtime, run_stage, stage_args


def main() -> None:
    args = stage_args(
        __doc__, "'runtime'",
        model="the model's name, <backbone>-<loss> (e.g. dlib-triplet)",
        checkpoint="the train stage's checkpoint (.pt)",
        threshold_from="the evaluate stage's metrics JSON, whose calibrated threshold is deployed",
        faces="raw faces directory (data/raw/faces)",
        test_pairs="the sample stage's test pairs: whose faces are held out",
        metrics="output: acceptance rates (JSON, a DVC metric)",
        table="output: acceptance rates per change (CSV)")
    pin_runtime(args.params)  # before any tensor
    outputs = {"metrics": args.metrics, "table": args.table}
    with stage_run("robustness", {"model": args.model}, tags={"data_digest": content_digest(args.faces)}) as run:
        metrics = evaluate_robustness(args.model, args.checkpoint, args.threshold_from, args.faces,
                                      args.test_pairs, outputs, run)
    print(f"robustness@{args.model}: worst same-person acceptance {metrics['worst_same']:.3f}, "
          f"worst different-person acceptance {metrics['worst_diff']:.3f}")


if __name__ == "__main__":
    run_stage("robustness", main)
