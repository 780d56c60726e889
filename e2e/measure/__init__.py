"""
Counting what KVM and the guest did over a workload window, one module per job:

* :mod:`.perf_events`: what ``perf stat`` counts, its command line and its CSV;
* :mod:`.perf_errors`: what a failed perf printed, as pveoi's errors;
* :mod:`.perf`: one ``perf stat`` process counting the ``kvm:*`` tracepoints
  over exactly a window;
* :mod:`.markers`: the guest's window markers around a workload;
* :mod:`.record`: one ``perf record`` of the traced events, and ``perf script``;
* :mod:`.vectors`: naming interrupt vectors (the guest's view, system vectors);
* :mod:`.trace`: a recorded trace summarized per vCPU and vector;
* :mod:`.trace_figures`: the tables and figures read out of those summaries;
* :mod:`.vmexits`: VM exits by reason;
* :mod:`.guest_counters`: the guest's own counters.

May import: :mod:`e2e.errors`, :mod:`e2e.util`, :mod:`e2e.model`,
:mod:`e2e.build`, :mod:`e2e.host`, :mod:`e2e.vm`.
"""
