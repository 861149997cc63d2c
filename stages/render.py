"""DVC stage `render`: PCA, top-k, ROC, distance, loss and robustness figures into reports/figures."""

import argparse
import dataclasses
from pathlib import Path

from facesim.core.params import load_section
from facesim.pipeline.render import ModelOutputs, RenderParams, render_figures
from facesim.mlops.tracking import stage_run
from facesim.pipeline.runtime import run_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml", help="params file; this stage reads 'render'")
    parser.add_argument("--faces", required=True, help="raw faces directory (data/raw/faces)")
    parser.add_argument("--models", nargs="+", required=True, help="model names, e.g. contrastive triplet")
    parser.add_argument("--metrics-dir", required=True, help="reports/metrics: <model>_details.json")
    parser.add_argument("--plots-dir", required=True, help="reports/plots: <model>/{roc,history,robustness}.csv")
    parser.add_argument("--eval-dir", required=True, help="data/eval: <model>/{predictions,embeddings}.csv")
    parser.add_argument("--out", required=True, help="output directory of the figures (reports/figures)")
    args = parser.parse_args()

    params = load_section(RenderParams, args.params, "render")
    models = [
        ModelOutputs(
            name=name,
            metrics=Path(args.metrics_dir) / f"{name}_details.json",
            roc=Path(args.plots_dir) / name / "roc.csv",
            history=Path(args.plots_dir) / name / "history.csv",
            predictions=Path(args.eval_dir) / name / "predictions.csv",
            embeddings=Path(args.eval_dir) / name / "embeddings.csv",
            robustness=Path(args.plots_dir) / name / "robustness.csv",
        )
        for name in args.models
    ]
    with stage_run("render", dataclasses.asdict(params)) as run:
        names = render_figures(params, models, args.faces, args.out, run)
    print(f"render: {len(names)} figures in {args.out}: {', '.join(names)}")


if __name__ == "__main__":
    run_stage("render", main)
