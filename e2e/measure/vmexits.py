"""
Exit reasons of ``kvm:kvm_exit``, as data tables (like the kernel's
``tools/kvm/kvm_stat``), and the subset pveoi breaks ``kvm_exit`` down by.

The numbers are the hardware exit codes that the tracepoint's ``exit_reason``
field carries (Linux 6.1 ``arch/x86/kvm/trace.h``, ``TRACE_EVENT_KVM_EXIT``),
checked against ``arch/x86/include/uapi/asm/svm.h`` (``SVM_EXIT_*``) and
``arch/x86/include/uapi/asm/vmx.h`` (``EXIT_REASON_*``). One ``perf`` event per
reason: ``-e kvm:kvm_exit --filter 'exit_reason == N'``.

Notes that matter for PV EOI:

* **SVM has one MSR exit for reads and writes** (``SVM_EXIT_MSR``, 0x7c);
  ``exit_info_1`` says which (0 = RDMSR, 1 = WRMSR; ``msr_interception()`` in
  ``arch/x86/kvm/svm/svm.c``). The tracepoint records it as ``info1``, so
  ``exit_reason == 124 && info1 == 1`` counts only writes, e.g. x2APIC EOIs
  (MSR 0x80b): see :func:`breakdown_filters`. VMX has separate ``MSR_READ``
  (31) and ``MSR_WRITE`` (32).
* An xAPIC EOI is an MMIO write to the APIC page: ``APIC_ACCESS`` (44) on
  VMX with "virtualize APIC accesses", else an EPT misconfig/violation; a
  nested page fault (``NPF``, 0x400) on SVM with NPT.
* VMX exit reason 7 is ``INTERRUPT_WINDOW`` in Linux 6.1 (older code and
  papers call it ``PENDING_INTERRUPT``); SVM's counterpart is ``VINTR`` (0x64).
* For VMX the field is the full 32-bit exit reason; the basic reason is the
  low 16 bits, and bit 31 marks a failed VM entry (not counted by ``==``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from types import MappingProxyType

from ..errors import ConfigError

log = logging.getLogger(__name__)

#: AMD SVM exit codes (``SVM_EXIT_*``, Linux 6.1 ``arch/x86/include/uapi/asm/svm.h``).
SVM_EXIT_REASONS: Mapping[str, int] = MappingProxyType({
    "READ_CR0": 0x000,
    "READ_CR3": 0x003,
    "READ_CR4": 0x004,
    "READ_CR8": 0x008,
    "WRITE_CR0": 0x010,
    "WRITE_CR3": 0x013,
    "WRITE_CR4": 0x014,
    "WRITE_CR8": 0x018,
    "READ_DR7": 0x027,
    "WRITE_DR7": 0x037,
    "EXCP_BASE": 0x040,
    "INTR": 0x060,
    "NMI": 0x061,
    "SMI": 0x062,
    "INIT": 0x063,
    "VINTR": 0x064,
    "CR0_SEL_WRITE": 0x065,
    "RDTSC": 0x06E,
    "RDPMC": 0x06F,
    "PUSHF": 0x070,
    "POPF": 0x071,
    "CPUID": 0x072,
    "RSM": 0x073,
    "IRET": 0x074,
    "SWINT": 0x075,
    "INVD": 0x076,
    "PAUSE": 0x077,
    "HLT": 0x078,
    "INVLPG": 0x079,
    "INVLPGA": 0x07A,
    "IOIO": 0x07B,
    "MSR": 0x07C,
    "TASK_SWITCH": 0x07D,
    "FERR_FREEZE": 0x07E,
    "SHUTDOWN": 0x07F,
    "VMRUN": 0x080,
    "VMMCALL": 0x081,
    "VMLOAD": 0x082,
    "VMSAVE": 0x083,
    "STGI": 0x084,
    "CLGI": 0x085,
    "SKINIT": 0x086,
    "RDTSCP": 0x087,
    "ICEBP": 0x088,
    "WBINVD": 0x089,
    "MONITOR": 0x08A,
    "MWAIT": 0x08B,
    "MWAIT_COND": 0x08C,
    "XSETBV": 0x08D,
    "RDPRU": 0x08E,
    "EFER_WRITE_TRAP": 0x08F,
    "CR0_WRITE_TRAP": 0x090,
    "CR4_WRITE_TRAP": 0x094,
    "CR8_WRITE_TRAP": 0x098,
    "INVPCID": 0x0A2,
    "NPF": 0x400,
    "AVIC_INCOMPLETE_IPI": 0x401,
    "AVIC_UNACCELERATED_ACCESS": 0x402,
    "VMGEXIT": 0x403,
})

#: Intel VMX basic exit reasons (``EXIT_REASON_*``, Linux 6.1 ``arch/x86/include/uapi/asm/vmx.h``).
VMX_EXIT_REASONS: Mapping[str, int] = MappingProxyType({
    "EXCEPTION_NMI": 0,
    "EXTERNAL_INTERRUPT": 1,
    "TRIPLE_FAULT": 2,
    "INIT_SIGNAL": 3,
    "SIPI_SIGNAL": 4,
    "INTERRUPT_WINDOW": 7,  # a.k.a. PENDING_INTERRUPT
    "NMI_WINDOW": 8,
    "TASK_SWITCH": 9,
    "CPUID": 10,
    "HLT": 12,
    "INVD": 13,
    "INVLPG": 14,
    "RDPMC": 15,
    "RDTSC": 16,
    "VMCALL": 18,
    "VMCLEAR": 19,
    "VMLAUNCH": 20,
    "VMPTRLD": 21,
    "VMPTRST": 22,
    "VMREAD": 23,
    "VMRESUME": 24,
    "VMWRITE": 25,
    "VMOFF": 26,
    "VMON": 27,
    "CR_ACCESS": 28,
    "DR_ACCESS": 29,
    "IO_INSTRUCTION": 30,
    "MSR_READ": 31,
    "MSR_WRITE": 32,
    "INVALID_STATE": 33,
    "MSR_LOAD_FAIL": 34,
    "MWAIT_INSTRUCTION": 36,
    "MONITOR_TRAP_FLAG": 37,
    "MONITOR_INSTRUCTION": 39,
    "PAUSE_INSTRUCTION": 40,
    "MCE_DURING_VMENTRY": 41,
    "TPR_BELOW_THRESHOLD": 43,
    "APIC_ACCESS": 44,
    "EOI_INDUCED": 45,
    "GDTR_IDTR": 46,
    "LDTR_TR": 47,
    "EPT_VIOLATION": 48,
    "EPT_MISCONFIG": 49,
    "INVEPT": 50,
    "RDTSCP": 51,
    "PREEMPTION_TIMER": 52,
    "INVVPID": 53,
    "WBINVD": 54,
    "XSETBV": 55,
    "APIC_WRITE": 56,
    "RDRAND": 57,
    "INVPCID": 58,
    "VMFUNC": 59,
    "ENCLS": 60,
    "RDSEED": 61,
    "PML_FULL": 62,
    "XSAVES": 63,
    "XRSTORS": 64,
    "UMWAIT": 67,
    "TPAUSE": 68,
    "BUS_LOCK": 74,
    "NOTIFY": 75,
})

#: The reasons pveoi breaks ``kvm_exit`` down by, per vendor, in report order.
#: x2APIC EOI = MSR write; xAPIC EOI = APIC-page MMIO (APIC_ACCESS / EPT_MISCONFIG
#: on VMX, NPF on SVM); HLT and external interrupts show how the guest idles and
#: is interrupted; IO and the interrupt window are the other interrupt-path exits.
#: VMX's PREEMPTION_TIMER is how KVM delivers the emulated LAPIC timer there.
_BREAKDOWN: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "svm": ("MSR", "NPF", "HLT", "INTR", "IOIO", "VINTR"),
    "vmx": ("MSR_WRITE", "APIC_ACCESS", "EPT_MISCONFIG", "HLT", "EXTERNAL_INTERRUPT",
            "PREEMPTION_TIMER", "IO_INSTRUCTION", "INTERRUPT_WINDOW"),
})

#: SVM's ``exit_info_1`` for ``SVM_EXIT_MSR``: 1 = WRMSR, 0 = RDMSR.
SVM_MSR_INFO1_WRITE = 1


def exit_reasons(vendor: str) -> Mapping[str, int]:
    """The whole exit-reason table of a vendor.

    :param vendor: ``"svm"`` (AMD) or ``"vmx"`` (Intel), case-insensitive.
    :returns: a read-only mapping of reason name to exit code.
    :raises ConfigError: for any other vendor.
    """
    key = _vendor(vendor)
    return SVM_EXIT_REASONS if key == "svm" else VMX_EXIT_REASONS


def breakdown_reasons(vendor: str) -> dict[str, int]:
    """The exit reasons pveoi counts ``kvm_exit`` by on this vendor.

    For SVM, ``"MSR"`` counts MSR reads *and* writes (one exit code, 0x7c;
    ``exit_info_1`` tells them apart, see :func:`breakdown_filters`).

    :param vendor: ``"svm"`` (AMD) or ``"vmx"`` (Intel), case-insensitive.
    :returns: reason name -> exit code, in report order (a new dict each call).
    :raises ConfigError: for any other vendor (e.g. ``"unknown"`` on a host
        with neither vmx nor svm, where KVM cannot run standard guests).
    """
    key = _vendor(vendor)
    table = exit_reasons(key)
    return {name: table[name] for name in _BREAKDOWN[key]}


def breakdown_filters(vendor: str) -> dict[str, str]:
    """Tracepoint filters for ``kvm:kvm_exit`` per breakdown reason.

    Like :func:`breakdown_reasons` as ``exit_reason == N`` filters, plus, on
    SVM, ``MSR_WRITE`` (``exit_reason == 124 && info1 == 1``), which counts
    only WRMSR exits (x2APIC EOIs among them) and so matches VMX's MSR_WRITE.

    :param vendor: ``"svm"`` or ``"vmx"``, case-insensitive.
    :returns: reason name -> perf ``--filter`` expression.
    :raises ConfigError: for any other vendor.
    """
    key = _vendor(vendor)
    filters = {name: f"exit_reason == {code}" for name, code in breakdown_reasons(key).items()}
    if key == "svm":
        filters["MSR_WRITE"] = (f"exit_reason == {SVM_EXIT_REASONS['MSR']} && "
                                f"info1 == {SVM_MSR_INFO1_WRITE}")
    return filters


def reason_name(vendor: str, code: int) -> str:
    """The name of an exit code (VMX: of its basic reason, the low 16 bits).

    :param vendor: ``"svm"`` or ``"vmx"``.
    :param code: the tracepoint's ``exit_reason``.
    :returns: the name, or ``"UNKNOWN(0x..)"``.
    :raises ConfigError: for an unknown vendor.
    """
    key = _vendor(vendor)
    wanted = code & 0xFFFF if key == "vmx" else code
    for name, value in exit_reasons(key).items():
        if value == wanted:
            return name
    return f"UNKNOWN({code:#x})"


def _vendor(vendor: str) -> str:
    key = vendor.strip().lower()
    if key not in _BREAKDOWN:
        raise ConfigError(
            f"unknown CPU virtualisation vendor {vendor!r}: "
            "exit reasons exist for svm and vmx only",
            fix="run on a host whose /proc/cpuinfo has the svm or vmx flag "
                "(or use the virtual KVM host)",
        )
    return key
