"""`facesim ui`: MLflow's UI on the project's store, opened on the facesim runs and their headline metrics.

A plain `mlflow ui` (MLflow 3) opens on its GenAI pages, and the experiment's runs table, once found,
shows no metric column. MLflow reads two things from a link, and this module uses both:

- `workflowType=machine_learning` shows the model-training pages (the runs) instead of the GenAI ones;
- `viewStateShareKey=<id>` applies the saved view stored in the experiment tag
  `mlflow.sharedViewState.<id>`: here the headline metric columns. It is also listed by name under
  the UI's *Views* menu, so a plain `mlflow ui` reaches it in two clicks.

Opening the store also closes the runs of this host left RUNNING by processes that are gone, as the
stages do before they log (`facesim.mlops.tracking`), so that a run killed with no stage after it
does not stay RUNNING.

Nothing here runs at import time, and no stage imports this module.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import webbrowser
from pathlib import Path
from typing import Any

# A private helper of tracking.py, reused rather than copied: the same rule closes orphaned runs here
# as before every stage.
from facesim.app.servers import stop_group, wait_until_answering
from facesim.mlops.tracking import EXPERIMENT, _close_orphaned_runs, repo_root, tracking_uri

VIEW_ID = "facesim-runs"  # the saved view's id: experiment tag mlflow.sharedViewState.facesim-runs
VIEW_NAME = "facesim: runs by stage, headline metrics"
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_ID}"
# Metric columns as the stages log them (nested dicts flattened with dots): the evaluate stage's
# verification figures over all held-out pairs, its retrieval precision@1 and calibrated threshold
# (robustness logs the threshold it used too), and the training stage's best validation loss.
HEADLINE_METRICS = ("all_pairs.eer", "all_pairs.roc_auc", "retrieval.precision_at_1", "threshold", "kept_val_loss")
START_S = 90  # a cold `mlflow ui` imports a lot and may migrate the sqlite schema first
STOP_S = 15


class StoreUnreachable(ConnectionError):
    """The tracking store cannot be opened; the message names its URI."""


class PortInUse(OSError):
    """The port `facesim ui` was to listen on is taken; the message names it and a free one."""


def runs_view_state() -> dict[str, Any]:
    """The saved view: the runs table (newest first, run names are the DVC stages) with the headline
    metrics and the stage as columns, in the form MLflow's UI stores and shares its views."""
    return {
        # (MLflow 3.17 ignores a shared view's columnWidths, so the columns keep its default width.)
        "selectedColumns": [*(f"metrics.`{name}`" for name in HEADLINE_METRICS), "tags.`dvc_stage`"],
        "orderByKey": "attributes.start_time",
        "orderByAsc": False,
    }


def view_tag_value(created_ms: int) -> str:
    """The experiment tag's value: MLflow's saved-view envelope (name, creation time, state as JSON text)."""
    return json.dumps({"name": VIEW_NAME, "createdAt": created_ms, "state": json.dumps(runs_view_state())})


def runs_url(base: str, experiment_id: str) -> str:
    """The page of the experiment's runs in the model-training view, with the facesim saved view applied."""
    return (f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs"
            f"?workflowType=machine_learning&viewStateShareKey={VIEW_ID}")


