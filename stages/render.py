"""DVC stage `render`: PCA, top-k, ROC, distance, loss and robustness figures into reports/figures."""

import dataclasses

from facesim.core.params import load_section
from facesim.mlops.tracking import stage_run
from facesim.pipeline.render import ModelOutputs, RenderParams, render_figures
from facesim.pipeline.runtime import run_stage, stage_args


def main() -> None:
    args = stage_args(
        __doc__, "'render'",
        faces="raw faces directory (data/raw/faces)",
        models={"nargs": "+", "help": "model names, e.g. compact-contrastive dlib-triplet"},
        metrics_dir="reports/metrics: <model>_details.json",
        plots_dir="reports/plots: <model>/{roc,history,robustness}.csv",
        eval_dir="data/eval: <model>/{predictions,embeddings}.csv",
        out="output directory of the figures (reports/figures)")
    params = load_section(RenderParams, args.params, "render")
    models = [ModelOutputs.under(name, args.metrics_dir, args.plots_dir, args.eval_dir) for name in args.models]
    with stage_run("render", dataclasses.asdict(params)) as run:
        names = render_figures(params, models, args.faces, args.out, run)
    print(f"render: {len(names)} figures in {args.out}: {', '.join(names)}")


if __name__ == "__main__":
    run_stage("render", main)
