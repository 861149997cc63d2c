"""Subject-disjoint 5-fold cross-validation of both models (not part of `dvc repro`: ~10 minutes on 2 cores).

    python stages/cv.py --faces data/raw/faces --out reports/metrics/cv.json
"""

import argparse
import dataclasses

from facesim.cv import cross_validate, load_cv_params, write_report
from facesim.fetch import content_digest
from facesim.sample import list_faces
from facesim.tracking import stage_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml",
                        help="params file; reads its 'cv' section and 'train' with 'cv.train' over it")
    parser.add_argument("--faces", required=True, help="raw faces directory (data/raw/faces)")
    parser.add_argument("--out", required=True, help="output: mean, std and per-fold metrics (JSON)")
    args = parser.parse_args()

    cv, train = load_cv_params(args.params)
    faces = list_faces(args.faces, "training") + list_faces(args.faces, "testing")
    config = {"cv": dataclasses.asdict(cv), "train": train.resolved("contrastive")}
    with stage_run("cv", config, tags={"data_digest": content_digest(args.faces)}) as run:
        report = cross_validate(cv, train, faces, args.faces, run)
        write_report(report, args.out, run)
    for model, summary in report["models"].items():
        mean, std = summary["mean"], summary["std"]
        print(f"cv@{model}: EER {mean['eer']:.4f} +- {std['eer']:.4f}, AUC {mean['roc_auc']:.4f}, "
              f"P@1 {mean['precision_at_1']:.3f} +- {std['precision_at_1']:.3f}, mAP {mean['map']:.3f}")


if __name__ == "__main__":
    main()
