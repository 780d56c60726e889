"""Fault matrix, perf side, with the real perf binary and real processes: perf
missing, perf denied (EACCES on tracefs), a needed tracepoint missing. Each is
a one-line CapabilityError naming the fix, and leaves no perf process or temp dir."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from e2e.errors import CapabilityError, MeasurementError
from e2e.host.capability import probe_tracefs
from e2e.host.hostfacts import list_kvm_tracepoints
from e2e.measure.perf import PerfStat
from e2e.measure.perf_errors import INSTALL_FIX, PERMISSION_FIX, TRACEFS_MOUNT_FIX
from e2e.measure.perf_events import Event, check_required

PERF = shutil.which("perf")
needs_perf = pytest.mark.skipif(PERF is None, reason="perf is not installed (apt-get install linux-perf)")


@pytest.fixture
def target() -> Iterator[int]:
    """A live process to count."""
    proc = subprocess.Popen(["sleep", "600"])
    try:
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


def perf_dirs() -> set[str]:
    return {n for n in os.listdir(tempfile.gettempdir()) if n.startswith(f"pveoi-perf-{os.getpid()}-")}


def start_fails(perf: PerfStat) -> CapabilityError | MeasurementError:
    before = perf_dirs()
    with pytest.raises((CapabilityError, MeasurementError)) as err:
        perf.start()
    assert perf.process_id is None or (perf._proc is not None and perf._proc.poll() is not None), "perf still runs"
    assert perf_dirs() == before, "perf's temp dir was left behind"
    text = str(err.value)
    assert "\n" not in text and "; fix: " in text, text
    return err.value


def test_perf_missing(target: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # a PATH with no perf on it
    err = start_fails(PerfStat([Event("kvm:kvm_exit")], pid=target))
    assert isinstance(err, CapabilityError)
    assert str(err) == f"perf not found: perf; fix: {INSTALL_FIX}"


@needs_perf
def test_perf_denied_eacces(target: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real perf, run as an unprivileged user: tracefs answers EACCES, or, on a fresh machine
    where root's perf never ran, tracefs is not mounted and the unprivileged perf cannot mount it.
    Either state is the host's as found (nothing here mounts or unmounts it); each has its own cause."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to drop to an unprivileged user")
    wrapper = tmp_path / "perf"
    wrapper.write_text(f"#!/bin/sh\nexec setpriv --reuid=nobody --regid=nogroup --clear-groups {PERF} \"$@\"\n")
    wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    err = start_fails(PerfStat([Event("kvm:kvm_exit")], pid=target))
    assert isinstance(err, CapabilityError), err
    assert "perf stat failed during attach" in str(err)
    if probe_tracefs(Path("/")).mounted:
        assert "No permissions" in str(err) and PERMISSION_FIX in str(err), err
    else:
        assert "tracefs is not mounted" in str(err) and str(err).endswith(TRACEFS_MOUNT_FIX), err


@needs_perf
def test_perf_denied_by_perf_event_paranoid_message(target: int, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A perf that fails as perf does on a paranoid host (its exact EACCES text), first on PATH."""
    wrapper = tmp_path / "perf"
    wrapper.write_text(
        "#!/bin/sh\ncat >&2 <<'EOF'\n"
        "Error:\nAccess to performance monitoring and observability operations is limited.\n"
        "Consider adjusting /proc/sys/kernel/perf_event_paranoid setting to open\n"
        "access to performance monitoring and observability operations for processes\n"
        "without CAP_PERFMON, CAP_SYS_PTRACE or CAP_SYS_ADMIN Linux capability.\n"
        "perf_event_paranoid setting is 4:\n  -1: Allow use of (almost) all events by all users\n"
        "EOF\nexit 255\n")
    wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    err = start_fails(PerfStat([Event("kvm:kvm_exit")], pid=target))
    assert isinstance(err, CapabilityError)
    assert "Access to performance monitoring" in str(err) and PERMISSION_FIX in str(err)


@needs_perf
def test_needed_tracepoint_missing_real_perf(target: int) -> None:
    err = start_fails(PerfStat([Event("kvm:kvm_exit"), Event("kvm:kvm_no_such_tracepoint")], pid=target))
    assert isinstance(err, CapabilityError)
    assert "unknown tracepoint" in str(err) and "modprobe kvm" in str(err)


def test_needed_tracepoint_missing_from_tracefs(tmp_path: Path) -> None:
    """A tracefs whose kvm system lacks kvm_pv_eoi: refused before any guest boots."""
    for name in ("kvm_exit", "kvm_entry", "kvm_msr", "kvm_apic", "kvm_eoi", "kvm_inj_virq", "kvm_apic_accept_irq"):
        (tmp_path / "events" / "kvm" / name).mkdir(parents=True)
    available = list_kvm_tracepoints(tmp_path)
    with pytest.raises(MeasurementError) as err:
        check_required(available)
    assert "kvm:kvm_pv_eoi" in str(err.value) and "; fix: " in str(err.value)
    with pytest.raises(CapabilityError, match="; fix: "):
        list_kvm_tracepoints(tmp_path / "not-mounted", fallback=None)
