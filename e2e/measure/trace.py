"""
Per-event tracing of one run: exact host/guest accounting and per-vector attribution.

``perf stat`` (:mod:`e2e.measure.perf`) counts; this module records. :class:`PerfRecord` runs one
``perf record`` of :data:`TRACED` on the QEMU process (every thread: vCPUs, and the
I/O threads whose MSIs raise ``kvm_apic_accept_irq``), and :func:`summarize` reads
``perf script``'s text back into, per vCPU:

* **the marker window** (guest_patches/0003): the guest passes its per-CPU skipped and
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

import fnmatch
import logging
import os
import re
import subprocess
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from ..errors import ConfigError, Kind, PerfError, PveoiError
from .perf import Event, PerfStat, perf_error

log = logging.getLogger(__name__)

#: What is recorded, one sample per event.
TRACED: tuple[str, ...] = ("kvm:kvm_apic_accept_irq", "kvm:kvm_inj_virq", "kvm:kvm_eoi", "kvm:kvm_pv_eoi",
                           "kvm:kvm_hypercall", "kvm:kvm_exit")

#: The marker hypercall's number ("pvmk"), guest_patches/0003.
MARK_NR = 0x70766D6B
MARK_BEGIN, MARK_END = 1, 2
#: Where the guest takes its markers.
MARK_FILE = "/sys/kernel/debug/kvm_pv_eoi_mark"

#: Why a trapped EOI was not a PV EOI, most specific first.
REASONS = ("PV EOI off", "no vector in service", "level-triggered", "nested ISR", "IRR pending",
           "VM exit before the EOI", "not explained by the trace")

#: x86 system vectors (arch/x86/include/asm/irq_vectors.h, stable since 4.x) by the row
#: /proc/interrupts counts them in.
SYSTEM_VECTORS: Mapping[int, str] = {
    0xFF: "SPU", 0xFE: "ERR", 0xFD: "RES", 0xFC: "CAL", 0xFB: "CAL", 0xFA: "TRM", 0xF9: "THR",
    0xF8: "reboot", 0xF7: "PLT", 0xF6: "IWI", 0xF4: "DFR", 0xF3: "HYP", 0xF2: "PIN", 0xF1: "PIW",
    0xF0: "NPI", 0xEF: "managed-shutdown", 0xEC: "LOC", 0x20: "irq-move-cleanup",
}


def mark_command(argv: Sequence[str]) -> list[str]:
    """``argv`` between a begin and an end marker, in the guest (its exit status kept)."""
    script = (f'echo {MARK_BEGIN} > {MARK_FILE} || exit 125; "$@"; rc=$?; '
              f'echo {MARK_END} > {MARK_FILE} || exit 125; exit $rc')
    return ["sh", "-c", script, "pveoi-mark", *argv]


# ---------------------------------------------------------------- perf record


def perf_record_argv(events: Sequence[str], *, pid: int, output: Path, control_fifo: tuple[Path, Path],
                     perf: str = "perf", mmap_pages: int = 1024) -> list[str]:
    """``perf record`` of ``events`` on every thread of ``pid``, started disabled (pure).

    :raises ConfigError: no events, a bad pid, or a FIFO path with a comma.
    """
    if not events:
        raise ConfigError("no events to record", fix="pass at least one tracepoint")
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        raise ConfigError(f"bad pid {pid!r}", fix="pass QEMU's pid")
    ctl, ack = control_fifo
    if "," in str(ctl) or "," in str(ack):
        raise ConfigError(f"control FIFO paths may not contain ',' ({ctl}, {ack})", fix="use another directory")
    argv = [perf, "record", "-k", "mono", "-c", "1", "-m", str(mmap_pages), "--no-buildid",
            "--no-buildid-cache", "-o", str(output)]
    for name in events:
        argv += ["-e", name]
    return [*argv, "-p", str(pid), "-D", "-1", "--control", f"fifo:{ctl},{ack}"]


class PerfRecord(PerfStat):
    """One ``perf record`` of :data:`TRACED` on a QEMU process, over an enabled window.

    The same life cycle as :class:`~e2e.measure.perf.PerfStat` (``start``, ``enable``,
    ``disable``, ``stop``); ``stop()`` returns ``perf script``'s text.
    """

    def __init__(self, pid: int, events: Sequence[str] = TRACED, perf: str = "perf", **kw: Any) -> None:
        super().__init__([Event(e) for e in events], pid=pid, perf=perf, **kw)
        self.record_events = tuple(events)
        perf_record_argv(self.record_events, pid=pid, output=Path("out"), control_fifo=(Path("c"), Path("a")),
                         perf=perf)

    def finish(self) -> str:
        """End perf record and return ``perf script``'s text (see :meth:`PerfStat.stop`)."""
        return cast(str, self.stop())

    def salvage(self) -> str | None:
        """After a failed run: :meth:`finish` what perf recorded up to the failure (a guest's last
        exits before a triple fault are the evidence a KVM maintainer needs) and return its text, or
        None. Never raises: the run's own error matters more. (``_collect`` keeps the text even when
        it then reports lost events.)"""
        if self.output_text is None:
            try:
                self.finish()
            except (PveoiError, OSError, subprocess.SubprocessError) as err:
                log.debug("could not salvage the trace of a failed run: %s", err)
        return self.output_text

    def _argv(self, ctl: Path, ack: Path, workdir: Path) -> list[str]:
        assert self.pid is not None
        return perf_record_argv(self.record_events, pid=self.pid, output=workdir / "perf.data",
                                control_fifo=(ctl, ack), perf=self.perf)

    def _collect(self, workdir: Path) -> Any:
        data = workdir / "perf.data"
        if not data.is_file():
            raise PerfError("perf record wrote no perf.data",
                            fix=f"see perf's stderr: {(self.stderr_text or '').strip()[-300:]}")
        lost = lost_in_stderr(self.stderr_text or "")
        argv = [self.perf, "script", "-i", str(data), "--ns", "--show-lost-events", "-F", "tid,time,event,trace"]
        proc = subprocess.run(argv, capture_output=True, text=True, errors="replace", timeout=600,
                              env=dict(os.environ, LC_ALL="C"))
        if proc.returncode != 0:
            raise perf_error(proc.stderr, proc.returncode, argv, "script")
        self.output_text = proc.stdout
        if lost:
            raise PerfError(f"perf record lost {lost} chunk(s) of events; the trace cannot be judged",
                            fix="the host is overloaded, or raise perf's buffer (trace.perf_record_argv)",
                            kind=Kind.INFRASTRUCTURE)
        return proc.stdout


