"""Training several networks at once on the CPU, each on one thread: an ensemble's members.

Small networks use a second thread poorly (on 2 cores a half-width compact member trains only ~1.2x faster on 2
threads than on 1), so two members side by side, one thread each, train an ensemble ~1.5x faster. A member's
numbers are then those of one thread, whatever the machine or how many run at once. torch's kernels release
Python's lock, so threads suffice (no processes, nothing to copy or pickle).
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import torch

Result = TypeVar("Result")


class Stopped(RuntimeError):
    """A job gave up because another one running beside it failed."""


def run_side_by_side(jobs: Sequence[Callable[[threading.Event], Result]]) -> list[Result]:
    """Each job's result, in order: as many jobs at a time as torch has threads, torch on one thread meanwhile.

    A job is called with an event that is set once any job failed (or Ctrl-C reached the caller): it should check
    it between steps and raise `Stopped`, so that the first error ends them all promptly and is the one raised.
    """
    threads = torch.get_num_threads()
    halt = threading.Event()
    torch.set_num_threads(1)
    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, min(threads, len(jobs)))) as pool:
            futures = [pool.submit(job, halt) for job in jobs]
            try:
                concurrent.futures.wait(futures, return_when=concurrent.futures.FIRST_EXCEPTION)
                failed = [f.exception() for f in futures if f.done() and f.exception() is not None]
                if failed:
                    halt.set()
                    raise next((e for e in failed if not isinstance(e, Stopped)), failed[0])
                return [future.result() for future in futures]
            except BaseException:
                halt.set()  # the others stop at their next step; leaving the pool waits for them
                raise
    finally:
        torch.set_num_threads(threads)


class LockedRun:
    """The `log_metrics` of a run shared by jobs running side by side, one call at a time."""

    def __init__(self, run: Any, lock: threading.Lock):
        self._run, self._lock = run, lock

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        with self._lock:
            self._run.log_metrics(metrics, step=step)


def locked(function: Callable[..., None], lock: threading.Lock) -> Callable[..., None]:
    """`function`, one call at a time."""
    def call(*args: Any) -> None:
        with lock:
            function(*args)
    return call
