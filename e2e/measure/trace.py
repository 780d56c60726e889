"""
Per-event tracing of one run: exact host/guest accounting and per-vector attribution.

:func:`parse_script` reads the ``perf script`` text of a recording
(:class:`e2e.measure.record.PerfRecord`) and :func:`summarize` turns it into, per vCPU:

* **the marker window** (:mod:`e2e.measure.markers`): the guest passes its per-CPU skipped and
  written EOI counters to the host in a marker hypercall (nr :data:`MARK_NR`, which KVM
  does not implement and ``kvm:kvm_hypercall`` records) with interrupts off, at the
  start (``a0`` = :data:`MARK_BEGIN`) and end (:data:`MARK_END`) of the workload. On that
  exit KVM completes a PV EOI the guest already skipped before it handles the hypercall,
  so the ``kvm_pv_eoi`` events on that vCPU's thread between its two markers must equal
  the difference of the guest's skipped counts *exactly*;
* **every EOI in the window by vector**: ``kvm_eoi`` (every EOI KVM completes) directly
  followed on the same thread by ``kvm_pv_eoi`` of the same vector is a PV EOI
  (``apic_sync_pv_eoi_from_guest()`` traces both); any other is a trapped EOI;
* **why a trapped EOI was not armed for PV EOI**, from KVM's rule in
  ``apic_sync_pv_eoi_to_guest()`` (arm only with the IRR empty, one vector in service, and
  that vector not an IOAPIC level-triggered one), replayed over the trace: ``level-triggered``
  (its last ``kvm_apic_accept_irq`` said level), ``nested ISR`` (another vector was in
  service while it was), ``IRR pending`` (another interrupt was accepted for the vCPU while
  it was in service, or was waiting when it was injected), ``VM exit before the EOI`` (the
  vCPU exited while the vector was in service and before the guest's EOI: the exit's
  ``apic_sync_pv_eoi_from_guest()`` disarms PV EOI and only an entry that processes
  ``KVM_REQ_EVENT`` arms it again), ``PV EOI off`` (the arm does not use it), ``no vector in
  service`` (an EOI with an empty ISR: vector -1), else ``not explained by the trace``. An
  exit whose next event on the thread is ``kvm_eoi`` is the EOI's own (the trapped write, or
  the exit that completes a PV EOI) and disarms nothing.

The trace's timestamps come from ``CLOCK_MONOTONIC`` (``-k mono``) so events of different
threads, maybe on different host CPUs, order correctly. A trace that lost events is
never judged: :class:`~e2e.errors.MeasurementError` (infrastructure).
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .markers import MARK_BEGIN, MARK_END, MARK_NR
from .vectors import vector_name

#: Why a trapped EOI was not a PV EOI, most specific first.
REASONS = ("PV EOI off", "no vector in service", "level-triggered", "nested ISR", "IRR pending",
           "VM exit before the EOI", "not explained by the trace")


@dataclass(frozen=True)
class TraceEvent:
    tid: int
    time: float
    name: str
    fields: str


_LINE = re.compile(r"^\s*(\d+)\s+(\d+\.\d+):\s+(?:kvm:)?(\w+):\s*(.*)$")
_LOST_LINE = re.compile(r"\bLOST (\d+) events!", re.I)


def parse_script(text: str) -> tuple[list[TraceEvent], int]:
    """``perf script -F tid,time,event,trace`` text as events in order, and the events it says were lost."""
    events, lost = [], 0
    for line in text.splitlines():
        m = _LINE.match(line)
        if m:
            events.append(TraceEvent(int(m[1]), float(m[2]), m[3], m[4]))
            continue
        lm = _LOST_LINE.search(line)
        if lm:
            lost += int(lm[1])
    return events, lost


_APICID_VECTOR = re.compile(r"apicid (\w+) vector (-?\d+)")
_ACCEPT = re.compile(r"apicid (\w+) vec (\d+) \(([^|)]*)\|(\w+)\)")
_INJ = re.compile(r"^(IRQ|Soft/INTn) 0x([0-9a-fA-F]+)")
_HYPERCALL = re.compile(r"nr 0x([0-9a-f]+) a0 0x([0-9a-f]+) a1 0x([0-9a-f]+) a2 0x([0-9a-f]+) a3 0x([0-9a-f]+)")


@dataclass
class _Vcpu:
    index: int
    tid: int
    apicid: int | None = None
    irr: set[int] = field(default_factory=set)
    isr: list[int] = field(default_factory=list)
    level: set[int] = field(default_factory=set)
    service: dict[int, set[str]] = field(default_factory=dict)
    pending_eoi: int | None = None
    exited: bool = False  # a kvm_exit whose next event on the thread is not yet known
    pending_flags: set[str] = field(default_factory=set)
    begin: tuple[int, int, int] | None = None  # (cpu, skipped, written) at the begin marker
    end: tuple[int, int, int] | None = None
    in_window: bool = False
    markers: int = 0
    pv: int = 0
    eoi: int = 0
    injected: int = 0
    per_vector: dict[int, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))


def summarize(events: Iterable[TraceEvent], vcpu_threads: Sequence[int], *, pv_eoi: bool,
              names: Mapping[str, str] | None = None, lost: int = 0) -> dict[str, Any]:
    """The trace of one run, per vCPU (see the module doc). JSON-able.

    :param vcpu_threads: the vCPU thread ids in vCPU order (QMP ``query-cpus-fast``).
    :param pv_eoi: whether the arm uses PV EOI (else every trapped EOI is ``PV EOI off``).
    :param names: ``"cpu:vector" -> name`` from the guest (:func:`vector_namer`).
    """
    vcpus = {tid: _Vcpu(i, tid) for i, tid in enumerate(vcpu_threads)}
    by_apicid: dict[int, _Vcpu] = {}
    count = 0
    anomalies: Counter[str] = Counter()
    last: dict[int, TraceEvent] = {}

    def target(apicid: int) -> _Vcpu | None:
        v = by_apicid.get(apicid)
        if v is None and 0 <= apicid < len(vcpu_threads):
            v = vcpus[vcpu_threads[apicid]]  # QEMU's default topology: APIC ID = vCPU index
        return v

    def complete(v: _Vcpu, vector: int) -> None:
        """KVM completed an EOI of ``vector`` (``kvm_eoi``): it leaves the ISR now; whether it was a PV
        EOI is known at the thread's next event (:func:`settle`)."""
        v.pending_flags = v.service.pop(vector, set())
        if vector in v.isr:
            v.isr.remove(vector)
        v.pending_eoi = vector

    def settle(v: _Vcpu, vector: int, pv: bool) -> None:
        """The EOI of ``vector`` completed on ``v`` was PV or trapped."""
        flags, v.pending_flags, v.pending_eoi = v.pending_flags, set(), None
        if not v.in_window:
            return
        v.eoi += 1
        c = v.per_vector[vector]
        if pv:
            v.pv += 1
            c["pv"] += 1
            return
        c["trapped"] += 1
        if not pv_eoi:
            reason = "PV EOI off"
        elif vector < 0:
            reason = "no vector in service"
        elif vector in v.level:
            reason = "level-triggered"
        else:
            reason = next((r for r in ("nested ISR", "IRR pending", "VM exit before the EOI") if r in flags),
                          "not explained by the trace")
        c[f"reason:{reason}"] += 1

    for ev in events:
        # Two events of one thread at the same nanosecond with the same fields are one event that
        # perf script printed twice (seen under TCG: a few dozen in 20000, in bursts); never real.
        if last.get(ev.tid) == ev:
            anomalies["duplicate events dropped"] += 1
            continue
        last[ev.tid] = ev
        count += 1
        v = vcpus.get(ev.tid)
        if v is not None and v.pending_eoi is not None and ev.name != "kvm_pv_eoi":
            settle(v, v.pending_eoi, pv=False)
        if v is not None and v.exited and ev.name != "kvm_apic_accept_irq":
            v.exited = False
            if ev.name != "kvm_eoi":  # an exit that was not the EOI's own disarmed PV EOI
                for flags in v.service.values():
                    flags.add("VM exit before the EOI")
        if ev.name == "kvm_exit":
            if v is not None:
                v.exited = True
            continue
        if ev.name == "kvm_apic_accept_irq":
            m = _ACCEPT.search(ev.fields)
            t = target(int(m[1], 16)) if m else None
            if t is None or m is None:
                continue
            vector = int(m[2])
            t.irr.add(vector)
            (t.level.add if m[4] == "level" else t.level.discard)(vector)
            for flags in t.service.values():
                flags.add("IRR pending")
        elif v is None:
            continue
        elif ev.name == "kvm_inj_virq":
            m = _INJ.search(ev.fields)
            if m is None or m[1] != "IRQ":
                continue
            vector = int(m[2], 16)
            v.irr.discard(vector)
            if vector in v.service:  # "[reinjected]": its delivery was cut by an exit; one ISR bit still
                continue
            flags = set()
            if v.irr:
                flags.add("IRR pending")
            if v.isr:
                flags.add("nested ISR")
                for other in v.service.values():
                    other.add("nested ISR")
            v.isr.append(vector)
            v.service[vector] = flags
            if v.in_window:
                v.injected += 1
                v.per_vector[vector]["injected"] += 1
        elif ev.name in ("kvm_eoi", "kvm_pv_eoi"):
            m = _APICID_VECTOR.search(ev.fields)
            if m is None:
                continue
            apicid, vector = int(m[1], 16), int(m[2])
            if v.apicid is None:
                v.apicid = apicid
                by_apicid[apicid] = v
            if ev.name == "kvm_eoi":
                complete(v, vector)
            elif v.pending_eoi == vector:
                settle(v, vector, pv=True)
            else:  # apic_sync_pv_eoi_from_guest() always traces kvm_eoi first
                anomalies["kvm_pv_eoi without its kvm_eoi"] += 1
                if v.pending_eoi is not None:
                    settle(v, v.pending_eoi, pv=False)
        elif ev.name == "kvm_hypercall":
            m = _HYPERCALL.search(ev.fields)
            if m is None or int(m[1], 16) != MARK_NR:
                continue
            mark, cpu, skipped, written = (int(m[i], 16) for i in range(2, 6))
            v.markers += 1
            if mark == MARK_BEGIN and v.begin is None:
                v.begin, v.in_window = (cpu, skipped, written), True
            elif mark == MARK_END and v.begin is not None:
                v.end, v.in_window = (cpu, skipped, written), False
    for v in vcpus.values():
        if v.pending_eoi is not None:
            settle(v, v.pending_eoi, pv=False)
    names = names or {}
    out_vcpus, out_vectors = [], []
    for v in sorted(vcpus.values(), key=lambda x: x.index):
        entry: dict[str, Any] = {"vcpu": v.index, "tid": v.tid, "apicid": v.apicid, "markers": v.markers,
                                 "window": v.begin is not None and v.end is not None,
                                 "host_pv_eoi": v.pv, "host_eoi": v.eoi, "host_trapped": v.eoi - v.pv,
                                 "injected": v.injected}
        if v.begin is not None and v.end is not None:
            entry.update(guest_cpu=v.end[0], guest_skipped=v.end[1] - v.begin[1],
                         guest_written=v.end[2] - v.begin[2])
        out_vcpus.append(entry)
        for vector, c in sorted(v.per_vector.items()):
            reasons = {k.removeprefix("reason:"): n for k, n in c.items() if k.startswith("reason:")}
            out_vectors.append({"vcpu": v.index, "vector": vector, "name": vector_name(vector, v.index, names),
                                "injected": c["injected"], "pv": c["pv"], "trapped": c["trapped"],
                                "reasons": {r: reasons[r] for r in REASONS if r in reasons}})
    return {"events": count, "lost": lost, "vcpus": out_vcpus, "vectors": out_vectors,
            "anomalies": dict(anomalies)}
