"""DVC stage `sample`: seeded pair and triplet CSVs for train, validation and test."""

import dataclasses

from facesim.core.digest import content_digest
from facesim.core.params import load_section
from facesim.mlops.tracking import stage_run
from facesim.pipeline.runtime import run_stage, stage_args
from facesim.pipeline.sample import SPLITS, SampleParams, write_samples

KINDS = ("pairs", "triplets")


def main() -> None:
    args = stage_args(__doc__, "its 'sample' section", faces="raw faces directory (data/raw/faces)",
                      **{f"{kind}_{split}": f"output CSV of {split} {kind}" for kind in KINDS for split in SPLITS})
    params = load_section(SampleParams, args.params, "sample")
    outputs = {kind: {split: getattr(args, f"{kind}_{split}") for split in SPLITS} for kind in KINDS}
    with stage_run("sample", dataclasses.asdict(params), tags={"data_digest": content_digest(args.faces)}) as run:
        stats = write_samples(params, args.faces, outputs, run)
    print("sample: " + ", ".join(f"{k}={v:g}" for k, v in stats.items() if k.endswith("_rows")))


if __name__ == "__main__":
    run_stage("sample", main)
