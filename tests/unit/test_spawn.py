"""Children that die with pveoi, started with no Python between fork and exec."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from e2e.spawn import popen, resolve

REPO = Path(__file__).resolve().parents[2]

CHILD = """
import sys, time
import e2e.spawn
if sys.argv[1] == "fallback":
    e2e.spawn.pdeathsig_setpriv = lambda: None
from e2e.spawn import popen
p = popen(["sleep", "120"])
deadline = time.monotonic() + 10
while open(f"/proc/{p.pid}/comm").read().strip() != "sleep" and time.monotonic() < deadline:
    time.sleep(0.01)  # setpriv, until it execs the command
print(p.pid, open(f"/proc/{p.pid}/comm").read().strip(), p.args[0], flush=True)
time.sleep(120)
"""


@pytest.mark.parametrize("how", ["setpriv", "fallback"])
def test_the_child_dies_when_its_parent_is_killed(how: str) -> None:
    harness = subprocess.Popen([sys.executable, "-c", CHILD, how], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert harness.stdout is not None
        pid_text, comm, program = harness.stdout.readline().split()
        pid = int(pid_text)
        pidfd = os.pidfd_open(pid)
        assert comm == "sleep"  # setpriv exec'd the command in place: the pid is the command's
        assert program.endswith("setpriv") == (how == "setpriv")
        assert os.getpgid(pid) == pid  # its own process group
    finally:
        harness.kill()  # SIGKILL: no cleanup runs in the harness
        harness.wait()
    try:
        readable, _, _ = select.select([pidfd], [], [], 10.0)
        if not readable:
            os.kill(pid, signal.SIGKILL)
        assert readable, f"{pid} survived its parent"
    finally:
        os.close(pidfd)


def test_what_cannot_be_run_fails_as_popen_would(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        popen(["pveoi-no-such-program"])
    with pytest.raises(FileNotFoundError):
        resolve(str(tmp_path / "missing"))
    plain = tmp_path / "plain"
    plain.write_text("#!/bin/sh\n")
    with pytest.raises(PermissionError):
        popen([str(plain)])
    assert resolve("sh").endswith("/sh")
