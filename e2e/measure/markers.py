"""
The guest's window markers (guest_patches/0003): the guest passes its per-CPU skipped and
written EOI counters to the host in a marker hypercall (nr :data:`MARK_NR`, which KVM does not
implement and ``kvm:kvm_hypercall`` records) with interrupts off, at the start (``a0`` =
:data:`MARK_BEGIN`) and end (:data:`MARK_END`) of the workload; :func:`mark_command` wraps a
workload's command in them. :mod:`e2e.measure.trace` reads them back from the trace.
"""

from __future__ import annotations

from collections.abc import Sequence

#: The marker hypercall's number ("pvmk"), guest_patches/0003.
MARK_NR = 0x70766D6B
MARK_BEGIN, MARK_END = 1, 2
#: Where the guest takes its markers.
MARK_FILE = "/sys/kernel/debug/kvm_pv_eoi_mark"


def mark_command(argv: Sequence[str]) -> list[str]:
    """``argv`` between a begin and an end marker, in the guest (its exit status kept)."""
    script = (f'echo {MARK_BEGIN} > {MARK_FILE} || exit 125; "$@"; rc=$?; '
              f'echo {MARK_END} > {MARK_FILE} || exit 125; exit $rc')
    return ["sh", "-c", script, "pveoi-mark", *argv]
