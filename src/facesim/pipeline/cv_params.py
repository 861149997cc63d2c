"""The `cv` section of params.yaml, and the train params and operating point every fold of it trains and
calibrates with: what the fold stages (`facesim.pipeline.cv`) and the summary stages
(`facesim.pipeline.cv_summary`) share."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any, Literal

from facesim.core.metrics import REPORTED_FARS
from facesim.core.model_files import MODELS
from facesim.core.params import ParamsError, check_override, load_params_file, parse_section, require
from facesim.pipeline.calibration import OperatingPoint
from facesim.training.train_params import TrainParams, backbone_keys, merge

# The figures of one fold the summary averages (all in [0, 1]; lower is better for eer, far, frr).
FOLD_METRICS = ("roc_auc", "eer", "accuracy", "best_accuracy", "far", "frr",
                *(f"tar_at_far_{name}" for name in REPORTED_FARS),
                "precision_at_1", "precision_at_5", "map")


@dataclass(frozen=True)
class CVParams:
    seed: int  # which subjects share a group, and every fold's pairs and triplets
    subject_groups: int  # 40 subjects / 5 = 8 unseen subjects per fold
    folds: tuple[int, ...]  # which groups to hold out, one fold each (1-based)
    seeds: tuple[int, ...]  # training seeds (train.seed): each fold is trained once per seed
    models: tuple[str, ...]
    similar_per_image: int  # training pairs per image, as in the sample stage
    dissimilar_per_image: int
    triplets_per_image: int
    val_size: float
    # "subjects": validation (calibration) people unseen in training, as in the sample stage
    split_by: Literal["pairs", "subjects"]
    retrieval_k: tuple[int, ...]
    backbones: tuple[str, ...]  # names of the top-level backbones section, each one cross-validated

    def validate(self) -> None:
        require(self.subject_groups >= 2, f"cv.subject_groups must be >= 2, got {self.subject_groups}")
        require(len(self.folds) > 0 and all(1 <= f <= self.subject_groups for f in self.folds)
                and len(set(self.folds)) == len(self.folds),
                f"cv.folds must be distinct group numbers from 1 to cv.subject_groups ({self.subject_groups}), "
                f"got {list(self.folds)}")
        require(len(self.seeds) > 0 and len(set(self.seeds)) == len(self.seeds),
                f"cv.seeds must be a non-empty list of distinct integers, got {list(self.seeds)}")
        require(len(self.models) > 0 and all(m in MODELS for m in self.models),
                f"cv.models must be a non-empty list of {', '.join(MODELS)}, got {list(self.models)}")
        require(0 < self.val_size < 1, f"cv.val_size must be between 0 and 1 (exclusive), got {self.val_size}")
        require(len(self.retrieval_k) > 0 and all(k >= 1 for k in self.retrieval_k),
                f"cv.retrieval_k must be a non-empty list of integers >= 1, got {list(self.retrieval_k)}")
        require(len(self.backbones) > 0 and len(set(self.backbones)) == len(self.backbones),
                f"cv.backbones must be a non-empty list of distinct backbone names, got {list(self.backbones)}")


def load_cv_params(path: str | os.PathLike, backbone: str | None = None) -> tuple[CVParams, TrainParams]:
    """The `cv` section, and the `train` section with the keys of `cv.train` put over it, then those of
    `backbones.<backbone>` (when `backbone` is given: one of `cv.backbones`).

    Cross-validation need not fit the pipeline's time budget, so `cv.train` may
    train the same recipe longer (or change any other train key); nested
    sections (`triplet`, `contrastive`) are overridden key by key. The
    top-level `backbones` section names each backbone with the train keys it
    needs (the dlib backbone: its head's size and learning rate), for the
    pipeline and the CV alike.
    """
    data = load_params_file(path)
    for section in ("cv", "train"):
        if not isinstance(data.get(section), dict):
            raise ParamsError(f"{path}: missing section '{section}'")
    raw_cv = dict(data["cv"])
    overrides = raw_cv.pop("train", None) or {}
    cv = parse_section(CVParams, raw_cv, "cv", source=str(path))
    # parsed alone first, so that a bad key is named as cv.train.<key>
    check_override(TrainParams, overrides, "cv.train", source=str(path))
    for name in cv.backbones:
        backbone_keys(data, name, str(path))  # each named backbone exists and sets train keys only
    if backbone is not None:
        if backbone not in cv.backbones:
            raise ParamsError(f"{path}: cv.backbones has no {backbone!r}; it names {', '.join(cv.backbones)}")
        overrides = merge(overrides, backbone_keys(data, backbone, str(path)))
    train = parse_section(TrainParams, merge(data["train"], overrides), "train", source=str(path))
    return cv, train


def load_operating_point(path: str | os.PathLike) -> OperatingPoint:
    """The evaluate section's operating point (`evaluate.operating_point`, `evaluate.target_far`): every fold
    calibrates its threshold as the evaluate stage does."""
    section = load_params_file(path).get("evaluate") or {}
    keys = {k: section[k] for k in ("operating_point", "target_far") if k in section}
    return parse_section(OperatingPoint, keys, "evaluate", source=str(path))


def cv_config(cv: CVParams, train: TrainParams, backbone: str | None = None) -> dict[str, Any]:
    """The resolved config of one cross-validation of one backbone: what its MLflow runs share (and are
    grouped by)."""
    return {"cv": asdict(cv), "backbone": backbone, "train": {m: train.resolved(m) for m in cv.models}}
