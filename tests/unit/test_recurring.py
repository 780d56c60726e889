"""A failure on every attempt of more than one rep of an arm, the same guest-side way each time, is a
finding (the kernel or KVM under test), while nested TCG's occasional crash stays a retried attempt or
an error (pure; no QEMU)."""

from __future__ import annotations

from pathlib import Path

from e2e.analysis.recurring import recurring_failures
from e2e.model.plan import DEFAULT_ARMS, Plan
from e2e.model.result import Attempt, Result, WorkloadResult
from e2e.run import ab
from e2e.vm.ending import KILLED, TRIPLE_FAULT

EVIDENCE = ("SHUTDOWN reason guest-reset", "console: no reset, panic or shutdown announced by the guest kernel")


def spent(arm: str, rep: int, cls: str = TRIPLE_FAULT, attempts: int = 3) -> list[Attempt]:
    """Every attempt of one rep failed (the last one spent the retries)."""
    return [Attempt(arm, rep, n, "infrastructure", cls, f"{cls} on attempt {n}",
                    (f"timer-{arm}-{rep}-attempt{n}-console.log",), "error" if n == attempts else "retried",
                    EVIDENCE) for n in range(1, attempts + 1)]


def test_two_reps_of_an_arm_that_triple_fault_on_every_attempt_are_a_finding() -> None:
    found = recurring_failures([*spent("on", 0), *spent("on", 2)])
    assert len(found) == 1
    assert found[0].startswith("arm on: 2 reps failed on every attempt, all 6 attempts a triple fault (SHUTDOWN")
    assert "timer-on-0-attempt1-console.log" in found[0]


def test_nested_tcgs_occasional_crash_is_no_finding() -> None:
    once = spent("on", 0)[:1]  # retried, then the rep ran
    assert recurring_failures([*once, *spent("off", 1)[:1]]) == []
    assert recurring_failures(spent("on", 0)) == []  # one rep in error: an error, not a finding
    assert recurring_failures([*spent("on", 0), *spent("off", 1)]) == []  # one rep of each arm


def test_one_attempt_per_rep_is_chance_not_a_finding() -> None:
    """With --retries 0, two reps that crashed once each are nested TCG's rate, not a pattern."""
    assert recurring_failures([*spent("on", 0, attempts=1), *spent("on", 1, attempts=1)]) == []
    assert len(recurring_failures([*spent("on", 0, attempts=2), *spent("on", 1, attempts=2)])) == 1


def test_a_missed_deadline_on_every_boot_is_a_finding_only_when_the_other_arm_ran() -> None:
    """A slow runner misses every arm's deadlines; a guest that hangs with PV EOI on misses only its own."""
    hung = [*spent("on", 0, cls="guest deadline"), *spent("on", 1, cls="guest deadline")]
    assert recurring_failures(hung) == []  # nothing ran at all: the runner, as far as anyone can tell
    assert recurring_failures(hung, ran={"on"}) == []
    assert recurring_failures(hung, ran={"off"})[0].startswith("arm on: 2 reps failed on every attempt, all 6 "
                                                               "attempts a guest deadline")


def test_mixed_or_host_side_classes_are_no_finding() -> None:
    mixed = [*spent("on", 0), *spent("on", 1, cls="guest deadline")]
    assert recurring_failures(mixed, ran={"off"}) == []
    assert recurring_failures([*spent("on", 0, cls=KILLED), *spent("on", 1, cls=KILLED)]) == []
    assert recurring_failures([*spent("on", 0, cls="ssh failure"), *spent("on", 1, cls="ssh failure")]) == []


def crashed_part() -> tuple[Result, Plan]:
    """An inner runner's raw result whose on arm triple-faulted on every attempt of 3 reps, and its plan."""
    attempts = (*spent("on", 0), *spent("on", 1), *spent("on", 2))
    part = Result(verdict="unanalyzed", runs={"timer": ()},
                  workloads={"timer": WorkloadResult("timer", "unanalyzed", errors=("on rep 1: triple fault",) * 3,
                                                     attempts=attempts)})
    plan = Plan(workloads=("timer",), arms=DEFAULT_ARMS, runs=3, kernel=Path("/k/bzImage"),
                image=Path("/cache/images/x"), logs=Path("/logs"))
    return part, plan


def test_reanalysis_turns_it_into_a_failing_verdict() -> None:
    part, plan = crashed_part()
    out = ab.reanalyze(part, plan)
    assert out.verdict == "fail"
    assert out.workloads["timer"].reasons[0].startswith("arm on: 3 reps failed on every attempt, all 9 attempts")
    assert ab.reanalyze(out, plan).workloads["timer"].findings == out.workloads["timer"].findings  # not doubled


def test_under_a_virtual_host_trial_a_failure_on_every_boot_is_no_finding() -> None:
    """A trial's L1 (another CPU model, nested paging off) may crash every guest itself: its results say
    so as infrastructure (error), never as the kernel under test's finding, now or when analyzed again."""
    part, plan = crashed_part()
    assert ab.reanalyze(part, plan, recurring=False).verdict == "error"
    trial = part.with_(host={"chosen": "virtual", "virtual_host": {"trial": {"cpu": "max",
                                                                             "append": ["kvm_amd.npt=0"]}}})
    assert ab.reanalyze(trial, plan).verdict == "error"  # pveoi analyze reads the trial from the result
    assert ab.reanalyze(part, plan).verdict == "fail"
