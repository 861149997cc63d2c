"""DVC stage `export@<backbone>-<model>`: the trained model as ONNX, its preprocessing and threshold in its metadata,
for `facesim verify/search/embed` on onnxruntime without torch."""

import argparse

from facesim.core.params import load_section
from facesim.mlops.tracking import stage_run
from facesim.pipeline.export import OPSET, export_model
from facesim.pipeline.runtime import RuntimeParams, pin_arithmetic, run_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml", help="params file; this stage reads 'runtime'")
    parser.add_argument("--model", required=True, help="the model's name, <backbone>-<loss> (e.g. dlib-triplet)")
    parser.add_argument("--checkpoint", required=True, help="the train stage's checkpoint (.pt)")
    parser.add_argument("--threshold-from", required=True, dest="threshold_from",
                        help="the evaluate stage's metrics JSON, whose calibrated threshold goes into the model")
    parser.add_argument("--faces", required=True,
                        help="raw faces directory (data/raw/faces): its first two faces check the export and are "
                             "the MLflow input example")
    parser.add_argument("--out", required=True, help="output: the ONNX model (.onnx)")
    args = parser.parse_args()
    pin_arithmetic(load_section(RuntimeParams, args.params, "runtime"))  # before any tensor

    with stage_run("export", {"model": args.model, "opset": OPSET}) as run:
        metadata = export_model(args.model, args.checkpoint, args.threshold_from, args.faces, args.out, run)
    print(f"export@{args.model}: {args.out}, opset {OPSET}, {metadata.input} in, {metadata.embedding_size} numbers "
          f"out, threshold {metadata.threshold:.4f}")


if __name__ == "__main__":
    run_stage("export", main)