def _is_server(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def _sqlite_file(uri: str) -> Path | None:
    """The database file of a `sqlite:///` URI, None for other stores (or an in-memory database)."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix) or uri[len(prefix):] in ("", ":memory:"):
        return None
    return Path(uri[len(prefix):].split("?", 1)[0])


def _check_reachable(uri: str, from_env: str, timeout_s: float = 5.0) -> None:
    """Fail at once when a tracking server does not answer (MLflow's client would retry for minutes)."""
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s):
            pass
    except urllib.error.HTTPError:
        return  # it answered; a missing /health route is its own business
    except (urllib.error.URLError, OSError) as exc:
        raise StoreUnreachable(f"{uri}{from_env}: tracking server unreachable ({getattr(exc, 'reason', exc)}); "
                               "start it, or unset MLFLOW_TRACKING_URI to browse the repository's own mlflow.db"
                               ) from None


def prepare_store(uri: str) -> str | None:
    """Open the store at `uri`: close this host's orphaned runs and save the facesim view into the
    experiment. Returns the experiment id, or None when the store holds no facesim experiment yet."""
    from_env = " (MLFLOW_TRACKING_URI)" if os.environ.get("MLFLOW_TRACKING_URI") == uri else ""
    database = _sqlite_file(uri)
    if database is not None and not database.is_file():
        # MLflow would create an empty store there (parent folders too): a mistyped path would look empty
        raise StoreUnreachable(f"{uri}{from_env}: no MLflow store there, so no runs to show; run the pipeline "
                               "first (dvc repro), or point MLFLOW_TRACKING_URI at the store that holds the runs")
    if _is_server(uri):
        _check_reachable(uri, from_env)
    try:
        import mlflow  # imported here: `facesim --help` stays instant

        client = mlflow.MlflowClient(tracking_uri=uri)
        experiment = client.get_experiment_by_name(EXPERIMENT)
        if experiment is None:
            return None
        _close_orphaned_runs(client, experiment.experiment_id)
        client.set_experiment_tag(experiment.experiment_id, VIEW_TAG, view_tag_value(int(time.time() * 1000)))
    except Exception as exc:  # MLflow and its database drivers raise many types; all mean the same here
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise StoreUnreachable(f"{uri}{from_env}: cannot open the MLflow tracking store ({first_line}); check the "
                               "URI, or unset MLFLOW_TRACKING_URI to use the repository's own mlflow.db") from exc
    return experiment.experiment_id


def _port_free(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # as the server will: a closed connection lingering in TIME_WAIT does not hold the port
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def check_port(host: str, port: int) -> None:
    """Raise PortInUse, naming `port` and a free one to choose instead, when `host:port` is taken."""
    if _port_free(host, port):
        return
    free = next((p for p in range(port + 1, min(port + 50, 65536)) if _port_free(host, p)), None)
    instead = f"facesim ui --port {free}" if free else "facesim ui --port PORT"
    raise PortInUse(f"port {port} on {host}: already in use (another mlflow ui or server?); choose another port, "
                    f"e.g. {instead}, or stop the program that holds it")


def _browser_at_hand() -> bool:
    """A graphical browser can open: on macOS and Windows, or with a display. Elsewhere Python's
    webbrowser would start a text browser in this terminal, or fail."""
    return sys.platform in ("darwin", "win32") or bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def _open(url: str) -> None:
    with contextlib.suppress(Exception):  # a browser that fails to start costs the user nothing: the URL is printed
        webbrowser.open(url)


def _wait_until_ready(server: subprocess.Popen, base: str, log: Path) -> None:
    problem = wait_until_answering(server, f"{base}/health", START_S)
    if problem is not None:
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
        last = lines[-1].strip() if lines else "no output"
        raise ChildProcessError(f"mlflow ui {problem}: {last}; see its log {log}")


def _announce(what: str, url: str, note: str = "") -> None:
    print(f"{what}\n  {url}{note}", flush=True)


def serve(root: str | os.PathLike | None, *, host: str, port: int, browser: bool) -> str:
    """Start `mlflow ui` on the project's store, print the URL of the facesim runs (and open it where a
    browser is at hand), and serve until Ctrl-C or SIGTERM. With MLFLOW_TRACKING_URI naming a tracking
    server, that server is the UI: print its URL and return. Returns the closing line."""
    from facesim.app.repo import find_root

    root = repo_root(find_root(root))
    uri = tracking_uri(root)
    if _is_server(uri):
        experiment_id = prepare_store(uri)
        url = runs_url(uri, experiment_id) if experiment_id else uri
        _announce("The MLflow tracking server's UI" + (", the facesim runs:" if experiment_id else ":"), url,
                  "" if experiment_id else f"\n  (no '{EXPERIMENT}' experiment there yet: run the pipeline)")
        if browser and _browser_at_hand():
            _open(url)
        return "facesim ui: the runs are on the tracking server above; nothing to stop"

    check_port(host, port)
    experiment_id = prepare_store(uri)
    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host  # a wildcard address is reached locally here
    base = f"http://[{shown}]:{port}" if ":" in shown else f"http://{shown}:{port}"
    log = Path(tempfile.mkstemp(prefix="facesim-ui-", suffix=".log")[1])
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", host,
               "--port", str(port), "--workers", "1"]
    with log.open("w") as out:
        # its own process group: Ctrl-C reaches only this process, which then stops the server and its workers
        server = subprocess.Popen(command, cwd=root, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                  start_new_session=True)
    previous = None
    if threading.current_thread() is threading.main_thread():
        # SIGTERM stops the UI as Ctrl-C does, so that the server is not left running
        previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        _wait_until_ready(server, base, log)
        url = runs_url(base, experiment_id) if experiment_id else base
        _announce(f"MLflow UI on {uri}" + (", the facesim runs:" if experiment_id else ":"), url,
                  "" if experiment_id else f"\n  (no '{EXPERIMENT}' experiment in the store yet: run the pipeline)")
        print(f"(server log: {log}; Ctrl-C stops it)", flush=True)
        if browser and _browser_at_hand():
            _open(url)
        status = server.wait()
        raise ChildProcessError(f"mlflow ui: stopped by itself with status {status}; see its log {log}")
    except KeyboardInterrupt:
        return "facesim ui: stopped"
    finally:
        stop_group(server, STOP_S)
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
