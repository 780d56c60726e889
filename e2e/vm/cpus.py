"""
A machine's vCPUs: their threads (:class:`VCpu`, from QMP ``query-cpus-fast``), and
where they are when a machine stops making progress (:func:`sample`: each vCPU's
RIP and HLT from HMP ``info registers``, twice 1 s apart, as :class:`CpuSample`).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import PveoiError


@dataclass(frozen=True)
class VCpu:
    index: int
    thread_id: int
    qom_path: str


_RIP = re.compile(r"\b[RE]IP=([0-9a-fA-F]+)")  # EIP= while the vCPU is not yet in long mode (firmware, boot)
_HLT = re.compile(r"\bHLT=(\d)")


def cpu_state(registers: str) -> str:
    """``RIP=... HLT=.`` from HMP ``info registers`` text (pure; a 32-bit vCPU's EIP is given as its
    RIP); ``?`` for what is missing."""
    rip, hlt = _RIP.search(registers), _HLT.search(registers)
    return f"RIP={rip.group(1).lower() if rip else '?'} HLT={hlt.group(1) if hlt else '?'}"


@dataclass(frozen=True)
class CpuSample:
    """:meth:`Machine.sample_cpus`: each vCPU's ``CPUn RIP=... HLT=.`` at the second sample, those
    the same 1 s apart, and the full HMP answers."""

    states: list[str]
    still: list[str]
    dump: list[str]

    @property
    def all_halted(self) -> bool:
        """Every vCPU in HLT throughout the second."""
        return bool(self.states) and all("HLT=1" in st and st in self.still for st in self.states)

    def described(self) -> list[str]:
        return [f"{st}{' (same 1 s later)' if st in self.still else ''}" for st in self.states]


def sample(hmp: Callable[[str, int], str], cpus: int, lapic: bool = False) -> CpuSample:
    """Each of ``cpus`` vCPUs' state, asked twice 1 s apart through ``hmp(command, cpu)`` (and each
    local APIC once with ``lapic``, for the dump only). A question ``hmp`` fails (a QEMU that does not
    answer) is answered ``(no answer: ...)`` and no more are asked: such a QEMU costs its timeout once."""
    failed: list[PveoiError] = []

    def ask(command: str, cpu: int) -> str:
        if failed:
            return "(not asked: QEMU did not answer before)"
        try:
            return hmp(command, cpu)
        except PveoiError as err:
            failed.append(err)
            return f"(no answer: {err})"

    dump: list[str] = []
    samples: list[list[str]] = []
    for n in (1, 2):
        if n == 2:
            time.sleep(1.0)
        states = []
        for cpu in range(cpus):
            text = ask("info registers", cpu)
            states.append(f"CPU{cpu} {cpu_state(text)}")
            dump += [f"== sample {n}, CPU {cpu}", text]
        samples.append(states)
    for cpu in range(cpus if lapic else 0):  # the local APIC (its timer: armed? pending?), for the dump only
        dump += [f"== local APIC, CPU {cpu}", ask("info lapic", cpu)]
    still = [a for a, b in zip(samples[0], samples[1], strict=True) if a == b and "?" not in a]
    return CpuSample(samples[1], still, dump)
