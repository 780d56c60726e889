"""
What an A/B measured and concluded: one guest (:class:`RunRecord`), how two arms
compare (:class:`Comparison`, :class:`Agreement`), every attempt (:class:`Attempt`),
a workload's and the whole A/B's verdict (:class:`WorkloadResult`, :class:`Result`).

Every class is a frozen dataclass with one writer (``to_json``) and one reader
(``from_json``). The result document is schema 3; the reader also takes schema 1
and 2 documents (histories written by earlier pveoi versions), so a history of any
age loads, renders and is checked by the same code.

Loosely structured parts whose shape belongs to another module (the runner's
identity, the virtual host's facts, the per-metric summaries of
:mod:`e2e.analysis.stats`, the guest's interrupt deltas) stay JSON objects inside the
typed shell; the keys a history and a report read are typed.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from .. import __version__
from ..errors import ConfigError, SchemaError
from .plan import Arm, Json, Plan

#: The result schema this pveoi writes; it reads every version in :data:`READABLE`.
SCHEMA = 3
READABLE = (1, 2, 3)

#: The metric of a workload's own interrupts: trapped EOIs per injected interrupt of its
#: :attr:`~e2e.model.workloads.Workload.sources` (per-event traced runs only); the entry also
#: records ``sources``, and its ``diff`` is "EOI exits saved per workload interrupt".
OWN = "trapped_eoi_own"

#: Verdicts of a workload and of a whole A/B, worst first.
VERDICTS = ("fail", "error", "pass", "not-measurable")



@dataclass(frozen=True)
class RunRecord:
    """One guest of one arm and rep: raw counts and everything that proves and explains them.

    :param counts: ``kvm:*`` tracepoint counts over the workload window.
    :param exit_reasons: ``kvm_exit`` per exit reason over the same window.
    :param qmp: QMP read-back: ``kvm`` (query-kvm), ``kvm_pv_eoi`` per vCPU, ``vcpu_threads``.
    :param guest: the guest's own deltas: ``interrupts``, ``interrupts_per_cpu``, ``pv_eoi``
        (skipped/written EOIs, total and ``per_cpu``; None without guest_patches/0001).
    :param attempt: 1 for the first try, 2 for its first retry, ...
    :param timings: seconds between the run's stages (QEMU paused, guest ready, SSH up, ..., shut down).
    :param window: this run's place in its guest's boot: 1 for the first window after the boot, 2 for
        the next in the same guest, ... (``Plan.reps_per_boot``); its ``boot_seconds`` is the first's only.
    """

    rep: int
    arm: str
    counts: Mapping[str, int]
    exit_reasons: Mapping[str, int] = field(default_factory=dict)
    qmp: Mapping[str, Any] = field(default_factory=dict)
    guest: Mapping[str, Any] = field(default_factory=dict)
    boot_seconds: float | None = None
    workload_seconds: float | None = None
    ready_line: str = ""
    workload_output: str = ""
    attempt: int = 1
    vcpus: int | None = None
    timings: Mapping[str, float] = field(default_factory=dict)
    #: The per-event trace's summary (:func:`e2e.measure.trace.summarize`): per vCPU the marker window's
    #: host and guest accounting, per vector PV and trapped EOIs with reasons. Empty when not traced.
    trace: Mapping[str, Any] = field(default_factory=dict)
    window: int = 1

    @property
    def interrupts(self) -> int:
        return int(self.counts.get("kvm:kvm_inj_virq", 0))

    def per_interrupt(self, key: str) -> float:
        """``counts[key]`` (or ``kvm_exit[REASON]``) per injected interrupt; NaN with none injected."""
        if key.startswith("kvm_exit["):
            value = self.exit_reasons.get(key[len("kvm_exit["):-1], 0)
        elif key == "trapped_eoi":
            value = self.counts["kvm:kvm_eoi"] - self.counts["kvm:kvm_pv_eoi"]
        else:
            value = self.counts[key if ":" in key else f"kvm:{key}"]
        return float(value) / self.interrupts if self.interrupts else float("nan")

    @property
    def guest_pv_eoi(self) -> Mapping[str, Any] | None:
        value = self.guest.get("pv_eoi")
        return value if isinstance(value, Mapping) else None

    def as_mapping(self) -> Json:
        """The run as the stats module's pure functions read one (``counts`` keyed by event)."""
        return {"counts": dict(self.counts), "exit_reasons": dict(self.exit_reasons)}

    def to_json(self) -> Json:
        return {"rep": self.rep, "arm": self.arm, "attempt": self.attempt, "vcpus": self.vcpus,
                "boot_seconds": self.boot_seconds, "workload_seconds": self.workload_seconds,
                "ready_line": self.ready_line, "qmp": copy.deepcopy(dict(self.qmp)), "counts": dict(self.counts),
                "exit_reasons": dict(self.exit_reasons), "guest": copy.deepcopy(dict(self.guest)),
                "workload_output": self.workload_output, "timings": dict(self.timings),
                "trace": copy.deepcopy(dict(self.trace)), **({"window": self.window} if self.window != 1 else {})}

    @classmethod
    def from_json(cls, data: Mapping[str, Any], arm: str | None = None) -> RunRecord:
        """:param arm: the arm whose runs list holds it (schema 1 and 2 runs may not name it)."""
        counts = data["counts"]
        if not isinstance(counts, Mapping) or not all(
                isinstance(v, int) and not isinstance(v, bool) for v in counts.values()):
            raise ValueError(f"counts must map events to integers, got {counts!r}")
        return cls(rep=int(data["rep"]), arm=str(data.get("arm") or arm), counts=dict(counts),
                   exit_reasons={str(k): int(v) for k, v in (data.get("exit_reasons") or {}).items()},
                   qmp=dict(data.get("qmp") or {}), guest=dict(data.get("guest") or {}),
                   boot_seconds=data.get("boot_seconds"), workload_seconds=data.get("workload_seconds"),
                   ready_line=str(data.get("ready_line") or ""), workload_output=str(data.get("workload_output") or ""),
                   attempt=int(data.get("attempt") or 1), vcpus=data.get("vcpus"),
                   timings={str(k): float(v) for k, v in (data.get("timings") or {}).items()},
                   trace=dict(data.get("trace") or {}), window=int(data.get("window") or 1))


