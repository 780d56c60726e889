"""e2e.measure.trace and its neighbours (markers, record, vectors, trace_figures): perf script parsing, the
marker window's exact accounting, per-vector attribution."""

from __future__ import annotations

from pathlib import Path

import pytest

from e2e.analysis.compare import agreement, exact_agreement
from e2e.errors import ConfigError
from e2e.measure.guest_counters import STATE_MARK
from e2e.measure.markers import MARK_BEGIN, MARK_END, MARK_NR, mark_command
from e2e.measure.record import lost_in_stderr, perf_record_argv
from e2e.measure.trace import parse_script, summarize
from e2e.measure.vectors import GuestView, irq_names, irq_vectors, vector_name
from e2e.model.plan import Arm
from e2e.model.result import RunRecord

T0, T1 = 100, 101  # vCPU thread ids
IO = 99  # QEMU's I/O thread


class Script:
    """Builds ``perf script -F tid,time,event,trace`` text line by line."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.t = 1000.0

    def ev(self, tid: int, name: str, fields: str) -> Script:
        self.t += 0.000001
        self.lines.append(f"{tid:>8} {self.t:.9f}: kvm:{name}: {fields}")
        return self

    def accept(self, tid: int, apicid: int, vec: int, level: bool = False) -> Script:
        mode = "level" if level else "edge"
        return self.ev(tid, "kvm_apic_accept_irq", f"apicid {apicid:x} vec {vec} (Fixed|{mode})")

    def inj(self, tid: int, vec: int) -> Script:
        return self.ev(tid, "kvm_inj_virq", f"IRQ 0x{vec:x}")

    def eoi(self, tid: int, apicid: int, vec: int, pv: bool) -> Script:
        self.ev(tid, "kvm_eoi", f"apicid {apicid:x} vector {vec}")
        return self.ev(tid, "kvm_pv_eoi", f"apicid {apicid:x} vector {vec}") if pv else self

    def mark(self, tid: int, which: int, cpu: int, skipped: int, written: int, nr: int = MARK_NR) -> Script:
        args = f"a0 0x{which:x} a1 0x{cpu:x} a2 0x{skipped:x} a3 0x{written:x}"
        return self.ev(tid, "kvm_hypercall", f"nr 0x{nr:x} {args}")

    def irq(self, tid: int, apicid: int, vec: int, pv: bool, src: int | None = None) -> Script:
        return self.accept(src or tid, apicid, vec).inj(tid, vec).eoi(tid, apicid, vec, pv)

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def run(script: Script, pv_eoi: bool = True, names: dict[str, str] | None = None) -> dict:
    events, lost = parse_script(script.text())
    return summarize(events, [T0, T1], pv_eoi=pv_eoi, names=names, lost=lost)


def test_exact_window_counts_only_between_markers() -> None:
    s = Script()
    s.irq(T0, 0, 0xEC, pv=True)  # before the window: not counted
    s.mark(T0, 1, 0, 10, 5).mark(T1, 1, 1, 7, 3)
    for _ in range(4):
        s.irq(T0, 0, 0xEC, pv=True)
    s.irq(T1, 1, 0xFD, pv=True, src=T0)  # an IPI raised by vCPU 0's thread
    s.irq(T1, 1, 0xFD, pv=False, src=T0)
    # The EOI skipped right before the end marker is completed on the marker's own exit.
    s.accept(T0, 0, 0xEC).inj(T0, 0xEC).eoi(T0, 0, 0xEC, pv=True).mark(T0, 2, 0, 15, 5)
    s.mark(T1, 2, 1, 8, 4)
    s.irq(T0, 0, 0xEC, pv=True)  # after: not counted
    out = run(s)
    v0, v1 = out["vcpus"]
    assert (v0["host_pv_eoi"], v0["guest_skipped"], v0["guest_written"], v0["window"]) == (5, 5, 0, True)
    assert (v1["host_pv_eoi"], v1["guest_skipped"], v1["host_trapped"], v1["guest_written"]) == (1, 1, 1, 1)
    assert v1["apicid"] == 1 and v1["injected"] == 2


def test_vectors_add_up_to_the_window_totals_and_name_them() -> None:
    s = Script().mark(T0, 1, 0, 0, 0).mark(T1, 1, 1, 0, 0)
    s.irq(T0, 0, 0xEC, pv=True).irq(T0, 0, 0xEC, pv=False).irq(T0, 0, 0x22, pv=True, src=IO)
    s.mark(T0, 2, 0, 2, 1).mark(T1, 2, 1, 0, 0)
    out = run(s, names={"0:34": "virtio0-input.0"})
    vec = {(v["vcpu"], v["vector"]): v for v in out["vectors"]}
    assert vec[(0, 0xEC)]["name"] == "LOC" and vec[(0, 0x22)]["name"] == "virtio0-input.0"
    assert sum(v["pv"] for v in out["vectors"]) == sum(c["host_pv_eoi"] for c in out["vcpus"]) == 2
    assert sum(v["pv"] + v["trapped"] for v in out["vectors"]) == sum(c["host_eoi"] for c in out["vcpus"]) == 3


def test_reasons_irr_pending_nested_level_and_off() -> None:
    s = Script().mark(T0, 1, 0, 0, 0).mark(T1, 1, 1, 0, 0)
    # IRR pending: a second vector arrives while 0xEC is in service.
    s.accept(T0, 0, 0xEC).inj(T0, 0xEC).accept(IO, 0, 0x22).eoi(T0, 0, 0xEC, pv=False)
    s.inj(T0, 0x22).eoi(T0, 0, 0x22, pv=True)
    # Nested ISR: 0xFD injected on top of 0x23 in service; both EOIs trap.
    s.accept(IO, 0, 0x23).inj(T0, 0x23).accept(T1, 0, 0xFD).inj(T0, 0xFD)
    s.eoi(T0, 0, 0xFD, pv=False).eoi(T0, 0, 0x23, pv=False)
    # Level-triggered IOAPIC vector.
    s.accept(IO, 0, 0x30, level=True).inj(T0, 0x30).eoi(T0, 0, 0x30, pv=False)
    # Nothing in the trace explains it.
    s.accept(T0, 0, 0xEC).inj(T0, 0xEC).eoi(T0, 0, 0xEC, pv=False)
    s.mark(T0, 2, 0, 1, 5).mark(T1, 2, 1, 0, 0)
    vec = {v["vector"]: v["reasons"] for v in run(s)["vectors"]}
    assert vec[0xEC] == {"IRR pending": 1, "not explained by the trace": 1}
    assert vec[0xFD] == {"nested ISR": 1} and vec[0x23] == {"nested ISR": 1}
    assert vec[0x30] == {"level-triggered": 1}
    assert vec[0x22] == {}
    off = Script().mark(T0, 1, 0, 0, 0).irq(T0, 0, 0xEC, pv=False).mark(T0, 2, 0, 0, 1)
    assert run(off, pv_eoi=False)["vectors"][0]["reasons"] == {"PV EOI off": 1}


def test_other_hypercalls_and_soft_interrupts_are_ignored() -> None:
    s = Script().mark(T0, 1, 0, 0, 0).mark(T0, 1, 0, 0, 0, nr=5).ev(T0, "kvm_inj_virq", "Soft/INTn 0x80")
    s.mark(T0, 2, 0, 0, 0)
    v0 = run(s)["vcpus"][0]
    assert v0["markers"] == 2 and v0["injected"] == 0


def test_lost_events_are_counted() -> None:
    _, lost = parse_script("   123 1.000000001: kvm:kvm_eoi: apicid 0 vector 236\nLOST 17 events!\n")
    assert lost == 17
    assert lost_in_stderr("Processed 1234 events and lost 3 chunks!\nCheck IO/CPU overload!") == 3


def record(trace: dict, arm: str = "on", enabled: bool = True) -> RunRecord:
    return RunRecord(rep=2, arm=arm, counts={"kvm:kvm_pv_eoi": 0, "kvm:kvm_inj_virq": 1000}, trace=trace,
                     guest={"pv_eoi": {"skipped": 0, "written": 0, "enabled": [enabled] * 5}})


def test_exact_agreement_names_vcpu_and_direction() -> None:
    trace = {"marks": True, "vcpus": [
        {"vcpu": 0, "window": True, "host_pv_eoi": 100, "guest_skipped": 100},
        {"vcpu": 1, "window": True, "host_pv_eoi": 997, "guest_skipped": 1000},
        {"vcpu": 2, "window": True, "host_pv_eoi": 52, "guest_skipped": 50},
        {"vcpu": 3, "window": False, "markers": 1},
        {"vcpu": 4, "window": True, "host_pv_eoi": 5, "guest_skipped": 5, "host_trapped": 9, "guest_written": 7},
    ]}
    entries, reasons = exact_agreement(record(trace))
    assert [(a.vcpu, a.ok) for a in entries] == [(0, True), (1, False), (2, False), (4, True)]
    assert reasons[0].startswith("vCPU 1: 3 EOIs the guest skipped were completed with no kvm_pv_eoi on the host")
    assert reasons[1].startswith("vCPU 2: the host completed 2 PV EOIs the guest never skipped")
    assert reasons[2].startswith("vCPU 3: the host traced 1 of the guest's 2 window-marker hypercalls")
    assert reasons[3].startswith("vCPU 4: the host completed 2 trapped EOIs the guest never wrote (host trapped 9")
    assert all("(arm on, rep 2)" in r for r in reasons)


def test_markers_make_the_loose_tolerance_go() -> None:
    """A 3-in-1000 gap passes the old tolerance but not the exact check."""
    th = {"agreement_slack": 50, "max_agreement_error": 0.1}
    loose = RunRecord(rep=0, arm="on", counts={"kvm:kvm_pv_eoi": 997}, guest={"pv_eoi": {"skipped": 1000}})
    assert agreement([Arm("on")], [loose], th)[1] == []
    exact = record({"marks": True, "vcpus": [{"vcpu": 0, "window": True, "host_pv_eoi": 997,
                                                "guest_skipped": 1000}]})
    entries, reasons = agreement([Arm("on")], [exact], th)
    assert len(reasons) == 1 and entries[0].vcpu == 0 and not entries[0].ok


def test_guest_view_names_vectors_from_the_guests_debugfs() -> None:
    interrupts = ("           CPU0       CPU1\n"
                  " 24:          0          5  PCI-MSIX-0000:00:02.0   0-edge      virtio0-config\n"
                  " 25:         10          0  PCI-MSIX-0000:00:02.0   1-edge      virtio0-input.0\n"
                  "LOC:        100        200   Local timer interrupts\n")
    state = interrupts + f"{STATE_MARK}\ncpu0 feature=1 enabled=1 skipped=0 written=0\n"
    # What STATE_COMMAND followed by GUEST_VIEW_SCRIPT prints in the guest.
    text = (state + "----pveoi-irqs----\npveoi-marks\n24:   Vector:    34\n24:   Target:     1\n"
            "25:   Vector:    35\n25:   Target:     0\n25:   Previous vector:    40\n25:   Previous target:     1\n"
            "0:   Vector:    48\n0:   Target: Legacy PIC all CPUs\n")
    before, view = GuestView.split(text, interrupts)
    assert view.marks and before == state
    assert view.names == {"1:34": "virtio0-config", "0:35": "virtio0-input.0", "1:40": "virtio0-input.0"}
    assert vector_name(0xEC, 0, view.names) == "LOC" and vector_name(0xFB, 1, {}) == "CAL"
    assert vector_name(99, 0, {}) == "?" and vector_name(-1, 0, {}) == "none"
    assert not GuestView.split(state + "----pveoi-irqs----\n", interrupts)[1].marks
    assert irq_vectors("") == {} and irq_names("") == {}


def test_mark_command_keeps_argv_literal_and_its_status() -> None:
    argv = mark_command(["taskset", "-c", "1", "pveoi-load", "timer", "$(reboot)"])
    assert argv[:2] == ["sh", "-c"] and argv[-6:] == ["taskset", "-c", "1", "pveoi-load", "timer", "$(reboot)"]
    assert "exit $rc" in argv[2]


def test_perf_record_argv() -> None:
    argv = perf_record_argv(["kvm:kvm_eoi"], pid=42, output=Path("/t/perf.data"),
                            control_fifo=(Path("/t/c"), Path("/t/a")))
    assert argv[:2] == ["perf", "record"] and argv[argv.index("-p"):argv.index("-p") + 2] == ["-p", "42"]
    assert "-D" in argv and argv[2:4] == ["-k", "mono"]
    with pytest.raises(ConfigError):
        perf_record_argv([], pid=42, output=Path("o"), control_fifo=(Path("c"), Path("a")))
    with pytest.raises(ConfigError):
        perf_record_argv(["kvm:kvm_eoi"], pid=0, output=Path("o"), control_fifo=(Path("c"), Path("a")))


def test_an_interrupt_accepted_after_the_eoi_is_not_its_reason() -> None:
    """kvm_eoi ends the service at once, though PV-or-trapped is known only at the thread's next event."""
    s = Script().mark(T0, 1, 0, 0, 0)
    s.accept(T0, 0, 0xEC).inj(T0, 0xEC).eoi(T0, 0, 0xEC, pv=False).accept(IO, 0, 0x22)
    s.inj(T0, 0x22).eoi(T0, 0, 0x22, pv=True).mark(T0, 2, 0, 1, 1)
    vec = {v["vector"]: v for v in run(s)["vectors"]}
    assert vec[0xEC]["reasons"] == {"not explained by the trace": 1} and vec[0x22]["pv"] == 1


