"""
How busy the runner was while an A/B ran: what every result records under ``runner.conditions`` so a
reader (and the report) can tell a slow, loaded night from a real drop.

Sampled from procfs at the start and the end of the run, no thread and no subprocess:

- ``load_1m``: the 1-minute load average at the start and at the end, and their mean;
- ``busy``: the fraction of all CPUs' time spent busy over the run (``/proc/stat``, all but idle and
  iowait; pveoi's own QEMUs included), and ``steal``: the fraction stolen by a hypervisor under this
  machine;
- ``cpus``: online CPUs;
- ``other_qemu``: QEMU processes at the start that this pveoi did not start (another A/B, a CI job).

Inside the virtual host the inner runner records the same of L1 (the result's
``host.inner_runner.conditions``).

:func:`unusual` says when a night's conditions are far from the runner's usual ones.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROC = Path("/proc")


@dataclass(frozen=True)
class Snapshot:
    load_1m: float | None
    busy: int  #: busy jiffies, all CPUs
    total: int  #: all jiffies, all CPUs
    steal: int
    other_qemu: int


def _cpu_jiffies(proc: Path) -> tuple[int, int, int]:
    """(busy, total, steal) jiffies summed over the CPUs, from the ``cpu`` line of /proc/stat."""
    try:
        line = (proc / "stat").read_text().splitlines()[0]
        fields = [int(x) for x in line.split()[1:]]
    except (OSError, IndexError, ValueError):
        return 0, 0, 0
    fields += [0] * (8 - len(fields))
    user, nice, system, idle, iowait, irq, softirq, steal = fields[:8]
    busy = user + nice + system + irq + softirq + steal
    return busy, busy + idle + iowait, steal


def _load(proc: Path) -> float | None:
    try:
        return float((proc / "loadavg").read_text().split()[0])
    except (OSError, IndexError, ValueError):
        return None


def _other_qemus(proc: Path, me: int) -> int:
    """QEMU processes that are not this process's descendants."""
    parents: dict[int, int] = {}
    qemus = []
    for d in proc.iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        pid = int(d.name)
        comm, rest = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2:].split()
        parents[pid] = int(rest[1])
        if comm.startswith("qemu-system"):
            qemus.append(pid)

    def mine(pid: int) -> bool:
        seen = 0
        while pid > 1 and seen < 64:
            if pid == me:
                return True
            pid, seen = parents.get(pid, 0), seen + 1
        return False

    return sum(1 for pid in qemus if not mine(pid))


def snapshot(proc: Path = PROC) -> Snapshot:
    busy, total, steal = _cpu_jiffies(proc)
    return Snapshot(_load(proc), busy, total, steal, _other_qemus(proc, os.getpid()))


def summarize(start: Snapshot, end: Snapshot) -> dict[str, Any]:
    """The run's conditions (see the module's docstring)."""
    total = end.total - start.total
    loads = [x for x in (start.load_1m, end.load_1m) if x is not None]
    return {
        "load_1m": {"start": start.load_1m, "end": end.load_1m,
                    "mean": round(statistics.fmean(loads), 2) if loads else None},
        "busy": round((end.busy - start.busy) / total, 4) if total > 0 else None,
        "steal": round((end.steal - start.steal) / total, 4) if total > 0 else None,
        "cpus": os.cpu_count(),
        "other_qemu": max(start.other_qemu, end.other_qemu),
    }


def unusual(night: Mapping[str, Any] | None, usual: Sequence[Mapping[str, Any]]) -> list[str]:
    """Why ``night``'s conditions are far from ``usual`` (the runner's earlier nights): another QEMU
    ran, the load average was more than 1.5 times the usual (and above the CPU count), steal time above
    5 %; empty when nothing stands out or nothing was recorded."""
    if not night:
        return []
    why = []
    if night.get("other_qemu"):
        why.append(f"{night['other_qemu']} other QEMU process(es) ran")
    load = (night.get("load_1m") or {}).get("mean")
    past = [x for c in usual if (x := (c.get("load_1m") or {}).get("mean")) is not None]
    cpus = night.get("cpus") or 1
    if load is not None and load > cpus and (not past or load > 1.5 * statistics.median(past)):
        why.append(f"load average {load:.1f} on {cpus} CPUs" + (f" (usually {statistics.median(past):.1f})"
                                                                 if past else ""))
    steal = night.get("steal")
    if steal is not None and steal > 0.05:
        why.append(f"{steal:.0%} of CPU time stolen by the hypervisor")
    return why