# ---------------------------------------------------------------- comparisons


@dataclass(frozen=True)
class Comparison:
    """Two arms compared on every per-interrupt figure.

    ``kind``:

    * ``effect``: ``a`` is the arm without PV EOI, ``b`` its twin with it; the figures are
      the saving (``off - on``) as today's headline, and the verdict is the A/B's;
    * ``difference``: both arms use PV EOI (or neither does) and differ in kernel, flags,
      vCPUs...; the figures are ``b - a`` and the verdict ``regression`` when ``b`` traps
      more EOIs or exits more per interrupt beyond the threshold with the CI clear of zero;
    * ``effect-difference``: PV EOI's saving under arm pair ``b`` minus under pair ``a``
      (e.g. two kernels x {on, off}).

    :param metrics: per figure: medians of each side, the difference, its 95 % CI and the
        permutation p-value (and for effects the relative reduction).
    :param verdict: ``pass``/``fail`` (effect), ``ok``/``regression`` (differences).
    """

    kind: str
    a: str
    b: str
    differs_in: tuple[str, ...]
    metrics: Mapping[str, Any]
    verdict: str
    reasons: tuple[str, ...] = ()
    headline: Mapping[str, Any] | None = None

    @property
    def label(self) -> str:
        return f"{self.b} vs {self.a}"

    def to_json(self) -> Json:
        return {"kind": self.kind, "a": self.a, "b": self.b, "differs_in": list(self.differs_in),
                "metrics": copy.deepcopy(dict(self.metrics)), "verdict": self.verdict, "reasons": list(self.reasons),
                "headline": dict(self.headline) if self.headline is not None else None}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Comparison:
        return cls(kind=str(data["kind"]), a=str(data["a"]), b=str(data["b"]),
                   differs_in=tuple(data.get("differs_in") or ()), metrics=dict(data.get("metrics") or {}),
                   verdict=str(data["verdict"]), reasons=tuple(data.get("reasons") or ()),
                   headline=data.get("headline"))


@dataclass(frozen=True)
class Agreement:
    """Host ``kvm_pv_eoi`` against the guest's own skipped-EOI counter, for one run (and vCPU)."""

    rep: int
    arm: str
    host_pv_eoi: int
    guest_skipped: int
    ok: bool
    vcpu: int | None = None

    def to_json(self) -> Json:
        out: Json = {"rep": self.rep, "arm": self.arm, "host_pv_eoi": self.host_pv_eoi,
                     "guest_skipped": self.guest_skipped, "ok": self.ok}
        if self.vcpu is not None:
            out["vcpu"] = self.vcpu
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any], arm: str = "") -> Agreement:
        return cls(rep=int(data["rep"]), arm=str(data.get("arm", arm)), host_pv_eoi=int(data["host_pv_eoi"]),
                   guest_skipped=int(data["guest_skipped"]), ok=bool(data["ok"]), vcpu=data.get("vcpu"))