def test_an_exit_before_the_eoi_disarms_but_the_eoi_exit_itself_does_not() -> None:
    s = Script().mark(T0, 1, 0, 0, 0)
    s.accept(T0, 0, 0xEC).inj(T0, 0xEC).ev(T0, "kvm_exit", "reason EXIT_INTR rip 0x1")  # async exit, no EOI yet
    s.ev(T0, "kvm_exit", "reason EXIT_MSR rip 0x2").eoi(T0, 0, 0xEC, pv=False)  # the EOI write's own exit
    s.accept(T0, 0, 0xEC).inj(T0, 0xEC).ev(T0, "kvm_exit", "reason EXIT_MSR rip 0x2").eoi(T0, 0, 0xEC, pv=False)
    s.accept(T0, 0, 0xEC).inj(T0, 0xEC).ev(T0, "kvm_exit", "reason EXIT_HLT rip 0x3").eoi(T0, 0, 0xEC, pv=True)
    s.mark(T0, 2, 0, 1, 2)
    vec = run(s)["vectors"][0]
    assert vec["reasons"] == {"VM exit before the EOI": 1, "not explained by the trace": 1} and vec["pv"] == 1


def test_a_reinjected_vector_is_in_service_once() -> None:
    s = Script().mark(T0, 1, 0, 0, 0)
    s.accept(T0, 0, 0xEC).inj(T0, 0xEC).ev(T0, "kvm_inj_virq", "IRQ 0xec [reinjected]").eoi(T0, 0, 0xEC, pv=True)
    s.accept(T0, 0, 0xEC).inj(T0, 0xEC).eoi(T0, 0, 0xEC, pv=False)
    s.mark(T0, 2, 0, 1, 1)
    vec = run(s)["vectors"][0]
    assert vec["reasons"] == {"not explained by the trace": 1} and vec["injected"] == 2


