"""DVC stage `robustness@<backbone>-<model>`: the held-out faces under ordinary photo changes, at the deployed threshold."""

import argparse

from facesim.core.digest import content_digest
from facesim.pipeline.robustness import evaluate_robustness
from facesim.core.params import load_section
from facesim.mlops.tracking import stage_run
from facesim.pipeline.runtime import RuntimeParams, pin_arithmetic, run_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml", help="params file; this stage reads 'runtime'")
    parser.add_argument("--model", required=True, help="the model's name, <backbone>-<loss> (e.g. dlib-triplet)")
    parser.add_argument("--checkpoint", required=True, help="the train stage's checkpoint (.pt)")
    parser.add_argument("--threshold-from", required=True, dest="threshold_from",
                        help="the evaluate stage's metrics JSON, whose calibrated threshold is deployed")
    parser.add_argument("--faces", required=True, help="raw faces directory (data/raw/faces)")
    parser.add_argument("--test-pairs", required=True, help="the sample stage's test pairs: whose faces are held out")
    parser.add_argument("--metrics", required=True, help="output: acceptance rates (JSON, a DVC metric)")
    parser.add_argument("--table", required=True, help="output: acceptance rates per change (CSV)")
    args = parser.parse_args()
    pin_arithmetic(load_section(RuntimeParams, args.params, "runtime"))  # before any tensor

    outputs = {"metrics": args.metrics, "table": args.table}
    with stage_run("robustness", {"model": args.model}, tags={"data_digest": content_digest(args.faces)}) as run:
        metrics = evaluate_robustness(args.model, args.checkpoint, args.threshold_from, args.faces,
                                      args.test_pairs, outputs, run)
    print(f"robustness@{args.model}: worst same-person acceptance {metrics['worst_same']:.3f}, "
          f"worst different-person acceptance {metrics['worst_diff']:.3f}")


if __name__ == "__main__":
    run_stage("robustness", main)
