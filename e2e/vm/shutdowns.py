"""
KVM's own record of a guest CPU's shutdown (a triple fault): where the guest was when it happened.

A triple fault leaves QEMU only a ``SHUTDOWN`` event (reason ``guest-reset``), and on AMD the
registers are gone before QEMU could read them: KVM re-initialises the vCPU on the shutdown
intercept (``shutdown_interception()`` in ``arch/x86/kvm/svm/svm.c``). But KVM traces every exit
before handling it, and ``kvm:kvm_exit`` carries the guest's RIP. So while a KVM guest runs, a
private tracefs instance records just those exits (``kvm_exit`` filtered to SVM's shutdown intercept,
exit code 0x7f, and VMX's triple fault, basic exit reason 2), each with its thread's process id
(``options/record-tgid``) to tell this QEMU's vCPUs from other guests'. The instance costs nothing
while no guest shuts down and is removed with the machine.

When the QEMU ends, :meth:`ShutdownRecorder.evidence` says which vCPU shut down
at which RIP, with the kernel symbol when the guest kernel's ``System.map`` sits beside its image
(pveoi's own builds keep it): ``KVM: vCPU 1 shut down at RIP 0xffffffff81001234
(asm_exc_double_fault+0x4)``. A guest whose CPU resets without that record reset it some other way,
or KVM declared the triple fault itself (a fault while injecting a double fault it emulates:
``KVM_REQ_TRIPLE_FAULT``, no shutdown exit to trace). Inside the virtual host the RIP is looked up
in L1's own kernel too (:data:`L1_KERNEL`, set by :mod:`e2e.vm.vhost`): nested TCG's SVM emulation
has left L2 vCPUs at L1's return from VMRUN, an address that names nothing in the guest's kernel.

Written here rather than with perf or trace-cmd: one filtered event over the machine's whole life,
read once after it died, is three files in tracefs; a perf process per guest would cost a start-up
per boot under nested emulation. An instance left by a pveoi that was SIGKILLed is removed by the
next one (:func:`reap_stale`).
"""

from __future__ import annotations

import bisect
import itertools
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..host.hostfacts import DEBUGFS_TRACING, TRACEFS
from ..util.hostid import pid_alive

log = logging.getLogger(__name__)

#: The exits that are a guest CPU's shutdown: SVM's SHUTDOWN intercept (``SVM_EXIT_SHUTDOWN``) and
#: VMX's triple fault (``EXIT_REASON_TRIPLE_FAULT``), each with its ``isa`` (``KVM_ISA_VMX`` 1,
#: ``KVM_ISA_SVM`` 2) so that neither matches the other's same number.
FILTER = "(isa == 2 && exit_reason == 127) || (isa == 1 && exit_reason == 2)"

#: A line of an instance's ``trace`` with ``record-tgid``:
#: ``  CPU 1/KVM-75  (     70) [001] d..1.  12.3: kvm_exit: vcpu 1 reason shutdown rip 0xffffffff81001234 ...``.
_LINE = re.compile(r"^\s*.+?-(?P<tid>\d+)\s+\(\s*(?P<tgid>\d+)\)\s+\[\d+\].*?\bkvm_exit:\s+vcpu (?P<vcpu>\d+)\s+"
                   r"reason (?P<reason>\S+).*?\brip 0x(?P<rip>[0-9a-fA-F]+)")

_serial = itertools.count()

#: The instances' names: ``pveoi-shutdowns-<pid>-<n>``.
PREFIX = "pveoi-shutdowns-"


def reap_stale(instances: Path) -> None:
    """Remove the instances of pveoi processes that are gone (SIGKILLed before they could)."""
    try:
        names = [p.name for p in instances.iterdir()]
    except OSError:
        return
    for name in names:
        pid = name.removeprefix(PREFIX).split("-")[0]
        if name.startswith(PREFIX) and pid.isdigit() and not pid_alive(int(pid)):
            try:
                (instances / name).rmdir()
            except OSError as err:
                log.debug("cannot remove the stale %s: %s", name, err)