def test_an_event_printed_twice_counts_once() -> None:
    s = Script().mark(T0, 1, 0, 0, 0).accept(T0, 0, 0xEC).inj(T0, 0xEC).eoi(T0, 0, 0xEC, pv=True)
    s.mark(T0, 2, 0, 1, 0)
    i = next(i for i, line in enumerate(s.lines) if "kvm:kvm_eoi:" in line)
    s.lines.insert(i, s.lines[i])  # perf script printed the kvm_eoi twice
    out = run(s)
    assert out["vcpus"][0]["host_eoi"] == 1 and out["vcpus"][0]["host_trapped"] == 0
    assert out["anomalies"]["duplicate events dropped"] == 1


def test_pv_eoi_taken_when_armed_counts_only_unexplained_traps() -> None:
    from e2e.measure.trace_figures import armed_taken

    s = Script().mark(T0, 1, 0, 0, 0)
    for _ in range(99):
        s.irq(T0, 0, 0xEC, pv=True)
    s.irq(T0, 0, 0xEC, pv=False)  # armed, yet written: the 1-in-100 fixture's kind
    s.accept(T0, 0, 0xEC).inj(T0, 0xEC).accept(IO, 0, 0x22).eoi(T0, 0, 0xEC, pv=False)  # IRR pending: not a miss
    s.inj(T0, 0x22).eoi(T0, 0, 0x22, pv=True).mark(T0, 2, 0, 100, 2)
    assert armed_taken(run(s)) == pytest.approx(100 / 101)
    assert armed_taken({"vcpus": []}) is None


