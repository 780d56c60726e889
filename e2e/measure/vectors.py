"""
Naming interrupt vectors: the guest's view of its interrupts (:class:`GuestView`, read before the
workload by :data:`GUEST_VIEW_SCRIPT`: whether it takes window markers, and each IRQ's vector and
target CPU) and x86's system vectors, so a ``cpu:vector`` of the trace gets the name
``/proc/interrupts`` counts it under.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass

from .markers import MARK_FILE

#: x86 system vectors (arch/x86/include/asm/irq_vectors.h, stable since 4.x) by the row
#: /proc/interrupts counts them in.
SYSTEM_VECTORS: Mapping[int, str] = {
    0xFF: "SPU", 0xFE: "ERR", 0xFD: "RES", 0xFC: "CAL", 0xFB: "CAL", 0xFA: "TRM", 0xF9: "THR",
    0xF8: "reboot", 0xF7: "PLT", 0xF6: "IWI", 0xF4: "DFR", 0xF3: "HYP", 0xF2: "PIN", 0xF1: "PIW",
    0xF0: "NPI", 0xEF: "managed-shutdown", 0xEC: "LOC", 0x20: "irq-move-cleanup",
}


#: Appended to the guest state command (:data:`e2e.measure.guest_counters.STATE_COMMAND`, which has just printed
#: /proc/interrupts): whether the guest takes markers, and each IRQ's vector and target CPU from
#: CONFIG_GENERIC_IRQ_DEBUGFS (``N:   Vector:    33`` lines, by ``grep -H``).
GUEST_VIEW_MARK = "----pveoi-irqs----"
GUEST_VIEW_SCRIPT = (f"echo {GUEST_VIEW_MARK}; test -w {MARK_FILE} && echo pveoi-marks; "
                     "cd /sys/kernel/debug/irq/irqs 2>/dev/null && "
                     "grep -H -E '^ *(Vector|Target|Previous vector|Previous target):' * 2>/dev/null; true")


@dataclass(frozen=True)
class GuestView:
    """The guest's view of its interrupts, read before the workload."""

    marks: bool
    names: Mapping[str, str]

    @classmethod
    def split(cls, text: str, proc_interrupts: str) -> tuple[str, GuestView]:
        """(what came before :data:`GUEST_VIEW_SCRIPT`'s output, the view), naming IRQs from the
        guest's ``proc_interrupts`` text."""
        before, _, view = text.partition(GUEST_VIEW_MARK)
        lines = view.strip().splitlines()
        marks = bool(lines) and lines[0].strip() == "pveoi-marks"
        irqs = "\n".join(lines[1:] if marks else lines)
        return before, cls(marks, vector_namer(irqs, proc_interrupts))


def irq_vectors(text: str) -> dict[tuple[int, int], int]:
    """``(cpu, vector) -> irq`` from ``grep -H`` of the guest's ``/sys/kernel/debug/irq/irqs/*``
    (``N:   Vector:    33``), current and previous targets."""
    fields: dict[int, dict[str, int]] = defaultdict(dict)
    for line in text.splitlines():
        head, _, rest = line.partition(":")
        key, _, value = rest.strip().partition(":")
        if head.strip().isdigit() and value.strip().isdigit():
            fields[int(head)][key.strip()] = int(value)
    out: dict[tuple[int, int], int] = {}
    for irq, f in fields.items():
        for v, t in (("Vector", "Target"), ("Previous vector", "Previous target")):
            if v in f and t in f:
                out[(f[t], f[v])] = irq
    return out


def irq_names(proc_interrupts: str) -> dict[int, str]:
    """``irq -> name`` (its action, e.g. ``virtio1-input.0``) from /proc/interrupts' numbered rows."""
    lines = [ln for ln in proc_interrupts.splitlines() if ln.strip()]
    if not lines:
        return {}
    ncpu = len(lines[0].split())
    out = {}
    for line in lines[1:]:
        head, _, rest = line.partition(":")
        if not head.strip().isdigit():
            continue
        words = rest.split()[ncpu:]
        if words:
            out[int(head)] = words[-1]
    return out


def vector_namer(irq_debugfs: str, proc_interrupts: str) -> dict[str, str]:
    """``"cpu:vector" -> name`` from the guest's own view (JSON-able keys)."""
    names = irq_names(proc_interrupts)
    return {f"{cpu}:{vector}": names.get(irq, f"irq{irq}") for (cpu, vector), irq in irq_vectors(irq_debugfs).items()}


def vector_name(vector: int, cpu: int, names: Mapping[str, str]) -> str:
    if vector in SYSTEM_VECTORS:
        return SYSTEM_VECTORS[vector]
    return names.get(f"{cpu}:{vector}", "?" if vector >= 0 else "none")
