"""Failed attempts as structured records: what ``_run_with_retries`` records for each (class, kind,
outcome, logs), how they round-trip through the result document, survive re-analysis, and show in
the end-of-run table and the Markdown report. No QEMU: ``run_guest`` is replaced by one that writes
an attempt's logs and fails the way a real one does (tests/e2e/test_evidence.py does it for real)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from e2e.errors import (
    CapabilityError,
    CommandFailed,
    CommandTimeout,
    Finding,
    GuestTimeout,
    Kind,
    MeasurementError,
    PerfError,
    PveoiError,
    QemuExited,
    QmpCommandError,
    QmpLost,
    QmpTimeout,
    SshError,
)
from e2e.model.plan import DEFAULT_ARMS, Plan
from e2e.model.result import Attempt, Result, WorkloadResult
from e2e.model.workloads import WORKLOADS
from e2e.report.results import failed_attempts, format_table
from e2e.run import ab
from e2e.run.evidence import AttemptTrace, keep_perf_output
from e2e.vm.ending import GUEST_RESET, PANIC
from tests.helpers.fake_ab import fake_run_guest, setup_in
from tests.helpers.results import make_doc, write_history

ON = DEFAULT_ARMS[0]
TIMER = WORKLOADS["timer"]
RESET_EVIDENCE = ("SHUTDOWN reason guest-reset", "console: 'sysrq: Resetting'")


def reset_error() -> QemuExited:
    return QemuExited("SSH connection dropped while running `x`: QEMU (pid 7) exited mid-command: guest reset "
                      "(SHUTDOWN reason guest-reset; console: 'sysrq: Resetting')", GUEST_RESET, RESET_EVIDENCE, 0)


def test_a_retried_attempt_is_recorded_with_its_class_and_logs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ab, "run_guest", fake_run_guest([reset_error()]))
    outcome = ab.Outcome()
    ab._run_with_retries(setup_in(tmp_path), ON, TIMER, [], (2,), 1, outcome)
    assert [r.attempt for r in outcome.runs] == [2]
    assert outcome.retried == [f"on rep 3: {reset_error()}"]  # the string list stays as it was
    assert outcome.attempts == [Attempt("on", 2, 1, "infrastructure", GUEST_RESET, str(reset_error()),
                                        ("timer-on-2-console.log",), "retried", RESET_EVIDENCE)]
    assert sorted(p.name for p in (tmp_path / "logs").iterdir()) == ["timer-on-2-attempt2-console.log",
                                                                    "timer-on-2-console.log"]


def test_spent_retries_and_findings_are_recorded_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    timeout = GuestTimeout("guest not ready after 180s")
    monkeypatch.setattr(ab, "run_guest", fake_run_guest([reset_error(), timeout]))
    outcome = ab.Outcome()
    ab._run_with_retries(setup_in(tmp_path), ON, TIMER, [], (0,), 1, outcome)
    assert not outcome.runs and len(outcome.errors) == 1
    assert [(a.attempt, a.outcome, a.cls, a.logs) for a in outcome.attempts] == [
        (1, "retried", GUEST_RESET, ("timer-on-0-console.log",)),
        (2, "error", "", ("timer-on-0-attempt2-console.log",))]  # no machine in the fake: no class
    panic = QemuExited("... exited mid-command: panic (...)", PANIC, ("console: 'Kernel panic'",), 0,
                       kind=Kind.FINDING)
    monkeypatch.setattr(ab, "run_guest", fake_run_guest([panic]))
    outcome = ab.Outcome()
    ab._run_with_retries(setup_in(tmp_path), ON, TIMER, [], (1,), 3, outcome)
    assert len(outcome.findings) == 1 and not outcome.retried
    assert [(a.outcome, a.kind, a.cls) for a in outcome.attempts] == [("finding", "finding", PANIC)]


def test_a_capability_error_stops_the_ab_and_records_no_attempt(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ab, "run_guest", fake_run_guest([CapabilityError("perf denied")]))
    outcome = ab.Outcome()
    with pytest.raises(CapabilityError):
        ab._run_with_retries(setup_in(tmp_path), ON, TIMER, [], (0,), 1, outcome)
    assert not outcome.attempts
    assert Finding("x").kind is Kind.FINDING


ATTEMPT = Attempt("off", 0, 1, "infrastructure", GUEST_RESET, "QEMU exited mid-command: guest reset (...)",
                  ("timer-off-0-console.log", "timer-off-0-qemu.log", "timer-off-0-perf-stderr.log"), "retried",
                  RESET_EVIDENCE)


def test_attempts_round_trip_next_to_the_string_lists() -> None:
    w = WorkloadResult("timer", "pass", retried=("off rep 1: QEMU exited",), attempts=(ATTEMPT,))
    doc = json.loads(json.dumps(w.to_json()))
    assert doc["retried"] == ["off rep 1: QEMU exited"]
    assert doc["attempts"] == [{"arm": "off", "rep": 0, "attempt": 1, "kind": "infrastructure",
                                "class": "guest reset", "message": ATTEMPT.message, "logs": list(ATTEMPT.logs),
                                "outcome": "retried", "evidence": list(RESET_EVIDENCE)}]
    assert WorkloadResult.from_json("timer", doc) == w
    del doc["attempts"]  # a result written before attempts were recorded
    assert WorkloadResult.from_json("timer", doc).attempts == ()


def test_reanalysis_keeps_the_attempts() -> None:
    part = Result(verdict="error", runs={"timer": ()},
                  workloads={"timer": WorkloadResult("timer", "error", errors=("off rep 1: reset",),
                                                     attempts=(ATTEMPT,))})
    plan = Plan(workloads=("timer",), arms=DEFAULT_ARMS, runs=1, kernel=Path("/k/bzImage"),
                image=Path("/cache/images/x"), logs=Path("/logs"))
    assert ab.reanalyze(part, plan).workloads["timer"].attempts == (ATTEMPT,)


def test_the_table_names_each_failed_attempts_logs() -> None:
    res = Result(verdict="pass", logs="/logs/ab-1", workloads={"timer": WorkloadResult("timer", "pass",
                                                                                      attempts=(ATTEMPT,))})
    table = format_table(res)
    assert ("  failed attempts (logs in /logs/ab-1):\n    off rep 1 attempt 1: guest reset (infrastructure, "
            "retried); logs: timer-off-0-console.log, timer-off-0-qemu.log, timer-off-0-perf-stderr.log") in table
    assert failed_attempts(res, "timer", absolute=True)[0].endswith(
        "logs: /logs/ab-1/timer-off-0-console.log, /logs/ab-1/timer-off-0-qemu.log, "
        "/logs/ab-1/timer-off-0-perf-stderr.log")
    assert "failed attempts" not in format_table(Result(verdict="pass", workloads={"timer": WorkloadResult(
        "timer", "pass")}))


def test_the_markdown_report_lists_the_latest_runs_failed_attempts(tmp_path: Path) -> None:
    from e2e.analysis.history import load_history
    from e2e.analysis.regress import check
    from e2e.report.render import render_markdown

    doc = make_doc(0, {"timer": ([0.98] * 3, "pass")})
    doc["logs"] = "/logs/ab-1"
    doc["workloads"]["timer"]["attempts"] = [ATTEMPT.to_json()]
    history = load_history(write_history(tmp_path, [doc]))
    text = render_markdown(history, check(history))
    assert ("- [r1] timer: off rep 1 attempt 1: guest reset (infrastructure, retried); logs: "
            "/logs/ab-1/timer-off-0-console.log, /logs/ab-1/timer-off-0-qemu.log, "
            "/logs/ab-1/timer-off-0-perf-stderr.log") in text


class FakePerf:
    """What keep_perf_output reads of a PerfStat: its temp dir while it runs, its texts once stopped."""

    def __init__(self, workdir: Path | None, output: str | None = None, stderr: str | None = None) -> None:
        self.workdir = workdir
        self.output_text = output
        self.stderr_text = stderr


def test_perfs_stderr_of_a_failed_attempt_is_kept_before_its_temp_dir_goes(tmp_path: Path) -> None:
    tmp = tmp_path / "perf-tmp"
    tmp.mkdir()
    (tmp / "stderr").write_text("Events disabled\nEvents enabled\n")
    trace = AttemptTrace(tmp_path)
    with pytest.raises(RuntimeError), keep_perf_output(FakePerf(tmp), tmp_path, "t-on-0", trace):  # type: ignore[arg-type]
        raise RuntimeError("QEMU exited mid-command")
    assert (tmp_path / "t-on-0-perf-stderr.log").read_text() == "Events disabled\nEvents enabled\n"
    assert not (tmp_path / "t-on-0-perf.csv").exists(), "perf had written no CSV yet: none is invented"
    assert trace.logs() == ("t-on-0-perf-stderr.log",)
    # A stopped perf: its temp dir is gone, what it read is kept.
    with keep_perf_output(FakePerf(None, "3;;kvm:kvm_exit\n", ""), tmp_path, "t-on-1"):  # type: ignore[arg-type]
        pass
    assert (tmp_path / "t-on-1-perf.csv").read_text() == "3;;kvm:kvm_exit\n"


def test_a_failed_virtual_hosts_guest_logs_stay_with_it_and_its_retry_overwrites_none(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each virtual host runs its guests under the same names: a failed one's guests' logs go to its own
    ``vhost-<tag>-<n>/guests/``, the successful retry's to the run's logs."""
    from e2e.errors import GuestError
    from e2e.report import results
    from e2e.run import runner

    def fake_vhost(fail: bool) -> Any:
        def run_in_vhost(argv: list[str], kernel: Path, tmp: Path, **kw: Any) -> tuple[int, object]:
            (tmp / "logs").mkdir()
            (tmp / "logs" / "timer-on-0-console.log").write_text(f"failed={fail}\n")
            if fail:
                raise GuestError("the virtual host stopped before the command finished")
            (tmp / "result.json").write_text(results.dumps(Result(verdict="pass")))
            return 0, object()
        return run_in_vhost

    plan = Plan(workloads=("timer",), arms=DEFAULT_ARMS, runs=1, kernel=tmp_path / "k", image=tmp_path / "i",
                logs=tmp_path / "logs")
    monkeypatch.setattr(runner, "run_in_vhost", fake_vhost(True))
    with pytest.raises(GuestError):
        runner.in_vhost(plan, tmp_path / "hk", 60, plan.logs / "vhost-timer-1")
    monkeypatch.setattr(runner, "run_in_vhost", fake_vhost(False))
    res, _ = runner.in_vhost(plan, tmp_path / "hk", 60, plan.logs / "vhost-timer-2")
    assert res.verdict == "pass"
    assert (plan.logs / "vhost-timer-1" / "guests" / "timer-on-0-console.log").read_text() == "failed=True\n"
    assert (plan.logs / "timer-on-0-console.log").read_text() == "failed=False\n"


