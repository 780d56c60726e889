"""The inner runner starts in the virtual host as ``python -S`` (no ``site``: about 2 s of L1's emulated CPU
per interpreter), so its ``PYTHONPATH`` must hold everything ``site`` would have added that it imports."""

from __future__ import annotations

import os
import subprocess
import sys

from e2e.run import runner


def test_python_without_site_imports_the_inner_runner_and_what_it_needs_from_anywhere() -> None:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | runner.inner_env()
    code = ("import sys; assert 'site' not in sys.modules; import e2e.run.inner, e2e.run.ab, e2e.host.conditions, "
            "e2e.report.results, paramiko, qemu.qmp")
    proc = subprocess.run([sys.executable, "-S", "-c", code], cwd="/", env=env, capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_without_that_path_it_could_not() -> None:
    """The check above can fail: ``python -S`` from elsewhere finds neither pveoi nor paramiko by itself."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-S", "-c", "import paramiko"], cwd="/", env=env, capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode != 0 and "ModuleNotFoundError" in proc.stderr
