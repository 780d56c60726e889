"""Children that die with pveoi, started with no Python between fork and exec."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from e2e.util.spawn import pdeathsig_setpriv, popen, resolve
from tests.helpers.processes import ended_within

REPO = Path(__file__).resolve().parents[2]

CHILD = """
import sys, time
import e2e.util.spawn
if sys.argv[1] == "fallback":
    e2e.util.spawn.pdeathsig_setpriv = lambda: None
from e2e.util.spawn import popen
p = popen(["sleep", "120"])
deadline = time.monotonic() + 10
while open(f"/proc/{p.pid}/comm").read().strip() != "sleep" and time.monotonic() < deadline:
    time.sleep(0.01)  # setpriv, until it execs the command
print(p.pid, open(f"/proc/{p.pid}/comm").read().strip(), p.args[0], flush=True)
time.sleep(120)
"""


@pytest.mark.parametrize("how", ["setpriv", "fallback"])
def test_the_child_dies_when_its_parent_is_killed(how: str) -> None:
    if how == "setpriv" and pdeathsig_setpriv() is None:
        pytest.skip("no setpriv with --pdeathsig here (util-linux 2.33+); the fallback is tested")
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
    assert ended_within(pidfd, pid), f"{pid} survived its parent"


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


OWNER = """
import sys, time
from e2e.util import spawn
spawn.exit_on_sigterm()
child = sys.argv[1]
print("ready", flush=True)
spawn.run([sys.executable, "-c", child], grace=10)
"""

OWNED = """
import os, signal, sys, time
def bye(signum, frame):
    open(sys.argv[1], "w").write("SIGTERM")  # a child that stops in order (pveoi does on SIGTERM)
    sys.exit(0)
signal.signal(signal.SIGTERM, bye)
print(os.getpid(), file=sys.stderr, flush=True)
open(sys.argv[1] + ".pid", "w").write(str(os.getpid()))
time.sleep(120)
"""


def test_a_child_run_by_a_sigtermed_owner_is_stopped_in_order_not_left(tmp_path: Path) -> None:
    """The soak and the benchmarks run each A/B with spawn.run: SIGTERM to them (a background job,
    which ignores SIGINT) reaches the A/B as SIGTERM, waits for it, and leaves nothing running."""
    import time

    said = tmp_path / "said"
    child = OWNED.replace("sys.argv[1]", repr(str(said)))
    owner = subprocess.Popen([sys.executable, "-c", OWNER, child], cwd=REPO, stdout=subprocess.PIPE, text=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    assert owner.stdout is not None and owner.stdout.readline().strip() == "ready"
    pidfile = Path(f"{said}.pid")
    deadline = time.monotonic() + 20
    while not pidfile.is_file() and time.monotonic() < deadline:
        time.sleep(0.05)
    pid = int(pidfile.read_text())
    pidfd = os.pidfd_open(pid)
    owner.send_signal(signal.SIGTERM)
    assert owner.wait(30) == 143
    assert ended_within(pidfd, pid, 5), "the child outlived its owner"
    assert said.read_text() == "SIGTERM"  # asked to stop, not killed
