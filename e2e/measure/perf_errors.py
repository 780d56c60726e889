"""
perf's failures as pveoi's errors: :func:`perf_error` reads what a ``perf stat``, ``record``
or ``script`` that exited printed, and names the cause and its fix (a
:class:`~e2e.errors.CapabilityError` for permissions and missing tracepoints, else a
:class:`~e2e.errors.PerfError`); the fixes it names are here too.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import Path

from ..errors import CapabilityError, Kind, PerfError, PveoiError
from ..host.hostfacts import probe_tracefs

BENIGN = ("Couldn't record kernel reference relocation symbol", "Symbol resolution may be skewed",
          "Check /proc/kallsyms permission", "perf_event__synthesize_bpf_events:", "Couldn't synthesize bpf events",
          "[ perf record:")
"""Lines perf record prints on every healthy run here (a kernel without kallsyms access for
relocation, without BPF images): never the reason it failed. "Check /proc/kallsyms permission"
once passed for a permission error and turned a silent exit 255 into a false capability verdict."""
PERMISSION_FIX = "sysctl kernel.perf_event_paranoid=-1 or run as root"
INSTALL_FIX = "apt-get install linux-perf (Debian), or pass the path of a perf binary"
TRACEFS_MOUNT_FIX = ("mount -t tracefs nodev /sys/kernel/tracing as root (root's perf does it on first use), "
                     "then give the user access: host_config/prepare-host.sh")


def perf_error(stderr: str, returncode: int | None, argv: Sequence[str], when: str, *,
               root: Path = Path("/")) -> PveoiError:
    """The error for a perf that exited when it should not have.

    Pure but for one look at tracefs under ``root`` when perf names an unknown tracepoint.

    :param stderr: perf's stderr.
    :param returncode: its exit status (negative: killed by that signal).
    :param argv: its command line.
    :param when: what we were doing, e.g. ``"attach"``.
    :param root: where tracefs is looked for (a fixture tree in tests).
    :returns: a CapabilityError (permissions, missing events) or a
        MeasurementError (anything else), naming perf's own line and a fix.
    """
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    lines = [ln for ln in lines if ln not in ("Events disabled", "Events enabled")
             and not any(ln.startswith(w) for w in BENIGN)]
    lower = "\n".join(lines).lower()

    def first(*needles: str) -> str:
        for ln in lines:
            if any(n in ln.lower() for n in needles):
                return ln
        return lines[0] if lines else "(no output)"

    status = f"exit code {returncode}" if returncode is None or returncode >= 0 else (
        f"killed by signal {-returncode}")
    tool = f"perf {argv[1]}" if len(argv) > 1 and argv[1] in ("stat", "record", "script") else "perf stat"
    head = f"{tool} failed during {when} ({status})"
    hint = next((ln.split(":", 1)[1].strip() for ln in lines if ln.lower().startswith("hint:")),
                None)
    if any(n in lower for n in ("permission", "eacces", "perf_event_paranoid",
                                "access to performance monitoring", "not permitted")):
        line = first("permission", "eacces", "paranoid", "access to", "not permitted")
        fix = f"{PERMISSION_FIX} (perf's hint: {hint})" if hint else PERMISSION_FIX
        return CapabilityError(f"{head}: {line}", fix=fix)
    if "problems finding threads" in lower or "no such process" in lower:
        line = first("problems finding threads", "no such process")
        return PerfError(f"{head}: {line}",
                         fix="the pid/tids to count do not exist (any more); pass live ones",
                         kind=Kind.INFRASTRUCTURE)
    if "unknown tracepoint" in lower or "event syntax error" in lower:
        line = first("event syntax error", "unknown tracepoint")
        why = next((ln.lstrip("\\_ ") for ln in lines if ln.startswith("\\___")), None)
        line = f"{line} ({why})" if why and why not in line else line
        if not probe_tracefs(root).mounted:
            # On a fresh machine tracefs is mounted only once root's perf first runs, so a perf
            # that may not mount it sees no tracepoint at all: that is the cause, not a missing kvm.
            return CapabilityError(f"{head}: {line}; tracefs is not mounted", fix=TRACEFS_MOUNT_FIX)
        return CapabilityError(
            f"{head}: {line}",
            fix="load kvm (modprobe kvm_intel or kvm_amd); check `perf list 'kvm:*'`")
    if "failed to set filter" in lower:
        return PerfError(
            f"{head}: {first('failed to set filter')}",
            fix="check the filter against events/<system>/<name>/format in tracefs")
    if returncode == 0:
        return PerfError(
            f"{head}: perf ended by itself: the counted process or threads exited",
            fix="keep the counted process alive until stop()", kind=Kind.INFRASTRUCTURE)
    if not lines and stderr.strip():
        # perf record has been seen to exit 255 during attach with nothing but its usual warnings
        # (twice in some 250 traced runs, both block, before its QEMU's I/O workers were pinned):
        # nothing to fix here, so a fresh attempt, not a capability verdict.
        return PerfError(f"{head}: perf printed no error (only its usual warnings)",
                         fix="nothing to change here: the run is retried; if it repeats, run it by hand: "
                             + shlex.join(argv), kind=Kind.INFRASTRUCTURE)
    return PerfError(f"{head}: {first('error', 'fail')}",
                     fix=f"run it by hand to see why: {shlex.join(argv)}")
