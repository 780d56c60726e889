"""
``pveoi doctor``: probe the host (:mod:`e2e.host.capability`), run a probe boot where it makes
sense, grade every check (:mod:`e2e.host.checks`) into a :class:`DoctorCheck` line, and decide
where PV EOI can be measured (:mod:`e2e.host.decision`); the result is one JSON report
(:func:`doctor_report`, whose ``findings`` are the graded checks) that :func:`format_text`
renders and :func:`decision_from_report` reads back.

:func:`doctor_checks` is pure. :func:`run_doctor` probes, optionally boots a
probe guest through a caller-supplied callable, and returns the report. This
module never prints.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..errors import PveoiError
from .capability import HostFacts, probe_host
from .checks import (
    Check,
    check_backend,
    check_cache,
    check_eoi_virtualisation,
    check_kvm_dev,
    check_perf,
    check_perf_permissions,
    check_pv_eoi_property,
    check_qemu,
    check_tcg,
    check_tracepoints,
)
from .decision import Decision, ProbeBoot, decide
from .tools import RunCommand

log = logging.getLogger(__name__)


Status = Literal["ok", "warn", "fail", "info"]

SCHEMA = 1


@dataclass(frozen=True)
class DoctorCheck:
    """One line of the doctor's report: a named check, graded.

    :param name: what was checked (stable, e.g. ``kvm backend``).
    :param status: ``ok``, ``warn``, ``fail`` or ``info``.
    :param detail: what was found, one line.
    :param fix: what to do about it, if anything.
    """

    name: str
    status: Status
    detail: str
    fix: str | None = None


def _graded(name: str, check: Check, *, relevant: bool = True, bad: Status = "warn",
             aside: str = "") -> DoctorCheck:
    """A check graded for the report; failures that do not matter for the decision are ``info``."""
    if check.ok:
        return DoctorCheck(name, "ok", check.detail)
    if not relevant:
        return DoctorCheck(name, "info", f"{check.detail}{aside}", check.fix)
    return DoctorCheck(name, bad, check.detail, check.fix)


def doctor_checks(facts: HostFacts, probe: ProbeBoot | None, decision: Decision) -> list[DoctorCheck]:
    """One graded check per checked thing, in a stable order, ending with the decision.

    :param facts: the probed facts.
    :param probe: the probe boot's outcome, if any.
    :param decision: :func:`decide`'s answer for the same facts and probe.
    :returns: the checks: kvm backend, /dev/kvm, probe boot, apicv/avic, perf,
        kvm tracepoints, perf permissions, qemu, qemu tcg, kvm-pv-eoi property,
        cache, decision.
    """
    direct = decision.host == "direct"
    hardware = facts.hardware_backend
    host_only = " (not needed: the virtual KVM host counts inside its own kernel, as root)"
    out: list[DoctorCheck] = []

    backend = check_backend(facts)
    extra = ""
    if facts.backend == "pvm" and facts.pvm_native is not None:
        extra = f"; pvm_native={'Y' if facts.pvm_native else 'N'}"
    elif hardware and facts.nested is not None:
        extra = f"; nested={'Y' if facts.nested else 'N'}"
    out.append(DoctorCheck("kvm backend", "ok" if backend.ok else "warn", backend.detail + extra,
                       backend.fix))

    dev = check_kvm_dev(facts)
    dev = dataclasses.replace(dev, detail=dev.detail.removeprefix("/dev/kvm "))
    if hardware:
        out.append(_graded("/dev/kvm", dev, bad="fail"))
    else:
        out.append(DoctorCheck("/dev/kvm", "info", f"{dev.detail}, but backend {facts.backend} "
                                               "cannot run standard guests"
                           if facts.kvm_dev else dev.detail))

    if probe is None:
        out.append(DoctorCheck("probe boot", "info", "not run"))
    elif not probe.ran:
        out.append(DoctorCheck("probe boot", "info", f"not run: {probe.detail}"))
    elif probe.reached_ready:
        took = f" in {probe.seconds:.1f}s" if probe.seconds is not None else ""
        out.append(DoctorCheck("probe boot", "ok", f"reached its ready line{took}: {probe.detail}"))
    else:
        out.append(DoctorCheck("probe boot", "fail", f"did not reach its ready line: {probe.detail}",
                           "see the probe boot's console log"))

    out.append(_graded("apicv/avic", check_eoi_virtualisation(facts))
               if hardware else DoctorCheck("apicv/avic", "info",
                                        f"not applicable (backend {facts.backend})"))
    out.append(_graded("perf", check_perf(facts), bad="fail"))
    out.append(_graded("kvm tracepoints", check_tracepoints(facts),
                        relevant=decision.host != "virtual", aside=host_only))
    out.append(_graded("perf permissions", check_perf_permissions(facts),
                        relevant=decision.host != "virtual", aside=host_only))
    # A missing QEMU fails; an old one still works: a warning (only the virtual KVM host's nested TCG cares).
    out.append(_graded("qemu", check_qemu(facts, virtual=decision.host == "virtual"),
                       bad="fail" if facts.qemu_version is None else "warn"))
    if facts.qemu_version is None:
        out += [DoctorCheck(name, "info", "unknown: QEMU is missing")
                for name in ("qemu tcg", "kvm-pv-eoi property")]
    else:
        out.append(_graded("qemu tcg", check_tcg(facts), relevant=not direct, bad="fail",
                            aside=" (only the virtual KVM host needs it)"))
        out.append(_graded("kvm-pv-eoi property", check_pv_eoi_property(facts), bad="fail"))
    cache = check_cache(facts)
    out.append(DoctorCheck("cache", "info", "not checked") if cache is None
               else _graded("cache", cache, bad="fail"))

    status: Status = "ok" if direct else "info" if decision.host == "virtual" else "fail"
    out.append(DoctorCheck("decision", status, f"{decision.host}: {decision.reason}", decision.fix))
    return out


def should_probe(facts: HostFacts) -> str | None:
    """Whether a probe boot is worth running on this host.

    :param facts: the probed facts.
    :returns: None when it is, else why it is skipped.
    """
    if not facts.hardware_backend:
        return f"backend {facts.backend} cannot run standard guests"
    if not facts.kvm_usable:
        return "/dev/kvm is not usable"
    return None


def run_probe(probe_boot: Callable[[], ProbeBoot]) -> ProbeBoot:
    """Run a probe boot; a pveoi error or OS error becomes a failed probe.

    :param probe_boot: boots a small guest under KVM and reports.
    :returns: its outcome.
    """
    start = time.monotonic()
    try:
        result = probe_boot()
    except (PveoiError, OSError) as err:
        log.info("probe boot failed: %s", err)
        return ProbeBoot(True, False, time.monotonic() - start, str(err))
    log.info("probe boot: ready=%s (%s)", result.reached_ready, result.detail)
    return result


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def doctor_report(facts: HostFacts, probe: ProbeBoot | None = None,
                  decision: Decision | None = None) -> dict[str, Any]:
    """The doctor's JSON document (stable; ``schema`` bumps on incompatible change).

    :param facts: the probed facts.
    :param probe: the probe boot's outcome, if any.
    :param decision: the decision (default: ``decide(facts, probe)``).
    :returns: ``{"schema": 1, "facts": {...}, "probe_boot": {...} | None,
        "findings": [{"name", "status", "detail", "fix"}...],
        "decision": {"host", "reason", "measurable_direct", "fix"}}``.
    """
    decision = decision or decide(facts, probe)
    return {
        "schema": SCHEMA,
        "facts": _jsonable(dataclasses.asdict(facts)),
        "probe_boot": dataclasses.asdict(probe) if probe is not None else None,
        "findings": [dataclasses.asdict(f) for f in doctor_checks(facts, probe, decision)],
        "decision": dataclasses.asdict(decision),
    }


def run_doctor(root: Path = Path("/"), probe_boot: Callable[[], ProbeBoot] | None = None, *,
               run: RunCommand | None = None, always_probe: bool = False,
               cache: Path | None = None) -> dict[str, Any]:
    """Probe the host, run the probe boot where it makes sense, and report.

    :param root: the root to probe (``/`` on a real host).
    :param probe_boot: boots a small guest under KVM; None: no probe boot.
    :param run: how to run perf/QEMU (default: for real).
    :param always_probe: run the probe boot even where it cannot succeed
        (e.g. ``kvm_pvm``), to see the failure.
    :param cache: the pveoi cache to check (default: ``$PVEOI_CACHE`` etc.
        when probing ``/``; not checked for a fixture root).
    :returns: :func:`doctor_report`'s document.
    """
    if cache is None and Path(root) == Path("/"):
        from ..build.cache import cache_root

        cache = cache_root()
    facts = probe_host(root, run=run, cache=cache)
    probe: ProbeBoot | None = None
    if probe_boot is not None:
        skip = None if always_probe else should_probe(facts)
        probe = ProbeBoot.skipped(skip) if skip else run_probe(probe_boot)
    report = doctor_report(facts, probe)
    log.debug("doctor decision: %s", report["decision"])
    return report


def decision_from_report(report: dict[str, Any]) -> Decision:
    """Read the decision back from a doctor report (e.g. a saved JSON file).

    :param report: :func:`doctor_report`'s document.
    :returns: the decision.
    :raises ValueError: the document is not a schema-1 doctor report.
    """
    if report.get("schema") != SCHEMA or not isinstance(report.get("decision"), dict):
        raise ValueError(f"not a schema-{SCHEMA} doctor report")
    d = report["decision"]
    host = d.get("host")
    if host not in ("direct", "virtual", "not-measurable"):
        raise ValueError(f"bad decision host {host!r} in doctor report")
    return Decision(host, str(d.get("reason", "")), bool(d.get("measurable_direct")),
                    d.get("fix"))


def format_text(report: dict[str, Any]) -> str:
    """Render a doctor report as text: one line per check, its fix indented below.

    :param report: :func:`doctor_report`'s document.
    :returns: the text, ending with a newline.
    """
    lines: list[str] = []
    for f in report["findings"]:
        lines.append(f"{f['status']:<6}{f['name']}: {f['detail']}")
        if f.get("fix"):
            lines.append(f"      fix: {f['fix']}")
    return "\n".join(lines) + "\n"


__all__ = [
    "SCHEMA", "DoctorCheck", "Status", "decision_from_report", "doctor_checks", "doctor_report", "format_text",
    "run_doctor", "run_probe", "should_probe",
]
