"""
Result documents: writing them atomically (``--json``, ``--history``) and
rendering the end-of-run table. One JSON document per A/B run is the source
every other format (tables, JUnit, reports) is made from.
"""

from __future__ import annotations

import json
import math
import os
import platform
import socket
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..analysis.history import runner_id
from ..build.cache import atomic_write
from ..errors import PveoiError
from ..model.result import Result


def kernel_manifest(bzimage: Path) -> dict[str, Any]:
    """The cache manifest of a kernel (if it came from pveoi's cache), else its path and hash."""
    manifest = bzimage.parent / "manifest.json"
    if manifest.is_file():
        data = json.loads(manifest.read_text())
        data.pop("files", None)
        return dict(data)
    from ..build.cache import sha256_file

    return {"kind": "path", "path": str(bzimage), "sha256": sha256_file(bzimage)}


def not_measurable(reason: str, runs: int | None) -> Result:
    """A complete result for a host that cannot measure PV EOI."""
    return Result(verdict="not-measurable", reason=reason, runs_per_arm=runs,
                  host={"chosen": "not-measurable", "reason": reason},
                  runner={"hostname": platform.node(), "kernel": platform.release()})


def error_result(err: PveoiError, host: str, why: str, runs: int | None) -> Result:
    """A complete result for an A/B that stopped on an error: verdict ``error``, no figures, the
    error (kind, message and fix) kept so a history shows why the night measured nothing."""
    return Result(verdict="error", reason=str(err), runs_per_arm=runs, host={"chosen": host, "reason": why},
                  runner={"hostname": platform.node(), "kernel": platform.release()},
                  error={"kind": str(err.kind), "type": type(err).__name__, "message": err.message, "fix": err.fix,
                         # how it ended, where the error knows (an exit class, a virtual host stall)
                         **({"class": err.cause} if err.cause else {}),
                         **({"evidence": list(err.evidence)} if err.evidence else {}),
                         **({"retried": list(err.retried)} if err.retried else {})})


def runner_identity(runner: dict[str, Any], doctor_report: dict[str, Any] | None) -> dict[str, Any]:
    """``runner`` with what a history groups and explains by: its id and the doctor's findings."""
    return {**runner, "id": runner_id(), "doctor": list(doctor_report.get("findings", [])) if doctor_report else []}


def history_name(result: Result) -> str:
    """A file name that never collides across runners and runs."""
    stamp = result.created.replace(":", "").replace("-", "") or time.strftime("%Y%m%dT%H%M%SZ")
    host = socket.gethostname().replace("/", "_")
    return f"{stamp}-{host}-{os.getpid()}-{uuid.uuid4().hex[:8]}.json"


def dumps(result: Result) -> str:
    """The one writer of a result document."""
    return json.dumps(result.to_json(), indent=2, sort_keys=True, default=str) + "\n"


def load(path: Path) -> Result:
    """The one reader of a result file (any readable schema).

    :raises ConfigError: unreadable or not JSON. :raises SchemaError: not a readable result.
    """
    from ..errors import ConfigError

    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"cannot read result {path}: {err}", fix="pass a file `pveoi ab --json` wrote") from err
    return Result.from_json(data, str(path))


def emit(result: Result, json_path: Path | None, history: Path | None) -> None:
    """Write ``result`` into ``history`` and to ``json_path`` (each atomic; the history first, so a
    ``--json`` file never holds a verdict the history failed to record)."""
    text = dumps(result)
    if history is not None:
        atomic_write(history.expanduser().absolute() / history_name(result), text)
    if json_path is not None:
        atomic_write(json_path.expanduser().absolute(), text)


def write_ktap(target: str | None, results: Sequence[Result]) -> None:
    """Write ``results`` as KTAP version 1 (:mod:`e2e.report.ktap`) to ``target``: a path (atomically),
    ``-`` for stdout, or None for nowhere.

    :raises ConfigError: the path cannot be written.
    """
    if target is None:
        return
    from ..errors import ConfigError
    from . import ktap

    text = ktap.render(results)
    if target == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    path = Path(target).expanduser().absolute()
    try:
        atomic_write(path, text)
    except OSError as err:
        raise ConfigError(f"cannot write {path}: {err.strerror}", fix="pick a writable path for --ktap") from err


