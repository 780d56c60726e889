"""Headless Chromium screenshots of a page (the report's plots, the golden report's look)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest


def screenshot(page: Path, png: Path, size: tuple[int, int]) -> None:
    """Headless Chromium loads ``page`` and saves a screenshot; its whole process group is reaped."""
    browser = shutil.which("chromium") or shutil.which("chromium-headless-shell")
    if browser is None:
        pytest.fail("chromium is missing: run host_config/install-deps.sh (Debian package chromium)")
    with tempfile.TemporaryDirectory(prefix="pveoi-chromium-") as profile:
        proc = subprocess.Popen(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
             f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}", f"--screenshot={png}",
             page.as_uri()],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            out, _ = proc.communicate(timeout=180)
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
    assert png.is_file(), out.decode(errors="replace")[-2000:]