@dataclass(frozen=True)
class Shutdown:
    """One shutdown exit KVM traced: the vCPU, the exit reason as KVM names it, the guest's RIP."""

    vcpu: int
    reason: str
    rip: int


def parse_trace(text: str, tgid: int) -> list[Shutdown]:
    """The shutdown exits of process ``tgid``'s threads in an instance's ``trace`` text (pure)."""
    out = []
    for line in text.splitlines():
        m = _LINE.match(line)
        if m and int(m["tgid"]) == tgid:
            out.append(Shutdown(int(m["vcpu"]), m["reason"], int(m["rip"], 16)))
    return out


#: Section markers of a kernel's map (``_text``, ``__entry_text_start``, ``_etext``): no functions. Only the
#: ``_text`` ones: ``__hrtick_start`` or ``__unwind_start`` are functions.
_MARKER = re.compile(r"_s?text|_etext|_sinittext|_einittext|__\w+_text_(start|end)|__indirect_thunk_(start|end)")
#: Those after which, up to the next symbol, no function lies (a section's padding). Not every ``_end``:
#: ``__traceiter_mm_compaction_end`` is a function.
_END_MARKER = re.compile(r"_etext|_einittext|__\w+_text_end|__indirect_thunk_end")
#: From this offset on, an address is no longer read as inside the symbol below: a kernel function is far
#: smaller, so such an address lies where no function is (a gap the map has no symbol for).
MAX_OFFSET = 0x10000


def _rank(name: str) -> int:
    """At one address: a section's start, then its end, then a function, so the lookup (the last symbol at
    or below) names the function, and an empty section's end rather than its start."""
    if not _MARKER.fullmatch(name):
        return 2
    return 1 if _END_MARKER.fullmatch(name) else 0


class SymbolMap:
    """A kernel's ``System.map``: the text symbol at or below an address, within the image."""

    def __init__(self, text: str) -> None:
        pairs = []
        self._end: int | None = None
        for line in text.splitlines():
            parts = line.split()
            if len(parts) < 3:
                continue
            try:
                address = int(parts[0], 16)
            except ValueError:
                continue
            if parts[2] == "_end":
                self._end = address  # the image's end: above it, modules and BPF, which the map does not cover
            elif parts[1] in "tTwW":
                pairs.append((address, _rank(parts[2]), parts[2]))
        pairs.sort()
        self._addrs = [a for a, _, _ in pairs]
        self._names = [n for _, _, n in pairs]

    def name(self, address: int) -> str | None:
        """``symbol+0xoff`` for ``address``; ``no function: 0xoff past symbol`` where no function is
        (after a section's end marker, or :data:`MAX_OFFSET` or more past the symbol below: under nested
        TCG a corrupted vCPU may run in a section's padding); None below the first text symbol, at or above
        the image's end (a module's or BPF's code), or in an empty map."""
        i = bisect.bisect_right(self._addrs, address) - 1
        if i < 0 or (self._end is not None and address >= self._end):
            return None
        name, offset = self._names[i], address - self._addrs[i]
        if offset >= MAX_OFFSET or _END_MARKER.fullmatch(name):
            return f"no function: {offset:#x} past {name}"
        return f"{name}+{offset:#x}"


#: Set inside the virtual host to L1's own kernel image, whose ``System.map`` names a RIP that is L1's.
L1_KERNEL = "PVEOI_L1_KERNEL"

#: KVM's world switch into a guest and back. A guest shown no SVM/VMX (pveoi's default,
#: :class:`e2e.vm.argv.MachineSpec` ``nested``) never runs it, so a guest RIP here is not the guest's:
#: with pveoi's kernel as both guest and virtual host it is L1's own RIP after VMRUN, which nested
#: TCG's SVM emulation has left in an L2 vCPU (docs/virtual-host.md).
_WORLD_SWITCH = re.compile(r"(__svm_vcpu_run|__svm_sev_es_vcpu_run|__vmx_vcpu_run|vmx_vmexit)\+0x[0-9a-f]+")


