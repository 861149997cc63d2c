"""Stage `train`: read a model's sample CSVs, fit it (`facesim.training.fit`), write its
checkpoint and loss history, and log both to MLflow.

With train.processes > 1 the stage starts itself again under torchrun, that many processes on this
machine (DistributedDataParallel); under torchrun started by hand (several machines) it joins their
group. Only rank 0 logs to MLflow and writes the outputs (`run_train_stage`).
"""

from __future__ import annotations

import contextlib
import os

import torch

from facesim.core.atomic import staged_outputs
from facesim.core.data import FaceSet
from facesim.core.digest import content_digest
from facesim.core.dlib_face import DlibUnavailable
from facesim.core.models import require_backbone
from facesim.mlops.runs import NULL_RUN, Run
from facesim.mlops.tracking import stage_run
from facesim.pipeline.faces import face_paths, load_tables
from facesim.training.distributed import SINGLE, World, process_group, relaunch_if_needed
from facesim.training.fit import fit
from facesim.training.network import TrainResult, resolve_device
from facesim.training.objectives import OBJECTIVES
from facesim.training.train_params import TrainParams


def train_and_save(
    model_name: str,
    params: TrainParams,
    faces_dir: str | os.PathLike,
    samples: dict[str, str | os.PathLike],
    checkpoint_path: str | os.PathLike,
    history_path: str | os.PathLike,
    run: Run = NULL_RUN,
    world: World = SINGLE,
) -> TrainResult:
    """The train stage: read the CSVs, fit, log to MLflow, then write checkpoint and history (all or none).

    samples: the CSV of each role: "train" and "val" (the model's own pairs or triplets) and
    "val_pairs" (the validation pairs, whose ROC AUC is reported every epoch).
    world: this process among those training together; only rank 0 logs and writes.
    """
    params.loss_params(model_name)  # refuses an unknown model name
    require_backbone(params)  # a missing ImageNet file or dlib stops the stage before any work
    objective = OBJECTIVES[model_name]
    if objective.val_table == "pairs_val" and os.fspath(samples["val"]) != os.fspath(samples["val_pairs"]):
        raise ValueError(f"{model_name} validates on pairs: its validation CSV and the validation pairs must be "
                         f"one file, got {samples['val']} and {samples['val_pairs']}")
    tables = load_tables({objective.train_table: samples["train"], objective.val_table: samples["val"],
                          "pairs_val": samples["val_pairs"]})
    faces = FaceSet.load(faces_dir, face_paths(tables), params.preprocess())
    result = fit(model_name, params, tables, faces, run, world=world)
    if not world.is_main:
        return result
    with staged_outputs(checkpoint_path, history_path) as (staged_ckpt, staged_history):
        torch.save(result.checkpoint, staged_ckpt)
        # wall-clock seconds go to MLflow only: in a DVC-tracked file they would change dvc.lock on every run
        result.history.drop(columns="seconds").to_csv(staged_history, index=False, lineterminator="\n",
                                                      float_format="%.6g")
        run.log_metrics({"kept_epoch": result.kept_epoch, "kept_val_loss": result.kept_val_loss,
                         "epochs_run": len(result.history),
                         "kept_val_roc_auc": float(result.history["val_roc_auc"][result.kept_epoch - 1])})
        run.log_model(result.model, faces.tensor[:2].numpy(),
                      {k: result.checkpoint[k] for k in ("model_name", "epoch", "kept_val_loss")})
        run.log_artifact(staged_history, "plots")
    return result


def run_train_stage(
    model_name: str,
    params: TrainParams,
    faces_dir: str | os.PathLike,
    samples: dict[str, str | os.PathLike],
    checkpoint_path: str | os.PathLike,
    history_path: str | os.PathLike,
) -> TrainResult | None:
    """The train stage as its script runs it: `train_and_save` in each of `params.processes` processes (this
    script again under torchrun, when it was started plainly), rank 0 in an MLflow run. Returns rank 0's result;
    None on the other ranks."""
    try:  # no MLflow run for a stage that cannot start (weights or dlib missing)
        require_backbone(params)
    except DlibUnavailable as exc:
        raise DlibUnavailable(f"{exc}; or leave the backbone out: dvc exp run -S 'pipeline.backbones=[compact]' "
                              "(pipeline.backbones in params.yaml)") from None
    relaunch_if_needed(params.processes)  # this script again, params.processes times, under torchrun
    with process_group(params.processes, resolve_device(params.device)) as world:
        tracking = (stage_run("train", params.resolved(model_name), tags={"data_digest": content_digest(faces_dir)})
                    if world.is_main else contextlib.nullcontext(NULL_RUN))
        with tracking as run:
            result = train_and_save(model_name, params, faces_dir, samples, checkpoint_path, history_path, run, world)
    return result if world.is_main else None
