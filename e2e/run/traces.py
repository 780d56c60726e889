"""
A run's per-event trace turned into its summary (:func:`summary_of`), here or later: the virtual
host's inner runner keeps each guest's ``perf.data`` (:func:`deferred`) and the outer pveoi makes
the traces of its result with native ``perf script`` and Python (:func:`finish_traces`), since L1's
emulated CPU spends seconds per guest on what takes a fraction of one natively.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..errors import Kind, MeasurementError
from ..measure.record import script as perf_script
from ..measure.trace import parse_script, summarize
from ..model.result import Result, RunRecord
from .evidence import write_gz

log = logging.getLogger(__name__)

#: The key of a run's ``trace`` whose summary is left to the caller (``Setup.defer_trace`` of e2e.run.ab).
DEFERRED = "deferred"


def summary_of(text: str, threads: Sequence[int], *, pv_eoi: bool, names: Mapping[str, str],
               marks: bool) -> dict[str, Any]:
    """The summary of ``perf script`` text (:func:`e2e.measure.trace.summarize`) with the guest's
    ``marks`` flag.

    :raises MeasurementError: perf says it lost events: the trace cannot be judged (infrastructure).
    """
    events, lost = parse_script(text)
    if lost:
        raise MeasurementError(f"perf script reports {lost} lost events; the trace cannot be judged",
                               fix="the host is overloaded; rerun", kind=Kind.INFRASTRUCTURE)
    return {**summarize(events, threads, pv_eoi=pv_eoi, names=names), "marks": marks}


def deferred(name: str, threads: Sequence[int], *, pv_eoi: bool, names: Mapping[str, str],
             marks: bool) -> dict[str, Any]:
    """What a run whose ``perf.data`` is kept as ``<name>-perf.data`` records instead of its summary:
    everything :func:`summary_of` needs but the trace."""
    return {DEFERRED: {"perf_data": f"{name}-perf.data", "file": f"{name}-trace.txt.gz", "threads": list(threads),
                       "pv_eoi": pv_eoi, "names": dict(names)}, "marks": marks}


def finish_traces(result: Result, logs: Path) -> Result:
    """``result`` with every deferred trace made here: ``perf script`` of its ``perf.data`` in ``logs``
    (the text kept there as ``<run>-trace.txt.gz``, as a run measured here keeps it; the ``perf.data``
    removed), then its summary, exactly as the run would have drawn it.

    :raises MeasurementError: a ``perf.data`` is missing, or its trace lost events (infrastructure).
    :raises PerfError: ``perf script`` failed (infrastructure).
    """
    return result.with_(runs={w: tuple(_finish(r, logs) for r in records) for w, records in result.runs.items()})


def _finish(record: RunRecord, logs: Path) -> RunRecord:
    todo = (record.trace or {}).get(DEFERRED)
    if not todo:
        return record
    data = logs / todo["perf_data"]
    if not data.is_file():
        raise MeasurementError(f"the trace of {record.arm} rep {record.rep + 1} did not come back from the virtual "
                               f"host ({data} is missing)", fix="rerun; if it recurs, check the disk of the cache",
                               kind=Kind.INFRASTRUCTURE)
    text, _ = perf_script(data)
    try:
        write_gz(logs / todo["file"], text)
        data.unlink()
    except OSError as err:  # evidence only: the summary below is what the run needs
        log.warning("could not keep the trace of %s rep %d as text: %s", record.arm, record.rep + 1, err)
    return replace(record, trace=summary_of(text, todo["threads"], pv_eoi=todo["pv_eoi"], names=todo["names"],
                                            marks=record.trace["marks"]))
