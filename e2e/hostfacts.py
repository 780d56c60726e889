"""
Facts about the host that several modules need, known once here: the kvm
tracepoints pveoi counts and the CPU vendor (which names the exit reasons).
"""

from __future__ import annotations

from pathlib import Path

#: The kvm tracepoints every A/B counts over the workload window.
COUNTED = (
    "kvm:kvm_exit", "kvm:kvm_entry", "kvm:kvm_msr", "kvm:kvm_apic", "kvm:kvm_eoi", "kvm:kvm_pv_eoi",
    "kvm:kvm_inj_virq", "kvm:kvm_apic_accept_irq",
)


def cpu_vendor(cpuinfo: str | None = None) -> str:
    """``svm`` or ``vmx`` from /proc/cpuinfo flags (``unknown`` otherwise)."""
    text = cpuinfo if cpuinfo is not None else Path("/proc/cpuinfo").read_text()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = line.split(":", 1)[1].split()
            if "svm" in flags:
                return "svm"
            if "vmx" in flags:
                return "vmx"
    return "unknown"