def describe(shutdowns: list[Shutdown], symbols: SymbolMap | None,
             host_symbols: SymbolMap | None = None) -> list[str]:
    """Evidence lines: ``KVM: vCPU 1 shut down at RIP 0xffffffff81001234 (asm_exc_double_fault+0x4)``.
    A RIP in KVM's world switch, of the guest's kernel or of the virtual host's (``host_symbols``),
    says it is the virtual host's own, not the guest's."""
    lines = []
    for s in shutdowns:
        where = symbols.name(s.rip) if symbols is not None else None
        host_where = host_symbols.name(s.rip) if host_symbols is not None else None
        if where and _WORLD_SWITCH.fullmatch(where):
            where += ": KVM's world switch, which this guest does not run; the virtual host's own RIP"
        elif host_where and _WORLD_SWITCH.fullmatch(host_where):
            where = (f"{where or 'not in the guest kernel'}; in the virtual host's kernel {host_where}: "
                     "KVM's world switch, the virtual host's own RIP")
        lines.append(f"KVM: vCPU {s.vcpu} shut down at RIP {s.rip:#x}" + (f" ({where})" if where else ""))
    return lines


def symbols_beside(kernel: Path | None) -> SymbolMap | None:
    """The ``System.map`` kept beside a kernel image, if there is one."""
    if kernel is None:
        return None
    try:
        return SymbolMap((Path(kernel).parent / "System.map").read_text(errors="replace"))
    except OSError:
        return None


class ShutdownRecorder:
    """A private tracefs instance recording KVM's shutdown exits while one machine runs."""

    def __init__(self, instance: Path) -> None:
        self.instance = instance

    @classmethod
    def start(cls, tracefs: Path | None = None) -> ShutdownRecorder | None:
        """Make and arm the instance; None (and a debug line saying why) where tracefs, its
        instances or the kvm tracepoints are not ours to use: an unprivileged run, KVM not loaded."""
        roots = [tracefs] if tracefs is not None else [TRACEFS, DEBUGFS_TRACING]
        root = next((r for r in roots if (r / "instances").is_dir() and os.access(r / "instances", os.W_OK)), None)
        if root is None:
            log.debug("no writable tracefs instances: KVM's shutdown exits are not recorded")
            return None
        reap_stale(root / "instances")
        instance = root / "instances" / f"{PREFIX}{os.getpid()}-{next(_serial)}"
        try:
            instance.mkdir()
        except OSError as err:
            log.debug("cannot make %s: %s", instance, err)
            return None
        recorder = cls(instance)
        event = instance / "events" / "kvm" / "kvm_exit"
        if not event.is_dir():
            log.debug("%s has no kvm:kvm_exit (KVM not loaded?)", instance)
            recorder.stop()
            return None
        try:
            (instance / "buffer_size_kb").write_text("16")
            (instance / "options" / "record-tgid").write_text("1")
            (event / "filter").write_text(FILTER)
            (event / "enable").write_text("1")
            (instance / "tracing_on").write_text("1")
        except OSError as err:
            log.debug("cannot arm %s: %s", instance, err)
            recorder.stop()
            return None
        return recorder

    def shutdowns(self, tgid: int) -> list[Shutdown]:
        """The shutdown exits recorded for process ``tgid`` (QEMU's pid) so far."""
        try:
            return parse_trace((self.instance / "trace").read_text(errors="replace"), tgid)
        except OSError as err:
            log.debug("cannot read %s: %s", self.instance, err)
            return []

    def evidence(self, tgid: int, kernel: Path | None) -> list[str]:
        """:func:`describe` of process ``tgid``'s shutdown exits, named from ``kernel``'s ``System.map``
        and, inside the virtual host, L1's own (:data:`L1_KERNEL`)."""
        found = self.shutdowns(tgid)
        if not found:
            return []
        l1 = os.environ.get(L1_KERNEL)
        return describe(found, symbols_beside(kernel), symbols_beside(Path(l1)) if l1 else None)

    def stop(self) -> None:
        """Remove the instance (the kernel disables its events); idempotent."""
        try:
            self.instance.rmdir()
        except FileNotFoundError:
            pass
        except OSError as err:
            # tracefs refuses rmdir while a reader holds the instance open; say so rather than leak quietly.
            log.warning("could not remove the tracefs instance %s: %s", self.instance, err)
