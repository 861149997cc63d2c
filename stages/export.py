"""DVC stage `export@<backbone>-<model>`: the trained model as ONNX, its preprocessing and threshold in its metadata,
for `facesim verify/search/embed` on onnxruntime without torch."""

from facesim.mlops.tracking import stage_run
from facesim.pipeline.export import OPSET, export_model
from facesim.pipeline.runtime import pin_runtime, run_stage, stage_args


def main() -> None:
    args = stage_args(
        __doc__, "'runtime'",
        model="the model's name, <backbone>-<loss> (e.g. dlib-triplet)",
        checkpoint="the train stage's checkpoint (.pt)",
        threshold_from="the evaluate stage's metrics JSON, whose calibrated threshold goes into the model",
        details="the evaluate stage's detailed metrics JSON: the registry's tags of the ONNX verifier",
        faces="raw faces directory (data/raw/faces): its first two faces check the export and are the MLflow input "
              "example",
        out="output: the ONNX model (.onnx)")
    pin_runtime(args.params)  # before any tensor
    with stage_run("export", {"model": args.model, "opset": OPSET}) as run:
        metadata = export_model(args.model, args.checkpoint, args.threshold_from, args.details, args.faces, args.out, run)
    print(f"export@{args.model}: {args.out}, opset {OPSET}, {metadata.input} in, {metadata.embedding_size} numbers "
          f"out, threshold {metadata.threshold:.4f}")


if __name__ == "__main__":
    run_stage("export", main)
