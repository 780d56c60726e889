"""
Failures that repeat on every boot of an arm: a finding, not infrastructure (pure).

One guest that triple-faults, resets or misses its boot deadline is retried on
a fresh guest (:func:`e2e.errors.retryable`): under the virtual host nested TCG
does that to 2-6 % of L2 guests by itself (docs/measurements.md). But when
*every* attempt of more than one rep of an arm fails, and fails the same way,
chance does not explain it: at 6 % a rep failing all three attempts is one in
4,600, two such reps one in 21 million. A kernel (or a KVM) under test that
triple-faults on every boot with PV EOI on is exactly what pveoi exists to
catch, so it is named as a finding (verdict ``fail``, exit 1), not an error.

Only classes the guest's side causes count (:data:`GUEST_SIDE`; a missed
deadline or an OOM only when another arm of the workload ran, since a slow or
small runner causes those too); a QEMU killed from outside, a lost virtual
host, an SSH or perf failure never do, nor reps with a single attempt
(``--retries 0``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence

from ..model.result import Attempt
from ..vm.ending import GUEST_RESET, OOM, POWEROFF, TRIPLE_FAULT

#: How an attempt ends when the guest's CPU or kernel did it (a panic is a finding already, on its first
#: attempt): on every attempt, the kernel or KVM under test.
GUEST_SIDE = frozenset({TRIPLE_FAULT, GUEST_RESET, POWEROFF})
#: Failures that a slow or small runner causes too (a missed deadline, memory too small for the
#: workload): a finding only when they are the arm's own, i.e. another arm of the workload ran.
ARM_SPECIFIC = frozenset({OOM, "guest deadline"})
#: Reps of one arm that must fail on every attempt, the same way, to make a finding.
MIN_REPS = 2
#: Attempts a rep must have had: with ``--retries 0`` one crash per rep is all there is, and two such
#: reps are chance at nested TCG's rate.
MIN_ATTEMPTS = 2


def recurring_failures(attempts: Sequence[Attempt], ran: Iterable[str] = ()) -> list[str]:
    """One finding per arm of which at least :data:`MIN_REPS` reps failed on every one of at least
    :data:`MIN_ATTEMPTS` attempts (retries spent), every attempt of them ending in the same guest-side
    class (:data:`GUEST_SIDE`, or :data:`ARM_SPECIFIC` when another arm is in ``ran``, the arms that
    gave runs)."""
    ran = set(ran)
    by_rep: dict[tuple[str, int], list[Attempt]] = defaultdict(list)
    for a in attempts:
        by_rep[(a.arm, a.rep)].append(a)
    spent: dict[str, list[list[Attempt]]] = defaultdict(list)
    for (arm, _rep), tries in by_rep.items():
        # retries spent: every attempt of the rep failed
        if len(tries) >= MIN_ATTEMPTS and any(t.outcome == "error" for t in tries):
            spent[arm].append(sorted(tries, key=lambda t: t.attempt))
    out = []
    for arm, reps in spent.items():
        classes = {t.cls for tries in reps for t in tries}
        allowed = GUEST_SIDE | (ARM_SPECIFIC if ran - {arm} else frozenset())
        if len(reps) < MIN_REPS or len(classes) != 1 or not classes <= allowed:
            continue
        (cls,) = classes
        n = sum(len(tries) for tries in reps)
        first = reps[0][0]
        said = f" ({first.evidence[0]})" if first.evidence else ""
        out.append(f"arm {arm}: {len(reps)} reps failed on every attempt, all {n} attempts a {cls}{said}: a failure "
                   f"that repeats on every boot is the kernel's or the KVM's under test, not nested TCG's "
                   f"occasional crash; logs: {', '.join(first.logs) or 'none kept'}")
    return out
