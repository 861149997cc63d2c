"""The raw dlib descriptor, no head, on the cross-validation folds: the peer the dlib backbone's head must beat.

Every fold exactly as `cv/dvc.yaml` scores it (`facesim.pipeline.cv`): the same subject groups,
the same validation people drawn from the fold's seen people to calibrate the threshold on,
every unordered pair and every retrieval query among the unseen group's faces, the same metric
functions. Only the embedding differs: dlib's 128 numbers as they are (`Preprocess(features="dlib")`,
read from the descriptor cache when computed before). Nothing is trained, so there are no seeds.

    python benchmarks/dlib_raw.py [--params params.yaml] [--faces data/raw/faces] [--out benchmarks/results/dlib_raw.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from facesim.core.data import FaceSet, Preprocess
from facesim.pipeline.calibration import calibrate
from facesim.pipeline.cv import fold_split, unseen_metrics, validation_faces
from facesim.pipeline.cv_params import FOLD_METRICS, load_cv_params, load_operating_point
from facesim.pipeline.faces import list_faces


def raw_folds(params_path: str, faces_dir: str) -> list[dict]:
    cv, _ = load_cv_params(params_path)
    target_far = load_operating_point(params_path).target()  # the pipeline's operating point
    faces = list_faces(faces_dir, "training") + list_faces(faces_dir, "testing")
    everyone = FaceSet.load(faces_dir, [f.path for f in faces], Preprocess(features="dlib"))
    rows = []
    for fold in cv.folds:
        split = fold_split(cv, fold, faces)  # exactly as run_fold splits and samples the fold
        calibration = everyone.subset(validation_faces(split.tables))
        test = everyone.subset([f.path for f in split.unseen])
        training = everyone.subset(sorted({f.path for f in split.seen} - set(calibration.paths)))
        threshold = calibrate(calibration.tensor.numpy(), np.asarray(calibration.subjects), target_far,
                              training.tensor.numpy())
        metrics, _ = unseen_metrics(test.tensor.numpy(), test.subjects, threshold, cv.retrieval_k)
        rows.append({"fold": fold, **metrics})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--faces", default="data/raw/faces")
    parser.add_argument("--out", default="benchmarks/results/dlib_raw.json")
    args = parser.parse_args()
    rows = raw_folds(args.params, args.faces)
    mean = {k: float(np.mean([r[k] for r in rows])) for k in FOLD_METRICS}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"mean": mean, "folds": rows}, indent=2) + "\n", encoding="utf-8")
    print(f"raw dlib descriptor, {len(rows)} folds: EER {mean['eer']:.4%} (per fold "
          f"{' / '.join(format(r['eer'], '.2%') for r in rows)}), AUC {mean['roc_auc']:.5f}, "
          f"P@1 {mean['precision_at_1']:.4f}, P@5 {mean['precision_at_5']:.4f}, mAP {mean['map']:.4f}, "
          f"accuracy {mean['accuracy']:.4f} (best {mean['best_accuracy']:.4f})")


if __name__ == "__main__":
    main()
