"""DVC stage `fetch`: download the ORL faces, verify their digest, publish data/raw/faces."""

import dataclasses

from facesim.core.params import load_section
from facesim.mlops.tracking import stage_run
from facesim.pipeline.fetch import FetchParams, fetch_faces
from facesim.pipeline.runtime import run_stage, stage_args


def main() -> None:
    args = stage_args(__doc__, "its 'fetch' section", out="directory to publish the images to (data/raw/faces)")
    params = load_section(FetchParams, args.params, "fetch")
    with stage_run("fetch", dataclasses.asdict(params)) as run:
        result = fetch_faces(params, args.out, run)
    print(f"fetch: {result.images} images of {result.subjects} subjects from {result.source} "
          f"({result.bytes} bytes, {result.seconds:.1f} s), {result.digest}")


if __name__ == "__main__":
    run_stage("fetch", main)
