"""DVC stage `sample`: seeded pair and triplet CSVs for train, validation and test."""

import argparse
import dataclasses

from facesim.core.digest import content_digest
from facesim.core.params import load_section
from facesim.pipeline.sample import SPLITS, SampleParams, write_samples
from facesim.mlops.tracking import stage_run
from facesim.pipeline.runtime import run_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml", help="params file; this stage reads its 'sample' section")
    parser.add_argument("--faces", required=True, help="raw faces directory (data/raw/faces)")
    for kind in ("pairs", "triplets"):
        for split in SPLITS:
            parser.add_argument(f"--{kind}-{split}", required=True, help=f"output CSV of {split} {kind}")
    args = parser.parse_args()

    params = load_section(SampleParams, args.params, "sample")
    outputs = {kind: {split: getattr(args, f"{kind}_{split}") for split in SPLITS} for kind in ("pairs", "triplets")}
    with stage_run("sample", dataclasses.asdict(params), tags={"data_digest": content_digest(args.faces)}) as run:
        stats = write_samples(params, args.faces, outputs, run)
    print("sample: " + ", ".join(f"{k}={v:g}" for k, v in stats.items() if k.endswith("_rows")))


if __name__ == "__main__":
    run_stage("sample", main)
