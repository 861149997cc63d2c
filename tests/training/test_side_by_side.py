"""facesim.training.side_by_side: jobs at once, torch on one thread each, the first error stopping the rest."""

from __future__ import annotations

import threading

import pytest
import torch

from facesim.training.side_by_side import LockedRun, Stopped, locked, run_side_by_side

pytestmark = pytest.mark.usefixtures("torch_global_state")


def test_results_come_in_job_order_with_torch_on_one_thread_meanwhile():
    torch.set_num_threads(2)
    seen_threads = []

    def job(value):
        def run(halt: threading.Event) -> int:
            seen_threads.append(torch.get_num_threads())
            return value * value
        return run

    assert run_side_by_side([job(v) for v in (1, 2, 3)]) == [1, 4, 9]
    assert seen_threads == [1, 1, 1] and torch.get_num_threads() == 2


def test_two_jobs_run_at_once_on_two_threads():
    torch.set_num_threads(2)
    both_started = threading.Barrier(2, timeout=10)

    def job(halt: threading.Event) -> str:
        both_started.wait()  # breaks (an error) after 10 s unless the other job runs at the same time
        return "met"

    assert run_side_by_side([job, job]) == ["met", "met"]


def test_the_first_error_is_raised_and_stops_the_other_jobs():
    torch.set_num_threads(2)
    halted = []

    def patient(halt: threading.Event) -> None:
        if not halt.wait(timeout=10):
            raise AssertionError("never told to stop")
        halted.append(True)
        raise Stopped("stopped")

    def failing(halt: threading.Event) -> None:
        raise FloatingPointError("diverged")

    with pytest.raises(FloatingPointError, match="diverged"):
        run_side_by_side([patient, failing])
    assert halted == [True] and torch.get_num_threads() == 2


def test_locked_calls_and_runs_pass_everything_through():
    lock, logged, called = threading.Lock(), [], []

    class Run:
        def log_metrics(self, metrics, step=None):
            assert lock.locked()
            logged.append((metrics, step))

    LockedRun(Run(), lock).log_metrics({"loss": 1.0}, step=3)
    locked(lambda *args: called.append((args, lock.locked())), lock)("a", 2)
    assert logged == [({"loss": 1.0}, 3)] and called == [(("a", 2), True)] and not lock.locked()
