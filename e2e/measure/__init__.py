"""
Counting what KVM and the guest did over a workload window: ``perf stat`` on the
``kvm:*`` tracepoints (:mod:`.perf`), per-event traces and the window markers
(:mod:`.trace`), VM exits by reason (:mod:`.exit_reasons`), and the guest's own
counters (:mod:`.guest_counters`).

May import: :mod:`e2e.errors`, :mod:`e2e.util`, :mod:`e2e.model`,
:mod:`e2e.build`, :mod:`e2e.host`, :mod:`e2e.vm`.
"""
