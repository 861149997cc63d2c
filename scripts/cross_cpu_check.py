"""Do other CPUs compute the same bits? Train each model briefly here and under QEMU's emulated CPUs.

    .venv/bin/python scripts/cross_cpu_check.py                    # this CPU, then Haswell and EPYC-Rome
    .venv/bin/python scripts/cross_cpu_check.py --cpus Haswell-v4  # QEMU CPU models (qemu-x86_64 -cpu help)
    FACESIM_NATIVE_KERNELS=1 .venv/bin/python scripts/cross_cpu_check.py   # unpinned: expect differences

Each run pins the arithmetic as the stages do (facesim.pipeline.runtime), trains one network of each model
for two epochs with augmentation on the pipeline's faces and sample CSVs (run `dvc repro` first),
and prints a hash of the weights and of the embeddings of every face. The emulated runs need
`qemu-x86_64` (Debian's qemu-user; 7.2 crashes in grid_sample's AVX2 kernel, 10.0 from
bookworm-backports works) and take about 40 s each. Exit status 1 when any hash differs.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
from dataclasses import replace

MODELS = ("contrastive", "triplet")


def fingerprint(model_name: str, epochs: int) -> str:
    """Weights and embeddings hashes after `epochs` of one network of `model_name`, pinned as a stage."""
    import pandas as pd

    from facesim.core.data import FaceSet
    from facesim.core.embedding import embed_all
    from facesim.core.params import load_section
    from facesim.pipeline.runtime import RuntimeParams, pin_arithmetic
    from facesim.training.fit import fit
    from facesim.pipeline.faces import load_tables
    from facesim.training.train_params import TrainParams

    pin_arithmetic(load_section(RuntimeParams, "params.yaml", "runtime"))
    params = load_section(TrainParams, "params.yaml", "train")
    params = replace(params, device="cpu", epochs=epochs,
                     **{model_name: replace(getattr(params, model_name), epochs=epochs, members=1)})
    names = ["pairs_train", "pairs_val"] + (["triplets_train", "triplets_val"] if model_name == "triplet" else [])
    tables = load_tables({name: f"data/processed/{name}.csv" for name in names})
    paths = pd.concat([tables[n][c] for n in tables for c in tables[n].columns
                       if c in ("image1", "image2", "anchor", "positive", "negative")])
    faces = FaceSet.load("data/raw/faces", paths, params.preprocess())
    result = fit(model_name, params, tables, faces, log=lambda line: None)
    weights = b"".join(t.detach().contiguous().numpy().tobytes() for t in result.checkpoint["model_state"].values())
    embeddings = embed_all(result.model, faces.tensor).numpy().tobytes()
    return f"weights {hashlib.sha256(weights).hexdigest()[:16]}  embeddings {hashlib.sha256(embeddings).hexdigest()[:16]}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpus", nargs="*", default=["Haswell-v4", "EPYC-Rome"], help="QEMU CPU models")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--child", choices=MODELS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(fingerprint(args.child, args.epochs))
        return 0

    qemu = shutil.which("qemu-x86_64")
    machines = [("this CPU", [])] + [(cpu, [qemu, "-cpu", cpu]) for cpu in args.cpus if qemu]
    if args.cpus and not qemu:
        print("qemu-x86_64 not found: checking this CPU only (apt-get install qemu-user)", file=sys.stderr)
    differ = False
    for model_name in MODELS:
        seen = set()
        for label, prefix in machines:
            command = prefix + [sys.executable, __file__, "--child", model_name, "--epochs", str(args.epochs)]
            out = subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip()
            seen.add(out)
            print(f"{model_name:12s} {label:12s} {out}", flush=True)
        differ |= len(seen) > 1
    print("DIFFERENT bits across CPUs" if differ else "the same bits on every CPU")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
