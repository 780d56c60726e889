"""
The host facts every part of pveoi agrees on: which ``kvm:*`` tracepoints are
counted, where tracefs is and what it offers, and the CPU's virtualisation vendor.

One source of truth, a leaf module: it imports nothing of pveoi but
:mod:`e2e.errors` and :mod:`e2e.util.command`, runs no command and probes nothing at import time, so
:mod:`e2e.measure.perf`, :mod:`e2e.run.ab`, :mod:`e2e.host.capability` and :mod:`e2e.host.doctor` all
take these facts from here without pulling in each other.

* :data:`COUNTED` (``kvm:kvm_exit``, ...) and :data:`TRACEPOINTS` (the bare
  names) are what pveoi counts and cannot measure PV EOI without.
* :func:`probe_tracefs` reports tracefs under a root (a fixture tree in tests)
  and never raises; :func:`list_kvm_tracepoints` is the same scan for a caller
  that needs the tracepoints and raises :class:`~e2e.errors.CapabilityError`
  naming the fix when it cannot have them.
* :func:`cpu_flags` and :func:`cpu_vendor` read ``/proc/cpuinfo``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import CapabilityError
from ..util import command

log = logging.getLogger(__name__)

#: The ``kvm:*`` tracepoints pveoi counts, and cannot measure PV EOI without.
COUNTED: list[str] = [
    "kvm:kvm_exit", "kvm:kvm_entry", "kvm:kvm_msr", "kvm:kvm_apic", "kvm:kvm_eoi", "kvm:kvm_pv_eoi",
    "kvm:kvm_inj_virq", "kvm:kvm_apic_accept_irq",
]

#: :data:`COUNTED` without the ``kvm:`` system prefix (the tracefs directory names).
TRACEPOINTS: tuple[str, ...] = tuple(name.removeprefix("kvm:") for name in COUNTED)

#: Where tracefs is looked for, relative to the root, in order (the second is the old debugfs place).
TRACEFS_DIRS: tuple[str, ...] = ("sys/kernel/tracing", "sys/kernel/debug/tracing")

#: The two places on a real host.
TRACEFS = Path("/") / TRACEFS_DIRS[0]
DEBUGFS_TRACING = Path("/") / TRACEFS_DIRS[1]

#: CPU flags of the two hardware virtualisation vendors, as pveoi names them.
VENDORS: tuple[str, ...] = ("svm", "vmx")


@dataclass(frozen=True)
class TracefsFacts:
    """What tracefs says about the kvm tracepoints.

    :param path: the tracefs directory found (as shown to the user), or None.
    :param mounted: it has an ``events`` directory (or we may not look: then
        it is taken as mounted, since an unmounted mount point is world-searchable).
    :param readable: the kvm tracepoint ids can be read by us.
    :param count: the number of ``kvm:*`` tracepoints.
    :param missing: the :data:`TRACEPOINTS` that are absent (empty when
        tracefs is not mounted or not listable: unknown).
    :param listable: we may look into the directory at all.
    :param names: the ``kvm:*`` tracepoints found, bare and sorted.
    :param error: why ``events/kvm`` could not be listed, if it could not.
    """

    path: str | None
    mounted: bool
    readable: bool
    count: int
    missing: tuple[str, ...]
    listable: bool = True
    names: tuple[str, ...] = ()
    error: str | None = None


def scan_tracefs(candidates: Sequence[tuple[Path, str]]) -> TracefsFacts:
    """Look for the kvm tracepoints in the first candidate tracefs that is mounted.

    :param candidates: ``(directory to read, path to show)`` pairs, in order.
    :returns: the facts; never raises.
    """
    for base, shown in candidates:
        try:
            (base / "events").stat()
        except PermissionError:
            # tracefs is root-only (mode 0700) and mounted: sysfs mount points are 0755.
            return TracefsFacts(shown, True, False, 0, (), listable=False)
        except OSError:
            continue
        if not (base / "events").is_dir():
            continue
        kvm = base / "events" / "kvm"
        try:
            names = tuple(sorted(p.name for p in kvm.iterdir() if p.is_dir()))
        except FileNotFoundError:
            names = ()
        except OSError as err:
            log.debug("cannot list %s: %s", kvm, err)
            return TracefsFacts(shown, True, False, 0, TRACEPOINTS, error=err.strerror or str(err))
        sample = "kvm_exit" if "kvm_exit" in names else min(names, default=None)
        readable = sample is not None and os.access(kvm / sample / "id", os.R_OK)
        missing = tuple(t for t in TRACEPOINTS if t not in names)
        return TracefsFacts(shown, True, readable, len(names), missing, names=names)
    return TracefsFacts(None, False, False, 0, ())


def probe_tracefs(root: Path = Path("/")) -> TracefsFacts:
    """Count the ``kvm:*`` tracepoints under *root* and check we can read their ids.

    An unmounted tracefs is reported, not fixed: perf mounts it on first use
    when it runs as root.

    :param root: the probed root (``/`` on a real host, a fixture tree in tests).
    :returns: the tracefs facts; the path is shown as on the host (``/sys/...``).
    """
    return scan_tracefs([(Path(root) / rel, "/" + rel) for rel in TRACEFS_DIRS])


def mount_tracefs(where: Path = TRACEFS) -> bool:
    """As root, mount tracefs where a fresh machine has none yet, as root's perf does on its first
    run (perf mounts it only when it runs, and pveoi looks before that). Idempotent.

    :returns: whether tracefs was mounted by this call.
    """
    if os.geteuid() != 0 or not where.is_dir() or (where / "events").is_dir():
        return False
    proc = command.run(["mount", "-t", "tracefs", "nodev", str(where)], timeout=60, check=False)
    if proc.returncode != 0:
        log.debug("could not mount tracefs at %s: %s", where, proc.stderr.strip())
        return False
    log.info("mounted tracefs at %s (a fresh machine has none until root's perf first runs)", where)
    return True


def list_kvm_tracepoints(tracefs: Path = TRACEFS, *, fallback: Path | None = DEBUGFS_TRACING) -> list[str]:
    """The ``kvm:*`` tracepoints tracefs offers, e.g. ``"kvm:kvm_exit"``.

    Looks for ``events/kvm/<name>/`` directories under ``tracefs``, then under
    ``fallback`` (the old debugfs mount) if ``tracefs`` has no ``events`` directory.

    :param tracefs: the tracefs mount point.
    :param fallback: where to look if ``tracefs`` is not mounted (None: nowhere).
    :returns: the tracepoint names, sorted.
    :raises CapabilityError: tracefs is not mounted or not readable, or it
        has no kvm events (the kvm module is not loaded).
    """
    candidates = [tracefs] + ([fallback] if fallback is not None and fallback != tracefs else [])
    facts = scan_tracefs([(c, str(c)) for c in candidates])
    if not facts.mounted and tracefs == TRACEFS and mount_tracefs(tracefs):
        facts = scan_tracefs([(c, str(c)) for c in candidates])
    if not facts.mounted:
        raise CapabilityError(
            f"tracefs is not mounted (no events/ in {' or '.join(map(str, candidates))})",
            fix=f"mount -t tracefs nodev {tracefs}",
        )
    if not facts.listable:
        raise CapabilityError(f"cannot look into {facts.path}: it is root-only",
                              fix="run as root, or let group kvm read it: host_config/prepare-host.sh --perf")
    kvm = Path(str(facts.path)) / "events" / "kvm"
    if facts.error is not None:
        raise CapabilityError(f"cannot read {kvm}: {facts.error}", fix="run as root")
    if not facts.names:
        raise CapabilityError(
            f"no kvm tracepoints in {kvm}: the kvm module is not loaded",
            fix="load kvm: modprobe kvm_intel or modprobe kvm_amd",
        )
    log.debug("%d kvm tracepoints in %s", len(facts.names), kvm)
    return [f"kvm:{name}" for name in facts.names]


def cpu_flags(cpuinfo: str | None) -> frozenset[str]:
    """The first ``flags`` line of ``/proc/cpuinfo`` as a set.

    :param cpuinfo: the file's content, or None.
    :returns: the flags (empty when unknown).
    """
    for line in (cpuinfo or "").splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


def vendor_of(flags: frozenset[str] | set[str]) -> str:
    """``svm`` or ``vmx`` from a CPU's flags, ``unknown`` with neither.

    :param flags: the CPU flags, as from :func:`cpu_flags`.
    :returns: the vendor's name.
    """
    return next((v for v in VENDORS if v in flags), "unknown")


def cpu_vendor(cpuinfo: str | None = None) -> str:
    """``svm`` or ``vmx`` from the ``/proc/cpuinfo`` flags (``unknown`` otherwise).

    :param cpuinfo: the file's content (None: read this host's ``/proc/cpuinfo``).
    :returns: the vendor's name.
    """
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError as err:
            log.debug("cannot read /proc/cpuinfo: %s", err)
            return "unknown"
    return vendor_of(cpu_flags(cpuinfo))


__all__ = [
    "COUNTED", "DEBUGFS_TRACING", "TRACEFS", "TRACEFS_DIRS", "TRACEPOINTS", "VENDORS", "TracefsFacts",
    "cpu_flags", "cpu_vendor", "list_kvm_tracepoints", "probe_tracefs", "scan_tracefs", "vendor_of",
]
