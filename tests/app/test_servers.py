"""facesim.app.servers: waiting for a local server to answer, and stopping it with its workers."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from facesim.app.servers import free_port, stop_group, wait_until_answering


def start(*command: str, **popen) -> subprocess.Popen:
    return subprocess.Popen(list(command), start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, **popen)


def group_alive(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_server_that_answers_is_ready(tmp_path: Path) -> None:
    (tmp_path / "health").write_text("ok")
    port = free_port()
    server = start(sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", cwd=tmp_path)
    try:
        assert wait_until_answering(server, f"http://127.0.0.1:{port}/health", 60, poll_s=0.1) is None
    finally:
        stop_group(server, 10)
    assert server.returncode is not None


def test_a_server_that_exits_says_its_status() -> None:
    server = start(sys.executable, "-c", "raise SystemExit(3)")
    assert wait_until_answering(server, f"http://127.0.0.1:{free_port()}/", 60, poll_s=0.1) == "exited with status 3"


def test_a_server_that_never_answers_times_out_and_is_stopped_with_its_workers() -> None:
    # a "server" whose worker (a child in its process group) would outlive a plain kill of the parent
    server = start("sh", "-c", "sleep 60 & sleep 60")
    started = time.monotonic()
    assert wait_until_answering(server, f"http://127.0.0.1:{free_port()}/", 0.5, poll_s=0.1) == \
        "did not answer within 0.5 s"
    assert time.monotonic() - started < 10
    assert group_alive(server.pid)
    stop_group(server, 10)
    assert server.returncode == -15  # SIGTERM
    deadline = time.monotonic() + 10
    while group_alive(server.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not group_alive(server.pid)


def test_stopping_a_server_that_already_ended_stops_its_workers() -> None:
    server = start("sh", "-c", "sleep 60 & exit 0")
    server.wait(timeout=10)
    assert group_alive(server.pid)  # the worker lives on in the group
    stop_group(server, 10)
    deadline = time.monotonic() + 10
    while group_alive(server.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not group_alive(server.pid)


def test_a_server_that_ignores_sigterm_is_killed() -> None:
    server = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                               "print('ready', flush=True); time.sleep(60)"],
                              start_new_session=True, stdout=subprocess.PIPE, text=True)
    assert server.stdout.readline() == "ready\n"  # its handler is in place
    stop_group(server, 0.2)
    assert server.returncode == -9  # SIGKILL
    server.stdout.close()
