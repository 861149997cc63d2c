"""What every measuring child process shares: the data, timing, peak memory and the test metrics."""

from __future__ import annotations

import resource
import statistics
import time
from pathlib import Path

AUC_TARGET = 0.99
TABLES = ("pairs_train", "pairs_val", "pairs_test", "triplets_train", "triplets_val")


def peak_rss_mb(loader_workers: bool) -> dict[str, float]:
    """Peak resident set size of this process, plus the largest of its DataLoader worker children when
    it has some. Without workers the children are only short helpers (`uname -p`, `ldconfig -p`, run by
    Python's platform module and torch), whose peak RSS the kernel reports as the whole forked
    process's at the moment of the fork: counting them would add the process to itself."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024 if loader_workers else 0.0
    return {"peak_rss_mb": own + workers, "peak_rss_main_mb": own, "peak_rss_workers_mb": workers}


def call_seconds(fn, reps: int) -> list[float]:
    """Seconds of each of `reps` timed calls of `fn`, after one warm-up call."""
    fn()
    times = []
    for _ in range(reps):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return times


def best_rate(fn, items: int, reps: int = 5) -> float:
    """Items per second of the median of `reps` timed calls, after one warm-up call."""
    return items / statistics.median(call_seconds(fn, reps))


def seconds_to_auc(history: list[dict]) -> float | None:
    """Wall seconds (training and validation) until validation ROC AUC first reaches the target."""
    elapsed = 0.0
    for row in history:
        elapsed += row["seconds"]
        if row["val_roc_auc"] >= AUC_TARGET:
            return elapsed
    return None


def load_data(args):
    """The sample stage's CSVs by name, every face's path (training and testing), the testing faces' paths."""
    from facesim.pipeline.faces import list_faces, load_tables

    tables = load_tables({name: Path(args.samples) / f"{name}.csv" for name in TABLES})
    test_paths = [f.path for f in list_faces(args.faces, "testing")]
    return tables, [f.path for f in list_faces(args.faces, "training")] + test_paths, test_paths


def pair_arrays(table, faces):
    """(first rows, second rows, labels) of a pair table's faces in `faces`, as numpy arrays."""
    from facesim.training.objectives import pair_rows

    return tuple(pair_rows(table, faces).numpy().T)


def test_metrics(calibration_emb, calibration_subjects, test_emb, test_subjects, test_pairs) -> dict:
    """Held-out metrics at the threshold calibrated on the validation faces, as the evaluate stage does."""
    from facesim.pipeline.evaluate import evaluate_embeddings

    metrics, _ = evaluate_embeddings(calibration_emb, calibration_subjects, test_emb, test_subjects, test_pairs,
                                     retrieval_k=(1, 5))
    return {"test_auc": metrics["all_pairs"]["roc_auc"], "test_accuracy": metrics["all_pairs"]["accuracy"],
            "test_eer": metrics["all_pairs"]["eer"], "precision_at_1": metrics["retrieval"]["precision_at_1"],
            "precision_at_5": metrics["retrieval"]["precision_at_5"]}


def write_results(out: Path, machine: dict, rows: list[dict], lines: list[str]) -> None:
    """A side-by-side run's results: OUT.json (the machine and every row) and OUT.md (`lines`, a table), printed."""
    import json

    out.with_suffix(".json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=2) + "\n")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
