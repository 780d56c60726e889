"""
The guest's side of the measurement: pure parsers of what the guest reports.

- ``/proc/interrupts``: per-CPU counts per row (``LOC``, ``RES``, ``CAL``,
  numbered IRQs such as virtio MSI-X vectors).
- ``/sys/kernel/debug/kvm_pv_eoi`` (from guest_patches/0001): per CPU,
  ``cpu<N> feature=<0|1> enabled=<0|1> skipped=<n> written=<n>``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

PVEOI_DEBUGFS = "/sys/kernel/debug/kvm_pv_eoi"
STATE_MARK = "----pveoi-state----"
# One SSH round trip reads both files; the marker separates them.
STATE_COMMAND = ["sh", "-c", f"cat /proc/interrupts; echo {STATE_MARK}; cat {PVEOI_DEBUGFS} 2>/dev/null || true"]

_PVEOI_LINE = re.compile(r"^cpu(\d+)\s+feature=(\d)\s+enabled=(\d)\s+skipped=(\d+)\s+written=(\d+)\s*$")


@dataclass(frozen=True)
class PvEoiCpu:
    cpu: int
    feature: bool
    enabled: bool
    skipped: int
    written: int


def parse_pveoi_debugfs(text: str) -> dict[int, PvEoiCpu] | None:
    """Parse the guest patch's debugfs file; None if the guest has no such file."""
    cpus = {}
    for line in text.splitlines():
        m = _PVEOI_LINE.match(line.strip())
        if m:
            c = PvEoiCpu(int(m[1]), m[2] == "1", m[3] == "1", int(m[4]), int(m[5]))
            cpus[c.cpu] = c
    return cpus or None


def parse_proc_interrupts(text: str) -> dict[str, list[int]]:
    """``/proc/interrupts`` as ``{row: [count per CPU]}`` (rows with fewer columns are padded)."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        return {}
    ncpu = len(lines[0].split())
    rows: dict[str, list[int]] = {}
    for line in lines[1:]:
        name, _, rest = line.partition(":")
        counts = []
        for field in rest.split()[:ncpu]:
            if not field.isdigit():
                break
            counts.append(int(field))
        if counts:
            rows[name.strip()] = counts + [0] * (ncpu - len(counts))
    return rows


@dataclass(frozen=True)
class GuestState:
    interrupts: dict[str, list[int]]
    pveoi: dict[int, PvEoiCpu] | None

    @classmethod
    def parse(cls, text: str) -> GuestState:
        irq, _, pv = text.partition(STATE_MARK)
        return cls(parse_proc_interrupts(irq), parse_pveoi_debugfs(pv))


def interrupt_delta_per_cpu(before: GuestState, after: GuestState) -> dict[str, list[int]]:
    """Per-row, per-CPU interrupt deltas."""
    out: dict[str, list[int]] = {}
    for name, counts in after.interrupts.items():
        prev = before.interrupts.get(name, [0] * len(counts))
        out[name] = [a - b for a, b in zip(counts, prev, strict=False)]
    return out


def interrupt_delta(before: GuestState, after: GuestState) -> dict[str, int]:
    """Per-row interrupt deltas summed over CPUs, plus ``total``."""
    out: dict[str, int] = {name: sum(d) for name, d in interrupt_delta_per_cpu(before, after).items()}
    out["total"] = sum(v for k, v in out.items() if k not in ("ERR", "MIS"))
    return out


def pveoi_delta(before: GuestState, after: GuestState) -> dict[str, Any] | None:
    """Skipped/written EOI deltas summed over CPUs and per-CPU flags; None without the patch."""
    if before.pveoi is None or after.pveoi is None:
        return None
    skipped = sum(c.skipped for c in after.pveoi.values()) - sum(c.skipped for c in before.pveoi.values())
    written = sum(c.written for c in after.pveoi.values()) - sum(c.written for c in before.pveoi.values())
    return {
        "skipped": skipped,
        "written": written,
        "feature": [c.feature for _, c in sorted(after.pveoi.items())],
        "enabled": [c.enabled for _, c in sorted(after.pveoi.items())],
        "per_cpu": {str(cpu): {"skipped": c.skipped - before.pveoi[cpu].skipped,
                               "written": c.written - before.pveoi[cpu].written}
                    for cpu, c in sorted(after.pveoi.items()) if cpu in before.pveoi},
    }