def fmt_number(value: Any, digits: int = 3) -> str:
    """A number for a table: ``-`` for none/NaN, ``?`` for anything that is not a number (a malformed file)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "?"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def fmt_p(p: Any, model: Any = None) -> str:
    """A p-value for a table: 3 decimals, or scientific below 0.001; ``*`` marks a quasi-Poisson one."""
    mark = "*" if model == "quasi-poisson" else ""
    if isinstance(p, float) and 0 < p < 0.001:
        return f"{p:.0e}{mark}"
    return fmt_number(p) + (mark if isinstance(p, float) else "")


def fmt_ci(ci: Any) -> str:
    """An interval ``[low, high]`` for a table ("" if there is none)."""
    return f"[{fmt_number(ci[0])}, {fmt_number(ci[1])}]" if ci else ""


def _arm_line(result: Result, workload: str, arm: str) -> str | None:
    runs = result.runs_of(workload, arm)
    if not runs:
        return None
    pv = [r.counts.get("kvm:kvm_pv_eoi") for r in runs]
    inj = [r.counts.get("kvm:kvm_inj_virq") for r in runs]
    guest = [(r.guest_pv_eoi or {}).get("skipped") for r in runs]
    return f"  arm {arm}: kvm_pv_eoi={pv} inj_virq={inj} guest_skipped={guest}"


def _vector_lines(result: Result, workload: str) -> list[str]:
    """Per arm, where the EOIs of the marker windows went, by vector (runs traced per event only)."""
    from ..measure.trace_figures import armed_taken, format_vector_rows, vector_rows, window_totals

    lines = []
    for arm in result.arms:
        traces = [r.trace for r in result.runs_of(workload, arm) if r.trace.get("vcpus")]
        if not traces:
            continue
        total = window_totals(traces)
        taken = [x for x in (armed_taken(t) for t in traces) if x is not None]
        lines.append(f"  arm {arm}, EOIs by vector over {len(traces)} run(s) (marker windows): "
                     f"{total.get('host_eoi', 0)} EOIs, {total.get('host_pv_eoi', 0)} by PV EOI"
                     + (f"; PV EOI taken when armed {min(taken):.4f}-{max(taken):.4f}"
                        if taken and result.arms[arm].expects_pv_eoi else ""))
        lines.extend(f"    {line}" for line in format_vector_rows(vector_rows(traces)))
    return lines


def failed_attempts(result: Result, workload: str, absolute: bool = False) -> list[str]:
    """One line per attempt of ``workload`` that gave no run: which, its class, what became of it and
    its logs (relative to the result's ``logs`` directory, or ``absolute``)."""
    w = result.workloads.get(workload)
    if w is None:
        return []
    base = Path(result.logs) if result.logs else None
    out = []
    for a in w.attempts:
        logs = [str(base / name) if absolute and base is not None else name for name in a.logs]
        out.append(f"{a.arm} rep {a.rep + 1} attempt {a.attempt}: {a.cls or a.kind} ({a.kind}, {a.outcome})"
                   + (f"; logs: {', '.join(logs)}" if logs else "; no logs kept"))
    return out


def format_table(result: Result) -> str:
    """A readable end-of-run table: per workload, the on/off figures, then every other comparison."""
    lines = [f"verdict: {result.verdict.upper()}"]
    if result.host:
        lines.append(f"host: {result.host.get('chosen')} ({result.host.get('reason')})")
        for r in result.host.get("virtual_host", {}).get("restarts", []):
            if isinstance(r, dict):  # (a string in results before 2026-12-04)
                lines.append(f"  virtual host restarted for {r.get('part')} (attempt {r.get('attempt')}): "
                             f"{r.get('class') or r.get('kind')}; logs: {r.get('logs')}")
    for name, w in result.workloads.items():
        lines.append("")
        lines.append(f"workload {name}: {w.verdict.upper()}  ({w.description})")
        head = w.eoi_exits_saved_per_interrupt
        if head:
            lines.append(f"  EOI exits saved per injected interrupt: {fmt_number(head.get('value'))} "
                         f"{fmt_ci(head.get('ci'))} (limit 1.0; {w.treatment} vs {w.baseline})")
        own = w.own_saved
        if own:
            lines.append(f"  EOI exits saved per workload interrupt: {fmt_number(own.get('diff'))} "
                         f"{fmt_ci(own.get('diff_ci'))} (its own: {', '.join(own.get('sources') or [])}; "
                         "the headline also counts the tick and IPIs, whose number follows the seconds)")
        if w.metrics:
            lines.append(f"  {'per injected interrupt':<24} {w.baseline or 'off':>9} {w.treatment or 'on':>9} "
                         f"{'reduction':>10}  {'interval':<16} {'p':>5} {'p_rate':>8}")
            for key, m in w.metrics.items():
                lines.append(f"  {key:<24} {fmt_number(m.get('off_median')):>9} {fmt_number(m.get('on_median')):>9} "
                             f"{fmt_number(m.get('reduction')):>10}  {fmt_ci(m.get('reduction_ci')):<16} "
                             f"{fmt_number(m.get('p_value')):>5} {fmt_p(m.get('p_rate'), m.get('rate_model')):>8}")
            lines.append("  (p: permutation over reps, at least 0.1 with 3 reps per arm; p_rate: rate test on the "
                         "counts, * where reps scatter beyond counting noise)")
        first = True
        for comp in w.comparisons:
            if comp.kind == "effect" and comp.a == w.baseline and comp.b == w.treatment:
                continue  # the table above
            if first:
                lines.append("  comparisons (b - a; 95 % CI of the difference; permutation p):")
                first = False
            if comp.kind == "aa":
                lines.append(f"  A/A {comp.b} vs {comp.a} (one experiment measured twice, a noise check: a "
                             f"difference flagged here is a false alarm): {comp.verdict.upper()}")
            else:
                lines.append(f"  {comp.kind} {comp.b} vs {comp.a} (differ in {', '.join(comp.differs_in) or '-'}): "
                             f"{comp.verdict.upper()}")
            if comp.kind == "effect" and comp.headline:
                lines.append(f"    EOI exits saved per interrupt {fmt_number(comp.headline.get('value'))} "
                             f"{fmt_ci(comp.headline.get('ci'))}")
            for key in ("trapped_eoi", "kvm_exit", "eoi_saved"):
                m = comp.metrics.get(key)
                if not m or comp.kind == "effect":
                    continue
                if "a_median" in m:
                    lines.append(f"    {key:<12} a {fmt_number(m['a_median'])}  b {fmt_number(m['b_median'])}  "
                                 f"diff {fmt_number(m['diff'])} {fmt_ci(m['diff_ci'])}  p {fmt_number(m['p_value'])}"
                                 f"  p_rate {fmt_p(m.get('p_rate'), m.get('rate_model'))}")
                else:
                    lines.append(f"    {key:<12} a {fmt_number(m.get('a'))}  b {fmt_number(m.get('b'))}  "
                                 f"diff {fmt_number(m['diff'])} {fmt_ci(m['diff_ci'])}")
        for arm in result.arms:
            line = _arm_line(result, name, arm)
            if line:
                lines.append(line)
        lines.extend(_vector_lines(result, name))
        for reason in w.reasons:
            lines.append(f"  ! {reason}")
        for note in w.notes:
            lines.append(f"  note: {note}")
        attempts = failed_attempts(result, name)
        if attempts:
            lines.append(f"  failed attempts (logs in {result.logs or 'the logs directory'}):")
            lines.extend(f"    {line}" for line in attempts)
    if result.verdict == "not-measurable" or (result.verdict == "error" and not result.workloads):
        lines.append(f"reason: {result.reason}")
    return "\n".join(lines)
