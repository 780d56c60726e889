"""tests/unit touch no host state and pass in any order.

Every unit test gets its own pveoi cache (``PVEOI_CACHE`` in a temp dir), so
nothing a test runs (``cli.main`` in-process, the ``pveoi`` command in a
subprocess) writes the machine's cache or its run logs; and the process-wide
state ``cli.main`` sets up (the root logger's handlers and level, the thread
and unraisable exception hooks) is put back after each test, so no test sees
what an earlier one left.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def own_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh, empty pveoi cache for this test (a test that needs another one sets its own)."""
    cache = tmp_path_factory.mktemp("pveoi-cache")
    monkeypatch.setenv("PVEOI_CACHE", str(cache))
    return cache


@pytest.fixture(autouse=True)
def process_state_restored() -> Iterator[None]:
    """Put back what ``cli.main`` changes process-wide, closing the run log it opened."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    libraries = {name: (logging.getLogger(name).level, logging.getLogger(name).propagate)
                 for name in ("paramiko", "qemu.qmp", "asyncio", "py.warnings")}
    excepthook, unraisablehook = threading.excepthook, sys.unraisablehook
    yield
    for handler in root.handlers:
        if handler not in handlers:
            handler.close()
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, (lib_level, propagate) in libraries.items():
        logging.getLogger(name).setLevel(lib_level)
        logging.getLogger(name).propagate = propagate
    logging.captureWarnings(False)
    threading.excepthook, sys.unraisablehook = excepthook, unraisablehook