@pytest.mark.parametrize(("err", "cls"), [
    (PerfError("perf record failed during attach (exit code 255)", kind=Kind.INFRASTRUCTURE), "perf failure"),
    (MeasurementError("arm on asked for kvm-pv-eoi=on but QMP reads [False]"), "measurement failure"),
    (GuestTimeout("guest not ready after 180s"), "guest deadline"),
    (CommandTimeout("guest command `iperf3` timed out after 600s"), "guest deadline"),
    (CommandFailed("guest command `dd` exited 1: no space"), "command failed"),
    (SshError("no SSH to the guest"), "ssh failure"),
    (QmpCommandError("query-status", {}, "GenericError", "timed out"), "qmp failure"),
    (QmpTimeout("QEMU did not answer QMP query-status"), "qmp failure"),
    (QmpLost("the QMP connection to QEMU closed during query-status"), "qmp failure"),
    (PveoiError("something else"), "qemu running"),
])
def test_an_attempt_that_failed_while_qemu_ran_is_classed_by_what_failed(tmp_path: Path, err: PveoiError,
                                                                         cls: str) -> None:
    """The soak saw a perf attach failure recorded as class "qemu running", which names no cause."""
    from types import SimpleNamespace

    from e2e.vm.ending import CLASSES, RUNNING, TRIPLE_FAULT, ExitCause

    assert cls in CLASSES
    machine = SimpleNamespace(ended=ExitCause(RUNNING, ("QEMU still ran",)), log_paths=lambda: [])
    got = AttemptTrace(tmp_path, machine).attempt(err, "on", 0, 1, "retried")  # type: ignore[arg-type]
    assert (got.cls, got.evidence) == (cls, ("QEMU still ran",))
    # What the error kept (a boot deadline's vCPUs) reaches the attempt's evidence.
    err = err.with_(evidence=("run state running", "CPU0 RIP=ffffffff81479993 HLT=1 (same 1 s later)"))
    got = AttemptTrace(tmp_path, machine).attempt(err, "on", 0, 1, "retried")  # type: ignore[arg-type]
    assert got.evidence == ("QEMU still ran", *err.evidence)
    # QEMU's own end comes first: an SSH error from a guest that triple-faulted is the triple fault.
    machine.ended = ExitCause(TRIPLE_FAULT, ("SHUTDOWN reason guest-reset",))
    assert AttemptTrace(tmp_path, machine).attempt(err, "on", 0, 1, "retried").cls == TRIPLE_FAULT  # type: ignore[arg-type]