_LOST_STDERR = re.compile(r"lost (\d+) chunks", re.I)


def lost_in_stderr(text: str) -> int:
    """Chunks perf record says it lost (``Processed N events and lost M chunks!``)."""
    return sum(int(m) for m in _LOST_STDERR.findall(text))


# ---------------------------------------------------------------- perf script


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


# ---------------------------------------------------------------- the guest's vector names


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


# ---------------------------------------------------------------- the summary


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



# ---------------------------------------------------------------- per-vector table


def vector_rows(traces: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per vector (by name, then number), summed over the given runs' traces and vCPUs:
    ``{name, vector, injected, pv, trapped, reasons}``, the busiest first."""
    rows: dict[tuple[str, int], dict[str, Any]] = {}
    for t in traces:
        for v in t.get("vectors", []):
            key = (str(v.get("name", "?")), int(v["vector"]))
            row = rows.setdefault(key, {"name": key[0], "vector": key[1], "injected": 0, "pv": 0, "trapped": 0,
                                        "reasons": Counter()})
            for k in ("injected", "pv", "trapped"):
                row[k] += int(v.get(k, 0))
            row["reasons"].update(v.get("reasons", {}))
    out = sorted(rows.values(), key=lambda r: (-(r["pv"] + r["trapped"]), r["vector"]))
    for r in out:
        r["reasons"] = {k: r["reasons"][k] for k in REASONS if r["reasons"][k]}
    return out


def window_totals(traces: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """``host_eoi``, ``host_pv_eoi``, ``guest_skipped`` and ``guest_written`` in the marker windows."""
    out: Counter[str] = Counter()
    for t in traces:
        for v in t.get("vcpus", []):
            for k in ("host_eoi", "host_pv_eoi", "guest_skipped", "guest_written", "injected"):
                out[k] += int(v.get(k, 0) or 0)
    return dict(out)


def vector_label(row: Mapping[str, Any]) -> str:
    """``LOC (0xec)``; a bare name for vector -1 (an EOI with nothing in service)."""
    return f"{row['name']} (0x{row['vector']:x})" if row["vector"] >= 0 else str(row["name"])


def format_vector_rows(rows: Sequence[Mapping[str, Any]], limit: int = 8) -> list[str]:
    """The per-vector table's text lines."""
    lines = [f"{'vector':<22} {'injected':>8} {'PV EOI':>8} {'trapped':>8}  why trapped"]
    for r in rows[:limit]:
        why = ", ".join(f"{k} {n}" for k, n in r["reasons"].items())
        lines.append(f"{vector_label(r):<22} {r['injected']:>8} {r['pv']:>8} {r['trapped']:>8}  {why}")
    if len(rows) > limit:
        rest = rows[limit:]
        lines.append(f"{f'({len(rest)} more)':<22} {sum(r['injected'] for r in rest):>8} "
                     f"{sum(r['pv'] for r in rest):>8} {sum(r['trapped'] for r in rest):>8}")
    return lines


def armed_taken(trace: Mapping[str, Any]) -> float | None:
    """PV EOIs per EOI that KVM armed, in one run's marker windows: ``pv / (pv + trapped with no
    reason in the trace)``. A trapped EOI with no disarm in the trace (no IRR pending, nesting,
    level trigger or exit before the EOI) is one the guest wrote although PV EOI was armed: a
    clean guest gives 1.0 on every workload, whatever the timing of its interrupts; a guest
    that writes 1 EOI in 100 natively gives 0.99. None without a traced window."""
    vcpus = [v for v in trace.get("vcpus", []) if v.get("window")]
    if not vcpus:
        return None
    pv = sum(int(v.get("host_pv_eoi", 0)) for v in vcpus)
    missed = sum(int(x.get("reasons", {}).get("not explained by the trace", 0)) for x in trace.get("vectors", []))
    return pv / (pv + missed) if pv + missed else None


def source_counts(trace: Mapping[str, Any], sources: Sequence[str]) -> tuple[int, int] | None:
    """``(trapped, injected)`` over one run's vectors whose guest name matches one of ``sources``
    (shell patterns, e.g. ``virtio*-input.*``: a workload's own interrupts, see
    :attr:`e2e.model.workloads.Workload.sources`), in the marker windows; None when the run injected
    none of them (or was not traced)."""
    trapped = injected = 0
    for v in trace.get("vectors", []):
        if any(fnmatch.fnmatchcase(str(v.get("name", "")), p) for p in sources):
            trapped += int(v.get("trapped", 0))
            injected += int(v.get("injected", 0))
    return (trapped, injected) if injected else None


def source_trapped(trace: Mapping[str, Any], sources: Sequence[str]) -> float | None:
    """Trapped EOIs per injected interrupt of the workload's own ``sources`` (:func:`source_counts`)."""
    counts = source_counts(trace, sources)
    return counts[0] / counts[1] if counts else None
