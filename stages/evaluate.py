"""DVC stage `evaluate@<backbone>-<model>`: verification and retrieval metrics on the held-out subjects."""

import argparse
import dataclasses

from facesim.pipeline.evaluate import EvaluateParams, evaluate_model
from facesim.core.digest import content_digest
from facesim.core.params import load_section
from facesim.mlops.tracking import stage_run
from facesim.pipeline.runtime import RuntimeParams, pin_arithmetic, run_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml", help="params file; this stage reads 'evaluate' and 'runtime'")
    parser.add_argument("--model", required=True,
                        help="the model's name, <backbone>-<loss> (e.g. dlib-triplet): its registered name is facesim-<name>")
    parser.add_argument("--checkpoint", required=True, help="the train stage's checkpoint (.pt)")
    parser.add_argument("--faces", required=True, help="raw faces directory (data/raw/faces)")
    parser.add_argument("--train-pairs", required=True,
                        help="training pairs: their faces stand against the validation people at a target FAR")
    parser.add_argument("--val-pairs", required=True, help="validation pairs: their faces calibrate the threshold")
    parser.add_argument("--test-pairs", required=True, help="the sampled pairs of the held-out faces")
    parser.add_argument("--metrics", required=True, help="output: headline metrics JSON (a DVC metric)")
    parser.add_argument("--details", required=True, help="output: every metric of every pair set (JSON)")
    parser.add_argument("--roc", required=True, help="output: ROC curve CSV of all held-out pairs (a DVC plot)")
    parser.add_argument("--predictions", required=True, help="output: per-pair distances and verdicts (CSV)")
    parser.add_argument("--embeddings", required=True, help="output: held-out face embeddings (CSV)")
    args = parser.parse_args()
    pin_arithmetic(load_section(RuntimeParams, args.params, "runtime"))  # before any tensor

    params = load_section(EvaluateParams, args.params, "evaluate")
    pairs = {"pairs_train": args.train_pairs, "pairs_val": args.val_pairs, "pairs_test": args.test_pairs}
    outputs = {k: getattr(args, k) for k in ("metrics", "details", "roc", "predictions", "embeddings")}
    config = {"model": args.model, **dataclasses.asdict(params)}
    with stage_run("evaluate", config, tags={"data_digest": content_digest(args.faces)}) as run:
        metrics = evaluate_model(args.model, params, args.checkpoint, args.faces, pairs, outputs, run)
    held_out = metrics["all_pairs"]
    print(f"evaluate@{args.model}: threshold {metrics['threshold']:.3f} (validation FAR {metrics['validation']['far']:.4f}, "
          f"FRR {metrics['validation']['frr']:.4f}), held-out FAR {held_out['far']:.4f}, FRR {held_out['frr']:.4f}, "
          f"AUC {held_out['roc_auc']:.4f}, EER {held_out['eer']:.4f}, "
          f"test accuracy {metrics['test']['accuracy']:.4f}, precision@1 {metrics['retrieval']['precision_at_1']:.3f}")


if __name__ == "__main__":
    run_stage("evaluate", main)