def test_a_qemu_that_refuses_the_machine_the_same_way_twice_stops_the_ab(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A missing firmware file fails every launch alike: the second identical refusal is the setup's (a
    capability error that stops the A/B), not 18 retried attempts; a different second failure is retried."""
    from e2e.errors import LaunchError

    def refused(port: int) -> LaunchError:
        return LaunchError(f"QEMU did not answer on QMP (exit code 1): qemu-system-x86_64: -device virtio-net-pci,"
                           f"netdev=net0,port={port}: failed to find romfile \"efi-virtio.rom\"", exitcode=1)

    monkeypatch.setattr(ab, "run_guest", fake_run_guest([refused(4001), refused(4002)]))
    outcome = ab.Outcome()
    with pytest.raises(CapabilityError, match="QEMU refuses to start the guest, the same way twice") as err:
        ab._run_with_retries(setup_in(tmp_path), ON, TIMER, [], (0,), 2, outcome)
    assert "efi-virtio.rom" in str(err.value) and "install-deps" in (err.value.fix or "")
    assert [(a.attempt, a.outcome) for a in outcome.attempts] == [(1, "retried"), (2, "error")]
    monkeypatch.setattr(ab, "run_guest", fake_run_guest([refused(4001), LaunchError("Could not set up host forwarding "
                                                                                    "rule 'tcp::4001-:22'")]))
    outcome = ab.Outcome()
    ab._run_with_retries(setup_in(tmp_path), ON, TIMER, [], (0,), 2, outcome)
    assert [r.attempt for r in outcome.runs] == [3]  # different failures: chance, retried
    # Not in a row (a boot deadline between), or no exit status (QMP silent, not QEMU refusing): retried.
    for failures in ([refused(1), GuestTimeout("guest not ready after 180s"), refused(2)],
                     [LaunchError("QEMU sent no QMP greeting within 30 s")] * 2):
        monkeypatch.setattr(ab, "run_guest", fake_run_guest(list(failures)))
        outcome = ab.Outcome()
        ab._run_with_retries(setup_in(tmp_path), ON, TIMER, [], (0,), 3, outcome)
        assert [r.attempt for r in outcome.runs] == [len(failures) + 1]


def test_perf_failing_to_attach_to_a_qemu_that_is_gone_is_how_qemu_ended(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Under a slow attach an early triple fault ends QEMU first: perf then finds no threads, and the
    attempt's class must be the triple fault, not perf's complaint."""
    from e2e.errors import PerfError
    from e2e.run import guest as guest_module

    def no_threads(*_: object) -> None:
        raise PerfError("perf stat failed during attach (exit code 255): No such process", fix="pass live ones")

    monkeypatch.setattr(guest_module, "_attach_perf", no_threads)
    guest = guest_module.Guest(setup_in(tmp_path), ON, TIMER, [], (0,))

    class Gone:
        def __init__(self, ended: QemuExited | None) -> None:
            self.ended = ended

        def exit_error(self, what: str, grace: float = 0.0, when: str = "") -> QemuExited | None:
            return self.ended

    with pytest.raises(QemuExited) as err:
        guest._attach(Gone(reset_error()), (), guest.name)  # type: ignore[arg-type]
    assert err.value.cause == GUEST_RESET
    with pytest.raises(PerfError):  # QEMU still runs: perf's own failure stands
        guest._attach(Gone(None), (), guest.name)  # type: ignore[arg-type]
