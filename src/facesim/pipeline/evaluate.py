"""Stage `evaluate`: verification and retrieval on the held-out subjects.

The distance threshold is calibrated on the faces of the validation pairs,
over every unordered pair of them and, at a target FAR, against the training people
(`facesim.pipeline.calibration.calibrate`, the one mechanism
the cross-validation folds use too): the largest threshold whose false accept
rate there is at most `evaluate.target_far` (`operating_point: target_far`),
or the best accuracy (`operating_point: best_accuracy`). With
`sample.split_by: subjects` those are people the model never saw in
training, as the users' people will be. It is then applied, unchanged, to the
test pairs: the sampled ones and all unordered pairs of the held-out faces.
Retrieval takes every held-out face as a query against all the others.

The stage (`evaluate_stage`) goes on in the same process, at that threshold: the held-out faces under
ordinary photo changes (`facesim.pipeline.robustness`) and the network as ONNX (`facesim.pipeline.export`);
then it registers both pair verifiers and publishes every output together.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from facesim.core.atomic import staged_outputs
from facesim.core.data import FaceSet, Preprocess
from facesim.core.metrics import (
    headline,
    pair_distances,
    roc_points,
    unordered_pair_distances,
    verification_metrics,
)
from facesim.core.params import require
from facesim.core.retrieval import retrieval_metrics
from facesim.pipeline.calibration import OperatingPoint, calibrate
from facesim.core.paths import natural_key
from facesim.pipeline.faces import Face, held_out_faces, load_tables
from facesim.mlops.registry import register_model
from facesim.mlops.runs import NULL_RUN, Run
from facesim.core.checkpoint import inference_device, load_checkpoint
from facesim.core.embedding import embed_all
from facesim.core.models import EmbeddingNet
from facesim.core.onnx_model import OnnxMetadata
from facesim.pipeline.export import example_faces, export_model
from facesim.pipeline.robustness import evaluate_robustness

PREDICTION_COLUMNS = ["set", "image1", "image2", "subject1", "subject2", "label", "distance", "predicted"]


@dataclass(frozen=True)
class EvaluateParams(OperatingPoint):
    """The evaluate section: the operating point (`OperatingPoint`'s two keys), retrieval and calibration size."""

    retrieval_k: tuple[int, ...]  # precision@k reported for each k
    # the threshold is calibrated on every pair of at most this many validation faces (whole people)
    max_calibration_faces: int
    seed: int  # which validation people calibrate, when they have more faces than that

    def validate(self) -> None:
        super().validate()
        require(len(self.retrieval_k) > 0 and all(k >= 1 for k in self.retrieval_k),
                f"evaluate.retrieval_k must be a non-empty list of integers >= 1, got {list(self.retrieval_k)}")
        require(self.max_calibration_faces >= 2,
                f"evaluate.max_calibration_faces must be >= 2, got {self.max_calibration_faces}")


def calibration_faces(faces: list[Face], max_faces: int, seed: int) -> list[Face]:
    """The validation faces the threshold is calibrated on: all of them, or beyond `max_faces` every face
    of people drawn at random (`seed`) while they fit. Every unordered pair of them is scored, so their
    number bounds the work: 5,000 faces are 12.5M pairs (~1 GB), 40,000 would be 800M."""
    if len(faces) <= max_faces:
        return faces
    counts: dict[str, int] = {}
    for face in faces:
        counts[face.subject] = counts.get(face.subject, 0) + 1
    chosen, total = set(), 0
    for person in np.random.default_rng(seed).permutation(sorted(counts, key=natural_key)):
        if total + counts[person] <= max_faces:
            chosen.add(person)
            total += counts[person]
    return [face for face in faces if face.subject in chosen]


def evaluate_embeddings(
    calibration_embeddings: np.ndarray,
    calibration_subjects: list[str],
    test_embeddings: np.ndarray,
    test_subjects: list[str],
    test_pairs: tuple[np.ndarray, np.ndarray, np.ndarray],
    retrieval_k: tuple[int, ...] = (1, 5),
    target_far: float | None = 0.004,
    other_embeddings: np.ndarray | None = None,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Metrics from embeddings; test pairs are (row1, row2, label) arrays into the test embeddings.

    target_far: the FAR the threshold is calibrated for on the calibration faces; None: the best accuracy.
    other_embeddings: faces of the training people, whose pairs with the calibration faces count as
    different-person pairs at a target FAR (`facesim.pipeline.calibration.calibrate`).
    Returns the metrics dict and, per pair set, the distances (for predictions and plots).
    """
    people = np.asarray(calibration_subjects)
    threshold = calibrate(calibration_embeddings, people, target_far, other_embeddings)
    _, _, cal_same, cal_d = unordered_pair_distances(calibration_embeddings, people)
    test_d = pair_distances(test_embeddings, test_pairs[0], test_pairs[1])
    subjects = np.asarray(test_subjects)
    first, second, same, all_d = unordered_pair_distances(test_embeddings, subjects)
    metrics = {
        "threshold": threshold,
        "target_far": target_far,  # None: the best accuracy
        "validation": verification_metrics(cal_d, cal_same, threshold),
        "test": verification_metrics(test_d, test_pairs[2], threshold),
        "all_pairs": verification_metrics(all_d, same, threshold),
        "retrieval": retrieval_metrics(test_embeddings, subjects, ks=retrieval_k),
    }
    return metrics, {"test": test_d, "all_pairs": all_d,
                     "all_pairs_first": first, "all_pairs_second": second, "all_pairs_label": same}


# The files the evaluate stage writes, by their name in `evaluate_model`'s outputs (its script's options).
OUTPUTS = {
    "metrics": "headline metrics JSON (a DVC metric)",
    "details": "every metric of every pair set (JSON)",
    "roc": "ROC curve CSV of all held-out pairs (a DVC plot)",
    "predictions": "per-pair distances and verdicts (CSV)",
    "embeddings": "held-out face embeddings (CSV)",
}


def evaluate_model(
    model_name: str,
    params: EvaluateParams,
    model: EmbeddingNet,
    checkpoint: dict[str, Any],
    faces_dir: str | os.PathLike,
    pair_paths: dict[str, str | os.PathLike],
    outputs: dict[str, str | os.PathLike],
    run: Run = NULL_RUN,
) -> dict[str, Any]:
    """The evaluate stage's first part: embed, score, write metrics, ROC, predictions and embeddings (all or none).

    model, checkpoint: the trained network and the rest of its checkpoint (`load_checkpoint`).
    outputs: "metrics" (JSON, a DVC metric: the threshold and the `headline` of all held-out pairs),
    "details" (JSON: everything, per pair set), "roc" (CSV fpr,tpr,threshold), "predictions" (CSV),
    "embeddings" (CSV). Returns the details.
    """
    preprocess = Preprocess(**checkpoint["preprocess"])
    tables = load_tables(pair_paths)
    val, test, train = tables["pairs_val"], tables["pairs_test"], tables["pairs_train"]
    test_paths = [f.path for f in held_out_faces(test)]

    validation = held_out_faces(val)  # every face the validation pairs name
    calibration = calibration_faces(validation, params.max_calibration_faces, params.seed)
    calibration_set = FaceSet.load(faces_dir, [f.path for f in calibration], preprocess)
    # the training people's faces (as many at most), set against the validation people at a target FAR
    training = calibration_faces(held_out_faces(train), params.max_calibration_faces, params.seed)
    training_set = FaceSet.load(faces_dir, [f.path for f in training], preprocess)
    test_faces = FaceSet.load(faces_dir, test_paths, preprocess)
    test_rows = (*test_faces.table_rows(test, ("image1", "image2")).numpy().T, test["label"].to_numpy())
    test_embeddings = embed_all(model, test_faces.tensor).numpy()
    metrics, distances = evaluate_embeddings(
        embed_all(model, calibration_set.tensor).numpy(), calibration_set.subjects,
        test_embeddings, test_faces.subjects, test_rows,
        retrieval_k=params.retrieval_k, target_far=params.target(),
        other_embeddings=embed_all(model, training_set.tensor).numpy(),
    )
    threshold = metrics["threshold"]
    metrics = {"model": model_name, "kept_epoch": checkpoint["epoch"], **metrics}
    if len(calibration) < len(validation):  # said where it happens only, so small data sets' files stay as they were
        metrics["calibration"] = {"faces": len(calibration), "of_validation_faces": len(validation),
                                  "people": len({f.subject for f in calibration})}

    first, second = distances["all_pairs_first"], distances["all_pairs_second"]
    predictions = pd.concat([
        test.assign(set="test", distance=distances["test"]),
        pd.DataFrame({
            "set": "all_pairs",
            "image1": np.asarray(test_faces.paths)[first], "image2": np.asarray(test_faces.paths)[second],
            "subject1": np.asarray(test_faces.subjects)[first], "subject2": np.asarray(test_faces.subjects)[second],
            "label": distances["all_pairs_label"], "distance": distances["all_pairs"],
        }),
    ], ignore_index=True)
    predictions["predicted"] = (predictions["distance"] <= threshold).astype(int)
    fpr, tpr, roc_thresholds = roc_points(distances["all_pairs"], distances["all_pairs_label"])
    embeddings = pd.DataFrame(test_embeddings, columns=[f"e{i}" for i in range(test_embeddings.shape[1])])
    embeddings.insert(0, "person", test_faces.subjects)
    embeddings.insert(0, "path", test_faces.paths)

    summary = {"threshold": threshold, **headline(metrics["all_pairs"], metrics["retrieval"])}
    with staged_outputs(outputs["metrics"], outputs["details"], outputs["roc"], outputs["predictions"],
                        outputs["embeddings"]) as (metrics_path, details_path, roc_path, predictions_path,
                                                   embeddings_path):
        metrics_path.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        details_path.write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
        pd.DataFrame({"fpr": fpr, "tpr": tpr, "threshold": roc_thresholds}).to_csv(
            roc_path, index=False, lineterminator="\n", float_format="%.6g")
        # Enough digits that `predicted` agrees with `distance <= threshold` when read back.
        predictions[PREDICTION_COLUMNS].to_csv(predictions_path, index=False, lineterminator="\n",
                                               float_format="%.9g")
        embeddings.to_csv(embeddings_path, index=False, lineterminator="\n", float_format="%.7g")
        run.log_metrics({k: v for k, v in metrics.items() if k != "model"})
        run.log_artifact(details_path, "metrics")
        run.log_artifact(roc_path, "plots")
    return metrics


# What the evaluate stage writes besides `OUTPUTS`, by their name in `evaluate_stage`'s outputs.
STAGE_OUTPUTS = {
    **OUTPUTS,
    "robustness_metrics": "worst same- and different-person acceptance under photo changes (JSON, a DVC metric)",
    "robustness_table": "acceptance rates per photo change (CSV, a DVC plot)",
    "onnx": "the network as ONNX, its preprocessing and threshold in its metadata (.onnx)",
}


def evaluate_stage(
    model_name: str,
    params: EvaluateParams,
    checkpoint_path: str | os.PathLike,
    faces_dir: str | os.PathLike,
    pair_paths: dict[str, str | os.PathLike],
    outputs: dict[str, str | os.PathLike],
    run: Run = NULL_RUN,
) -> tuple[dict[str, Any], dict[str, Any], OnnxMetadata]:
    """The evaluate stage of one model, in one process: `evaluate_model` calibrates the threshold and scores the
    held-out people, `evaluate_robustness` changes their photos at that threshold, `export_model` writes the
    network as ONNX with it. The checkpoint's and the export's pair verifiers go into the registry (tagged with
    the metrics) last, and every output in `STAGE_OUTPUTS` is published only then: a failure anywhere leaves the
    outputs as they were and nothing registered. Returns the metrics, the robustness summary and the
    export's metadata."""
    model, checkpoint = load_checkpoint(checkpoint_path)
    model.to(inference_device(checkpoint))  # CUDA when present, as in training (train.device); the export: the CPU
    examples = example_faces(faces_dir)  # the export's check and input example, and the registered verifiers'
    names = list(STAGE_OUTPUTS)
    with staged_outputs(*(outputs[name] for name in names)) as paths:
        staged = dict(zip(names, paths))
        metrics = evaluate_model(model_name, params, model, checkpoint, faces_dir, pair_paths,
                                 {name: staged[name] for name in OUTPUTS}, run)
        threshold = float(metrics["threshold"])
        robustness = evaluate_robustness(model, checkpoint, threshold, faces_dir, pair_paths["pairs_test"],
                                         {"metrics": staged["robustness_metrics"], "table": staged["robustness_table"]},
                                         run)
        exported = export_model(model_name, model, checkpoint, threshold, outputs["metrics"], examples,
                                staged["onnx"], run)
        example_pair = tuple(examples)
        for model_file in (checkpoint_path, staged["onnx"]):
            register_model(run, model_name, model_file, metrics, example_pair=example_pair)
    return metrics, robustness, exported


def summary_line(model_name: str, metrics: dict[str, Any]) -> str:
    """The one line the evaluate stage prints: the threshold and the held-out people's figures."""
    held_out, validation = metrics["all_pairs"], metrics["validation"]
    return (f"evaluate@{model_name}: threshold {metrics['threshold']:.3f} (validation FAR {validation['far']:.4f}, "
            f"FRR {validation['frr']:.4f}), held-out FAR {held_out['far']:.4f}, FRR {held_out['frr']:.4f}, "
            f"AUC {held_out['roc_auc']:.4f}, EER {held_out['eer']:.4f}, "
            f"test accuracy {metrics['test']['accuracy']:.4f}, precision@1 {metrics['retrieval']['precision_at_1']:.3f}")