@dataclass(frozen=True)
class Attempt:
    """One attempt of one (arm, rep) that did not give a run: its evidence, kept.

    :param attempt: 1 for the first try, 2 for its first retry, ...
    :param kind: the error's kind (``infrastructure``, ``finding``, ...).
    :param cls: how its QEMU ended (:data:`e2e.vm.ending.CLASSES`: ``guest reset``, ``panic``, ...,
        and when QEMU still ran, what failed: ``guest deadline``, ``ssh failure``, ``qmp failure``,
        ``perf failure``, else ``qemu running``; ``""`` when no guest was booted).
    :param message: the one-line error.
    :param logs: the attempt's logs (console, QEMU, perf's CSV and stderr), relative to the
        result's ``logs`` directory, under attempt-numbered names no retry overwrites.
    :param outcome: ``retried`` (a fresh guest tried again), ``error`` (retries spent) or ``finding``.
    :param evidence: what named the class (QMP events, console and QEMU log lines, exit status).
    """

    arm: str
    rep: int
    attempt: int
    kind: str
    cls: str
    message: str
    logs: tuple[str, ...] = ()
    outcome: str = "retried"
    evidence: tuple[str, ...] = ()

    def to_json(self) -> Json:
        return {"arm": self.arm, "rep": self.rep, "attempt": self.attempt, "kind": self.kind, "class": self.cls,
                "message": self.message, "logs": list(self.logs), "outcome": self.outcome,
                "evidence": list(self.evidence)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Attempt:
        return cls(arm=str(data["arm"]), rep=int(data["rep"]), attempt=int(data.get("attempt") or 1),
                   kind=str(data.get("kind") or ""), cls=str(data.get("class") or ""),
                   message=str(data.get("message") or ""), logs=tuple(map(str, data.get("logs") or ())),
                   outcome=str(data.get("outcome") or "retried"), evidence=tuple(map(str, data.get("evidence") or ())))


@dataclass(frozen=True)
class WorkloadResult:
    """What one workload's runs concluded.

    ``treatment``/``baseline``, ``metrics`` and ``eoi_exits_saved_per_interrupt``
    belong to the first ``effect`` comparison (today's on-vs-off headline);
    ``comparisons`` holds every pair that differs. ``attempts`` are the structured twins of
    ``retried``, ``errors`` and the findings of runs (each with its class and logs).
    """

    workload: str
    verdict: str
    description: str = ""
    reasons: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    findings: tuple[str, ...] = ()
    retried: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()
    treatment: str | None = None
    baseline: str | None = None
    thresholds: Mapping[str, float] = field(default_factory=dict)
    metrics: Mapping[str, Any] = field(default_factory=dict)
    eoi_exits_saved_per_interrupt: Mapping[str, Any] | None = None
    agreement: tuple[Agreement, ...] = ()
    comparisons: tuple[Comparison, ...] = ()
    attempts: tuple[Attempt, ...] = ()

    @property
    def own_saved(self) -> Mapping[str, Any] | None:
        """The :data:`OWN` metric (EOI exits saved per workload interrupt is its ``diff``), where the
        runs were traced; None otherwise."""
        own = self.metrics.get(OWN)
        return own if isinstance(own, Mapping) and own.get("diff") is not None else None

    @property
    def measurable(self) -> bool:
        return self.verdict in ("pass", "fail")

    def to_json(self) -> Json:
        return {"workload": self.workload, "verdict": self.verdict, "description": self.description,
                "reasons": list(self.reasons), "notes": list(self.notes), "findings": list(self.findings),
                "retried": list(self.retried), "errors": list(self.errors), "treatment": self.treatment,
                "baseline": self.baseline, "thresholds": dict(self.thresholds),
                "metrics": copy.deepcopy(dict(self.metrics)),
                "eoi_exits_saved_per_interrupt": (copy.deepcopy(dict(self.eoi_exits_saved_per_interrupt))
                                                  if self.eoi_exits_saved_per_interrupt else None),
                "agreement": [a.to_json() for a in self.agreement],
                "comparisons": [c.to_json() for c in self.comparisons],
                "attempts": [a.to_json() for a in self.attempts]}

    @classmethod
    def from_json(cls, name: str, data: Mapping[str, Any]) -> WorkloadResult:
        treat = data.get("treatment")
        head = data.get("eoi_exits_saved_per_interrupt")
        if head is not None and not isinstance(head, Mapping):
            raise ValueError(f"eoi_exits_saved_per_interrupt must be an object, got {head!r}")
        return cls(workload=name, verdict=str(data.get("verdict", "unknown")),
                   description=str(data.get("description", "")), reasons=tuple(map(str, data.get("reasons") or ())),
                   notes=tuple(map(str, data.get("notes") or ())), findings=tuple(data.get("findings") or ()),
                   retried=tuple(data.get("retried") or ()), errors=tuple(data.get("errors") or ()),
                   treatment=treat, baseline=data.get("baseline"), thresholds=dict(data.get("thresholds") or {}),
                   metrics=dict(data.get("metrics") or {}), eoi_exits_saved_per_interrupt=head,
                   agreement=tuple(Agreement.from_json(a, treat or "") for a in data.get("agreement") or ()),
                   comparisons=tuple(Comparison.from_json(c) for c in data.get("comparisons") or ()),
                   attempts=tuple(Attempt.from_json(a) for a in data.get("attempts") or ()))


# ---------------------------------------------------------------- the result


def overall_verdict(verdicts: Iterable[str]) -> str:
    """The worst of the workloads' verdicts (fail > error > pass > not-measurable)."""
    seen = set(verdicts)
    return next((v for v in VERDICTS if v in seen), "not-measurable")


@dataclass(frozen=True)
class Result:
    """One A/B: its plan, every run, every workload's conclusion, and where it ran.

    :param arms: the arms' settings, by name.
    :param runs: every completed run, in the order they ran, per workload.
    :param error: for verdict ``error`` of the whole A/B: ``{kind, type, message, fix}``.
    """

    verdict: str
    reason: str = ""
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    pveoi_version: str = __version__
    runs_per_arm: int | None = None
    plan: Plan | None = None
    arms: Mapping[str, Arm] = field(default_factory=dict)
    runs: Mapping[str, tuple[RunRecord, ...]] = field(default_factory=dict)
    workloads: Mapping[str, WorkloadResult] = field(default_factory=dict)
    runner: Mapping[str, Any] = field(default_factory=dict)
    host: Mapping[str, Any] = field(default_factory=dict)
    kernel: Mapping[str, Any] = field(default_factory=dict)
    image: Mapping[str, Any] = field(default_factory=dict)
    logs: str | None = None
    events: tuple[Mapping[str, Any], ...] = ()
    error: Mapping[str, Any] | None = None
    schema: int = SCHEMA

    @property
    def exit_code(self) -> int:
        return {"pass": 0, "fail": 1}.get(self.verdict, 2)

    @property
    def headline(self) -> Mapping[str, Any] | None:
        return next((w.eoi_exits_saved_per_interrupt for w in self.workloads.values()
                     if w.eoi_exits_saved_per_interrupt), None)

    def runs_of(self, workload: str, arm: str) -> list[RunRecord]:
        return [r for r in self.runs.get(workload, ()) if r.arm == arm]

    def with_(self, **changes: Any) -> Result:
        return replace(self, **changes)

    def to_json(self) -> Json:
        """The schema-3 document. ``arms.<name>.runs.<workload>`` lists the runs, as schema 2 did."""
        arms = {name: {"settings": arm.to_json(),
                       "runs": {w: [r.to_json() for r in runs if r.arm == name] for w, runs in self.runs.items()}}
                for name, arm in self.arms.items()}
        doc: Json = {
            "schema": SCHEMA, "pveoi_version": self.pveoi_version, "created": self.created,
            "verdict": self.verdict, "reason": self.reason, "runs_per_arm": self.runs_per_arm,
            "plan": self.plan.to_json() if self.plan else None,
            "runner": copy.deepcopy(dict(self.runner)), "host": copy.deepcopy(dict(self.host)),
            "kernel": copy.deepcopy(dict(self.kernel)), "image": dict(self.image), "logs": self.logs,
            "arms": arms, "workloads": {n: w.to_json() for n, w in self.workloads.items()},
            "run_order": {w: [[r.arm, r.rep, r.attempt] for r in runs] for w, runs in self.runs.items()},
            "events": [dict(e) for e in self.events],
            "metrics": {n: copy.deepcopy(dict(w.metrics)) for n, w in self.workloads.items()},
            "eoi_exits_saved_per_interrupt": copy.deepcopy(dict(self.headline)) if self.headline else None,
        }
        if self.error is not None:
            doc["error"] = dict(self.error)
        return doc

    @classmethod
    def from_json(cls, data: Mapping[str, Any], name: str = "result") -> Result:
        """Read a result document of any readable schema (1, 2, 3).

        :raises SchemaError: no schema, an unknown one, or a malformed document (naming ``name``).
        """
        doc = migrate(data, name)
        try:
            for key in ("runner", "host", "kernel", "image", "arms", "workloads", "plan"):
                nullable = key in ("kernel", "image", "plan")
                if key in doc and not isinstance(doc[key], Mapping) and not (nullable and doc[key] is None):
                    raise TypeError(f"{key!r} is not an object")
            for w, body in doc["workloads"].items():
                if not isinstance(body, Mapping):
                    raise TypeError(f"workload {w!r} is not an object")
            arms = {n: Arm.from_json({**(a.get("settings") or {}), "name": n}) for n, a in doc["arms"].items()}
            runs: dict[str, list[RunRecord]] = {}
            for n, a in doc["arms"].items():
                for w, rs in (a.get("runs") or {}).items():
                    runs.setdefault(w, []).extend(RunRecord.from_json(r, n) for r in rs)
            order = doc.get("run_order") or {}
            for w, rs in runs.items():  # the order they ran, where the document kept it
                pos = {(a, r, t): i for i, (a, r, t) in enumerate(order.get(w, []))}
                rs.sort(key=lambda r: pos.get((r.arm, r.rep, r.attempt), (r.rep, r.arm)) if pos else (r.rep, r.arm))
            plan = Plan.from_json(doc["plan"]) if doc.get("plan") else None
            return cls(
                verdict=str(doc["verdict"]), reason=str(doc.get("reason") or ""), created=str(doc.get("created", "")),
                pveoi_version=str(doc.get("pveoi_version", "?")), runs_per_arm=doc.get("runs_per_arm"), plan=plan,
                arms=arms, runs={w: tuple(rs) for w, rs in runs.items()},
                workloads={n: WorkloadResult.from_json(n, w) for n, w in doc["workloads"].items()},
                runner=dict(doc.get("runner") or {}), host=dict(doc.get("host") or {}),
                kernel=dict(doc.get("kernel") or {}), image=dict(doc.get("image") or {}), logs=doc.get("logs"),
                events=tuple(doc.get("events") or ()), error=doc.get("error"), schema=SCHEMA,
            )
        except (KeyError, TypeError, ValueError, AttributeError, ConfigError) as err:
            raise SchemaError(f"{name}: malformed result ({type(err).__name__}: {err})",
                              fix="move the file out of the history; it is not a readable pveoi result") from err


def migrate(doc: Mapping[str, Any], name: str = "result") -> Json:
    """Bring a result document to :data:`SCHEMA` (pure; returns a new dict).

    Schema 1 kept the virtual host's own machine as ``runner`` and the machine
    that ran pveoi as ``host.outer_runner``; schema 2 made ``runner`` the
    machine that ran pveoi (the one a history groups by), with an ``id`` and
    the doctor's findings, and moved the virtual host's to ``host.inner_runner``.
    Schema 3 adds the plan, per-run attempts, agreement entries naming their
    arm and the ``comparisons`` of every pair of arms; older documents have
    none of those, which the reader takes as empty.

    :raises SchemaError: no schema, or one this pveoi cannot read.
    """
    if not isinstance(doc, Mapping):
        raise SchemaError(f"{name}: not a JSON object", fix="move the file out of the history")
    version = doc.get("schema")
    if version not in READABLE:
        newer = isinstance(version, int) and version > SCHEMA
        raise SchemaError(
            f"{name}: result schema {version!r} is not one this pveoi reads ({', '.join(map(str, READABLE))})",
            fix="upgrade pveoi to read it" if newer else "move the file out of the history; it is not a pveoi result")
    out = copy.deepcopy(dict(doc))
    if version == 1:
        host = out.setdefault("host", {})
        runner = out.get("runner", {})
        if "outer_runner" in host:
            host["inner_runner"] = runner
            runner = host.pop("outer_runner")
        runner.setdefault("id", runner.get("hostname", "unknown"))
        runner.setdefault("doctor", [])
        out["runner"] = runner
    out.setdefault("arms", {})
    out.setdefault("workloads", {})
    if version in (1, 2):
        for w in out["workloads"].values():
            if not isinstance(w, dict) or "errors" in w:
                continue
            reasons = [str(r) for r in w.get("reasons") or ()]
            if reasons and "runs did not complete" in reasons[0]:
                # Runs that did not complete were only reasons then (schema 1 even called it "fail"):
                # they are the workload's errors, so re-analysis can never turn it into a pass.
                w["errors"] = reasons[1:] or reasons[:1]
                w["verdict"] = "error"
    out["schema"] = SCHEMA
    return out
