"""One process of a distributed test training (tests/training/test_distributed.py), started by torchrun.

    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/training/ddp_worker.py OUT

Each process builds the tiny faces of helpers.py and tables itself (they are the same bytes on every
process), trains every case of `CASES` with `facesim.training.fit.fit` in the process group and
saves its result as OUT/<case>-rank<r>.pt; then runs `train_and_save` with outputs named after
its rank (OUT/written-rank<r>/), so the test can see which ranks wrote.
`cases(world)` run in one process too give the reference.
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: helpers.py

from helpers import RecordingRun, tiny_fit_params, tiny_training_data, train_samples, write_tiny_samples  # noqa: E402
from facesim.training.distributed import process_group  # noqa: E402
from facesim.training.fit import fit  # noqa: E402
from facesim.pipeline.train import train_and_save  # noqa: E402

BASE = tiny_fit_params(augment=True)

# (model, params): P x K batches with every pair, an ensemble of 2 with semihard triplets; the pair CSV;
# all augmented
CASES = {
    "contrastive-all": ("contrastive", dataclasses.replace(
        BASE, contrastive=dataclasses.replace(BASE.contrastive, mining="all", people_per_batch=4))),
    "triplet-semihard": ("triplet", dataclasses.replace(
        BASE, triplet=dataclasses.replace(BASE.triplet, mining="semihard", people_per_batch=4, members=2))),
    "contrastive-csv": ("contrastive", BASE),
}


def train_cases(directory: Path, processes: int = 1, world=None) -> dict[str, dict]:
    """{case: {"state": weights, "history": per-epoch losses}} of every case."""
    _, tables, faces = tiny_training_data(directory)
    results = {}
    for name, (model, params) in CASES.items():
        params = dataclasses.replace(params, processes=processes)
        kwargs = {} if world is None else {"world": world}
        result = fit(model, params, tables, faces, log=lambda line: None, **kwargs)
        results[name] = {"state": result.checkpoint["model_state"], "history": result.history,
                         "params": result.checkpoint["params"]}
    return results


def main(out: Path) -> None:
    torch.set_num_threads(1)
    with process_group(2, torch.device("cpu")) as world:
        work = Path(tempfile.mkdtemp(prefix=f"rank{world.rank}-"))
        for name, result in train_cases(work, processes=world.size, world=world).items():
            torch.save(result, out / f"{name}-rank{world.rank}.pt")
        # the stage's work: only rank 0 writes outputs and logs
        samples = train_samples(write_tiny_samples(work / "faces", work / "samples"))
        written = out / f"written-rank{world.rank}"
        run = RecordingRun()
        params = dataclasses.replace(CASES["contrastive-all"][1], processes=world.size, epochs=1)
        train_and_save("contrastive", params, work / "faces", samples, written / "model.pt", written / "history.csv",
                       run, world=world)
        (out / f"logged-rank{world.rank}.txt").write_text(f"{len(run.metrics)} {len(run.models)} {len(run.artifacts)}\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
