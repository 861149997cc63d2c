"""Headless Chromium for the tests that look at a page as a person would: its DOM after the scripts ran,
or a screenshot. Debian's `chromium` package; tests marked `needs_chromium` skip where it is missing."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

CHROMIUM = next((found for name in ("chromium", "chromium-browser", "google-chrome")
                 if (found := shutil.which(name))), None)
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="headless Chromium is not installed (Debian: apt-get install chromium)")

# No DNS: every host name fails to resolve, so a page that needs anything from the network shows it.
NO_NETWORK = "--host-resolver-rules=MAP * ~NOTFOUND"
RUN_S = 60


def _chromium(url: str, output: list[str], *, offline: bool, budget_ms: int, window: tuple[int, int]) -> str:
    with tempfile.TemporaryDirectory(prefix="facesim-chromium-") as profile:
        command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                   "--disable-background-networking", "--disable-component-update", "--disable-sync",
                   f"--user-data-dir={profile}", f"--window-size={window[0]},{window[1]}",
                   # run the page's scripts, timers and requests until it is idle or this much (virtual) time passed
                   f"--virtual-time-budget={budget_ms}", *([NO_NETWORK] if offline else []), *output, url]
        done = subprocess.run(command, capture_output=True, text=True, timeout=RUN_S)
    if done.returncode != 0:
        pytest.fail(f"chromium exited with {done.returncode}:\n{done.stderr[-2000:]}")
    return done.stdout


def dom(url: str, *, offline: bool = False, budget_ms: int = 15000, window: tuple[int, int] = (1900, 1200)) -> str:
    """The page's DOM, serialised after its scripts ran."""
    return _chromium(url, ["--dump-dom"], offline=offline, budget_ms=budget_ms, window=window)


def screenshot(url: str, png: Path, *, offline: bool = False, budget_ms: int = 15000,
               window: tuple[int, int] = (1600, 1000)) -> Path:
    _chromium(url, [f"--screenshot={png}"], offline=offline, budget_ms=budget_ms, window=window)
    return png
