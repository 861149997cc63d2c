"""A local server in a process of its own: wait until it answers, then stop it with its workers.

`facesim ui` (mlflow ui), the serving tests and benchmarks/serve.py (mlflow models serve) each start a
server with `subprocess.Popen(..., start_new_session=True)`, so that its process group holds it and
its workers; these two functions are what they share.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.request

# a server on this machine: never reached through a proxy that HTTP(S)_PROXY names
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port() -> int:
    """A loopback port the OS just handed out and took back: free, for a server to listen on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_answering(server: subprocess.Popen, url: str, within_s: float, *, poll_s: float = 0.5) -> str | None:
    """Ask `url` every `poll_s` until it answers 200: None then; or why it will not: 'exited with status N'
    when the server's process ended first, 'did not answer within S s' when `within_s` passed first."""
    deadline = time.monotonic() + within_s
    while True:
        with contextlib.suppress(OSError):
            with _DIRECT.open(url, timeout=2) as answer:
                if answer.status == 200:
                    return None
        if server.poll() is not None:
            return f"exited with status {server.returncode}"
        if time.monotonic() > deadline:
            return f"did not answer within {within_s:g} s"
        time.sleep(poll_s)


def stop_group(server: subprocess.Popen, grace_s: float) -> None:
    """Stop the server's process group (started with start_new_session=True: its id is the server's pid):
    SIGTERM, then SIGKILL when it has not ended after `grace_s`. Also when the server itself has ended: its
    workers may not have."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=grace_s)