def test_written_is_only_held_against_trapped_where_the_hook_counts() -> None:
    trace = {"marks": True, "vcpus": [{"vcpu": 0, "window": True, "host_pv_eoi": 0, "guest_skipped": 0,
                                       "host_trapped": 3000, "guest_written": 0}]}
    assert exact_agreement(record(trace, arm="off", enabled=False))[1] == []
    assert exact_agreement(record(trace))[1][0].startswith("vCPU 0: the host completed 3000 trapped EOIs")


def test_untraced_pv_eois_are_named_once() -> None:
    """A kvm_pv_eoi the host did not trace leaves its kvm_eoi alone: one reason, not two."""
    trace = {"marks": True, "vcpus": [{"vcpu": 1, "window": True, "host_pv_eoi": 3088, "guest_skipped": 3100,
                                       "host_trapped": 36, "guest_written": 24}]}
    (reason,) = exact_agreement(record(trace))[1]
    assert reason.startswith("vCPU 1: 12 EOIs the guest skipped were completed with no kvm_pv_eoi on the host")
    assert "traced them as kvm_eoi alone" in reason


def test_a_summary_drawn_later_is_the_one_the_run_draws_and_a_trace_that_lost_events_is_refused() -> None:
    """The virtual host's inner runner leaves the summary to the outer pveoi (traces.finish_traces): the
    same function draws it, from the same text."""
    from e2e.errors import MeasurementError
    from e2e.run.traces import summary_of

    s = Script().mark(T0, MARK_BEGIN, 0, 0, 0).irq(T0, 0, 236, pv=True).irq(T1, 1, 236, pv=False)
    s.irq(T0, 0, 34, pv=True).mark(T0, MARK_END, 0, 2, 0)
    names = {"0:34": "virtio0-input.0"}
    assert summary_of(s.text(), [T0, T1], pv_eoi=True, names=names, marks=True) == {**run(s, names=names),
                                                                                    "marks": True}
    with pytest.raises(MeasurementError, match=r"perf script reports 3 lost events; the trace cannot be judged"):
        summary_of(s.text() + "LOST 3 events!\n", [T0, T1], pv_eoi=True, names=names, marks=True)


def test_a_deferred_trace_whose_perf_data_did_not_come_back_is_an_infrastructure_error(tmp_path: Path) -> None:
    from e2e.errors import Kind, MeasurementError
    from e2e.model.result import Result
    from e2e.run.traces import deferred, finish_traces

    later = deferred("timer-on-2-1", [T0, T1], pv_eoi=True, names={}, marks=True)
    result = Result(verdict="unanalyzed", runs={"timer": (record({}), record(later))})
    with pytest.raises(MeasurementError, match=r"the trace of on rep 3 did not come back from the virtual host "
                                               r"\(.*timer-on-2-1-perf.data is missing\)") as err:
        finish_traces(result, tmp_path)
    assert err.value.kind is Kind.INFRASTRUCTURE
    untouched = finish_traces(Result(verdict="unanalyzed", runs={"timer": (record({}),)}), tmp_path)
    assert untouched.runs["timer"][0].trace == {}, "a run without a deferred trace is left alone"
