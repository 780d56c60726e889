"""
Result documents: writing them atomically (``--json``, ``--history``) and
rendering the end-of-run table. One JSON document per A/B run is the source
every other format (tables, JUnit, reports) is made from.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import socket
import time
import uuid
from pathlib import Path
from typing import Any

from . import __version__
from .cache import atomic_write
from .errors import PveoiError
from .history import SCHEMA, runner_id


def kernel_manifest(bzimage: Path) -> dict[str, Any]:
    """The cache manifest of a kernel (if it came from pveoi's cache), else its path and hash."""
    manifest = bzimage.parent / "manifest.json"
    if manifest.is_file():
        data = json.loads(manifest.read_text())
        data.pop("files", None)
        return dict(data)
    from .cache import sha256_file

    return {"kind": "path", "path": str(bzimage), "sha256": sha256_file(bzimage)}


def not_measurable(reason: str, args: argparse.Namespace) -> dict[str, Any]:
    """A complete result document for a host that cannot measure PV EOI."""
    return {
        "schema": SCHEMA, "pveoi_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "verdict": "not-measurable", "reason": reason,
        "host": {"chosen": "not-measurable", "reason": reason},
        "runner": {"hostname": platform.node(), "kernel": platform.release()},
        "arms": {}, "workloads": {}, "metrics": {}, "eoi_exits_saved_per_interrupt": None,
        "runs_per_arm": getattr(args, "runs", None),
    }


def error_result(err: PveoiError, host: str, why: str, args: argparse.Namespace) -> dict[str, Any]:
    """A complete result document for an A/B that stopped on an error: verdict ``error``, no
    figures, the error (message and fix) kept so a history shows why the night measured nothing."""
    doc = not_measurable(str(err), args)
    doc.update(verdict="error", host={"chosen": host, "reason": why},
               error={"type": type(err).__name__, "message": err.message, "fix": err.fix})
    return doc


def runner_identity(runner: dict[str, Any], doctor_report: dict[str, Any] | None) -> dict[str, Any]:
    """``runner`` with what a history groups and explains by: its id and the doctor's findings."""
    return {**runner, "id": runner_id(), "doctor": list(doctor_report.get("findings", [])) if doctor_report else []}


def history_name(doc: dict[str, Any]) -> str:
    """A file name that never collides across runners and runs."""
    stamp = str(doc.get("created", "")).replace(":", "").replace("-", "") or time.strftime("%Y%m%dT%H%M%SZ")
    host = socket.gethostname().replace("/", "_")
    return f"{stamp}-{host}-{os.getpid()}-{uuid.uuid4().hex[:8]}.json"


def emit(doc: dict[str, Any], json_path: Path | None, history: Path | None) -> None:
    """Write ``doc`` into ``history`` and to ``json_path`` (each atomic; the history first, so a
    ``--json`` file never holds a verdict the history failed to record)."""
    text = json.dumps(doc, indent=2, sort_keys=True, default=str) + "\n"
    if history is not None:
        atomic_write(history.expanduser().absolute() / history_name(doc), text)
    if json_path is not None:
        atomic_write(json_path.expanduser().absolute(), text)


def fmt_number(value: Any, digits: int = 3) -> str:
    """A number for a table: ``-`` for none/NaN, ``?`` for anything that is not a number (a malformed file)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "?"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def fmt_ci(ci: Any) -> str:
    """An interval ``[low, high]`` for a table ("" if there is none)."""
    return f"[{fmt_number(ci[0])}, {fmt_number(ci[1])}]" if ci else ""


def format_table(doc: dict[str, Any]) -> str:
    """A readable end-of-run table: per workload, per metric: off, on, reduction, interval."""
    lines = [f"verdict: {doc['verdict'].upper()}"]
    host = doc.get("host", {})
    if host:
        lines.append(f"host: {host.get('chosen')} ({host.get('reason')})")
    for name, w in doc.get("workloads", {}).items():
        lines.append("")
        lines.append(f"workload {name}: {w.get('verdict', '?').upper()}  ({w.get('description', '')})")
        head = w.get("eoi_exits_saved_per_interrupt")
        if head:
            lines.append(f"  EOI exits saved per injected interrupt: {fmt_number(head.get('value'))} "
                         f"{fmt_ci(head.get('ci'))} (limit 1.0)")
        metrics = w.get("metrics", {})
        if metrics:
            treat, base = w.get("treatment", "on"), w.get("baseline", "off")
            lines.append(f"  {'per injected interrupt':<24} {base:>9} {treat:>9} {'reduction':>10}  interval")
            for key, m in metrics.items():
                lines.append(f"  {key:<24} {fmt_number(m.get('off_median')):>9} {fmt_number(m.get('on_median')):>9} "
                             f"{fmt_number(m.get('reduction')):>10}  {fmt_ci(m.get('reduction_ci'))}")
        for arm_name, arm in doc.get("arms", {}).items():
            runs = arm.get("runs", {}).get(name, [])
            if runs:
                pv = [r["counts"].get("kvm:kvm_pv_eoi") for r in runs]
                inj = [r["counts"].get("kvm:kvm_inj_virq") for r in runs]
                guest = [(r["guest"].get("pv_eoi") or {}).get("skipped") for r in runs]
                lines.append(f"  arm {arm_name}: kvm_pv_eoi={pv} inj_virq={inj} guest_skipped={guest}")
        for reason in w.get("reasons", []):
            lines.append(f"  ! {reason}")
        for note in w.get("notes", []):
            lines.append(f"  note: {note}")
    if doc["verdict"] == "not-measurable":
        lines.append(f"reason: {doc.get('reason')}")
    return "\n".join(lines)
