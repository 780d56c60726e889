"""
KCIDB v5.3 (KernelCI's common results database) from typed results.

Pure: :func:`render` takes :class:`e2e.model.result.Result` objects and a lab's
origin name and returns one KCIDB document (``kcidb_io.schema.V5_3``):

* **checkouts**: every kernel source a result names (the guest kernel's source
  and patch series from its cache manifest, each arm's own source and patches,
  the virtual host's kernels, the direct host's running kernel), with the
  patch series' ``patchset_hash`` (sha256 over the patches' sha256 lines);
* **builds**: each kernel with its configuration (the options pveoi asked for
  on top of tinyconfig and ``kvm_guest.config``, from the manifest), keyed by
  the cache's content hash;
* **tests**: per workload its verdict (``pveoi.<workload>``: PASS, FAIL,
  ERROR, SKIP), each condition of the verdict and each comparison between
  arms (PASS/FAIL), and every figure as ``DONE`` with ``number {value,
  unit}`` (``pveoi.<workload>.eoi_saved``, per-arm per-interrupt medians...).

Every id is ``<origin>:<hash>``, the hash of what the object is (a result's
runner, creation time and plan; a build's cache key), so rendering the same
history again gives the same ids and KCIDB merges instead of duplicating.
No property is ever null.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ..errors import ConfigError
from ..model.plan import Arm, Json
from ..model.result import Result, WorkloadResult
from . import ktap

ORIGIN_RE = re.compile(r"[a-z0-9_]+")
VERSION = {"major": 5, "minor": 3}
STATUS = {"pass": "PASS", "fail": "FAIL", "error": "ERROR", "not-measurable": "SKIP"}
LOG_EXCERPT_MAX = 16384



def check_origin(origin: str) -> str:
    """:raises ConfigError: ``origin`` is not a KCIDB origin name (``[a-z0-9_]+``)."""
    if not ORIGIN_RE.fullmatch(origin):
        raise ConfigError(f"KCIDB origin {origin!r} is not made of [a-z0-9_]",
                          fix="pass the origin name KernelCI gave your lab, e.g. --origin my_lab")
    return origin


def _hash(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def _clean(value: Any) -> Any:
    """``value`` without null properties (KCIDB allows none) or empty containers under them."""
    if isinstance(value, Mapping):
        out = {str(k): _clean(v) for k, v in value.items() if v is not None}
        return {k: v for k, v in out.items() if v != {} or k == "misc"}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value if v is not None]
    return value


def _path_part(text: str) -> str:
    """A component of a test path (``[a-zA-Z0-9_-]+``)."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_") or "x"


def patchset_hash(sha256s: Sequence[str]) -> str:
    """KCIDB's patchset hash: sha256 over the newline-terminated sha256 of each patch, in order
    (``sha256sum *.patch | cut -c-64 | sha256sum``); "" without patches."""
    if not sha256s:
        return ""
    return hashlib.sha256("".join(f"{h}\n" for h in sha256s).encode()).hexdigest()


def _time(created: str) -> str | None:
    return created if re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)", created) else None


class _Doc:
    """Accumulates checkouts, builds and tests, each id once."""

    def __init__(self, origin: str) -> None:
        self.origin = origin
        self.checkouts: dict[str, Json] = {}
        self.builds: dict[str, Json] = {}
        self.tests: dict[str, Json] = {}

    def id(self, *parts: Any) -> str:
        return f"{self.origin}:{_hash(*parts)}"

    # ------------------------------------------------------------ kernels

    def checkout(self, source: Mapping[str, Any], patches: Sequence[Mapping[str, Any]], comment: str) -> str:
        """A checkout: a source plus a patch series."""
        identity = str(source.get("identity") or source.get("path") or source.get("package") or
                       source.get("origin") or json.dumps(dict(source), sort_keys=True))
        sums = [str(p.get("sha256", "")) for p in patches]
        cid = self.id("checkout", identity, sums)
        git = re.fullmatch(r"git:([0-9a-f]{40}):.*", identity)
        self.checkouts.setdefault(cid, _clean({
            "id": cid, "origin": self.origin, "comment": comment,
            "tree_name": source.get("kind"),
            "git_commit_hash": git.group(1) if git else None,
            "patchset_hash": patchset_hash(sums) if all(re.fullmatch(r"[0-9a-f]{64}", s) for s in sums) else None,
            "valid": True,
            "misc": {"source": dict(source), "patches": [dict(p) for p in patches]},
        }))
        return cid

    def manifest_build(self, manifest: Mapping[str, Any], role: str) -> str:
        """A kernel from its cache manifest (:mod:`e2e.build.kernel`): its checkout and its build."""
        source = manifest.get("source")
        if not isinstance(source, Mapping):  # a bzImage given by path or URL
            source = {"kind": manifest.get("kind", "file"),
                      "origin": manifest.get("origin") or manifest.get("path"), "sha256": manifest.get("sha256")}
        patches = [p for p in manifest.get("patches") or [] if isinstance(p, Mapping)]
        release = manifest.get("release")
        what = f"{role} kernel" + (f" {release}" if release else "")
        cid = self.checkout(source, patches, what)
        key = manifest.get("hash") or manifest.get("sha256") or _hash(dict(manifest))
        bid = self.id("build", key)
        config = manifest.get("config") if isinstance(manifest.get("config"), Mapping) else {}
        self.builds.setdefault(bid, _clean({
            "id": bid, "origin": self.origin, "checkout_id": cid, "comment": what,
            "architecture": "x86_64",
            "config_name": (("tinyconfig+kvm_guest.config" + (f"+{len(config)} options" if config else ""))
                            if manifest.get("kind") == "build" else str(manifest.get("kind", "prebuilt"))),
            "start_time": _time(str(manifest.get("built_at", ""))),
            "duration": manifest.get("build_seconds"),
            "status": "PASS",
            "misc": {"pveoi_kind": manifest.get("kind"), "cache_hash": manifest.get("hash"),
                     "release": release, "flavour": manifest.get("flavour"), "config": dict(config or {})},
        }))
        return bid

    def arm_build(self, arm: Arm, default: str) -> str:
        """The build an arm's guest ran: its own kernel (from its origin) or the plan's."""
        if arm.kernel is None:
            return default
        source = arm.origin.get("guest_source")
        patches = arm.origin.get("guest_patches")
        cid = self.checkout({"kind": "tree" if source else "file", "path": source or str(arm.kernel)},
                            [{"name": patches}] if patches else [], f"guest kernel of arm {arm.name}")
        bid = self.id("build", "arm", str(arm.kernel), dict(arm.origin))
        self.builds.setdefault(bid, _clean({
            "id": bid, "origin": self.origin, "checkout_id": cid, "comment": f"guest kernel of arm {arm.name}",
            "architecture": "x86_64", "status": "PASS",
            "misc": {"bzimage": str(arm.kernel), "origin": dict(arm.origin)},
        }))
        return bid

    def host_builds(self, result: Result) -> list[str]:
        """The KVM host kernels: the virtual host's (built by pveoi) or the direct host's running one."""
        vhost = result.host.get("virtual_host")
        kernels = vhost.get("kernels") if isinstance(vhost, Mapping) else None
        if isinstance(kernels, Mapping) and kernels:
            return [self.manifest_build(m, "KVM host") for m in kernels.values() if isinstance(m, Mapping)]
        inner = result.host.get("inner_runner")
        runner = inner if isinstance(inner, Mapping) and result.host.get("chosen") == "virtual" else result.runner
        release = runner.get("kernel")
        if not release:
            return []
        cid = self.checkout({"kind": "running", "release": release}, [], f"KVM host kernel {release}")
        bid = self.id("build", "running", release)
        self.builds.setdefault(bid, {"id": bid, "origin": self.origin, "checkout_id": cid,
                                     "comment": f"KVM host kernel {release} (not built by pveoi)",
                                     "architecture": "x86_64", "misc": {"release": release}})
        return [bid]

    # ------------------------------------------------------------ tests

    def test(self, run_id: str, build_id: str, path: Sequence[str], status: str, env: Json,
             number: Json | None = None, comment: str | None = None, misc: Json | None = None,
             start: str | None = None) -> None:
        dotted = ".".join(_path_part(p) for p in path)
        tid = self.id("test", run_id, build_id, dotted)
        self.tests[tid] = _clean({
            "id": tid, "origin": self.origin, "build_id": build_id, "path": dotted, "status": status,
            "number": number, "comment": comment, "environment": env, "start_time": start,
            "log_excerpt": comment[:LOG_EXCERPT_MAX] if comment and status in ("FAIL", "ERROR") else None,
            "misc": misc,
        })

    def to_json(self) -> Json:
        return {"version": dict(VERSION), "checkouts": list(self.checkouts.values()),
                "builds": list(self.builds.values()), "tests": list(self.tests.values())}


def _number(value: Any, unit: str | None = None) -> Json | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value or value in (
            float("inf"), float("-inf")):
        return None
    return {"value": float(value), "unit": unit} if unit else {"value": float(value)}


def _case_tests(doc: _Doc, run_id: str, build: str, prefix: list[str], cases: Iterable[ktap.Case], env: Json,
                start: str | None) -> None:
    """The KTAP conditions of a workload as tests (the same checks, the same outcome)."""
    for case in cases:
        status = ("SKIP" if case.directive == "SKIP" else "ERROR" if case.directive == "ERROR"
                  else "PASS" if case.passed else "FAIL")
        path = [*prefix, case.name]
        doc.test(run_id, build, path, status, env, comment="; ".join(case.diagnostics) or case.reason or None,
                 start=start)
        _case_tests(doc, run_id, build, path, case.subtests, env, start)


def _workload(doc: _Doc, result: Result, run_id: str, w: WorkloadResult, builds: Mapping[str, str], default: str,
              env: Json, start: str | None) -> None:
    treatment = w.treatment or next(iter(result.arms), "")
    build = builds.get(treatment, default)
    base = ["pveoi", w.workload]
    doc.test(run_id, build, base, STATUS.get(w.verdict, "ERROR"), env, start=start,
             comment=f"{w.workload}: {w.verdict}" + (": " + "; ".join(w.reasons) if w.reasons else ""),
             misc={"description": w.description, "thresholds": dict(w.thresholds), "findings": list(w.findings)})
    if not w.measurable:
        return
    case = ktap.workload_case(result, w)
    _case_tests(doc, run_id, build, base, case.subtests, env, start)
    head = w.eoi_exits_saved_per_interrupt or {}
    number = _number(head.get("value"), "exits/interrupt")
    if number:
        doc.test(run_id, build, [*base, "eoi_saved"], "DONE", env, number=number, start=start,
                 misc={"ci95": head.get("ci"), "limit": head.get("limit"), "treatment": w.treatment,
                       "baseline": w.baseline})
    own = w.own_saved
    if own and _number(own.get("diff")):
        doc.test(run_id, build, [*base, "eoi_saved_own"], "DONE", env, number=_number(own["diff"], "exits/interrupt"),
                 start=start, misc={"ci95": own.get("diff_ci"), "sources": own.get("sources"),
                                    "treatment": w.treatment, "baseline": w.baseline})
    exit_m = w.metrics.get("kvm_exit")
    if isinstance(exit_m, Mapping) and _number(exit_m.get("reduction")):
        doc.test(run_id, build, [*base, "kvm_exit_reduction"], "DONE", env, number=_number(exit_m["reduction"]),
                 start=start, misc={"ci95": exit_m.get("reduction_ci"), "p_value": exit_m.get("p_value")})
    sides = {"on": w.treatment, "off": w.baseline}
    for metric, m in w.metrics.items():
        if not isinstance(m, Mapping):
            continue
        unit = "events/interrupt" if str(m.get("unit", "")).startswith("per interrupt") else "events/op"
        for side, arm in sides.items():
            value = _number(m.get(f"{side}_median"), unit)
            if arm and value:
                doc.test(run_id, builds.get(arm, default), [*base, f"arm_{arm}", metric], "DONE", env,
                         number=value, start=start, misc={"ci95": m.get(f"{side}_ci"), "runs": m.get(f"n_{side}")})
    for comp in w.comparisons:
        if comp.kind == "effect" and (comp.a, comp.b) == (w.baseline, w.treatment):
            continue
        cbuild = builds.get(comp.b, default)
        path = [*base, f"{comp.kind}_{comp.b}_vs_{comp.a}"]
        status = {"fail": "FAIL", "regression": "FAIL", "info": "DONE"}.get(comp.verdict, "PASS")
        doc.test(run_id, cbuild, path, status, env, start=start,
                 comment="; ".join(comp.reasons) or f"{comp.kind} {comp.label}: {comp.verdict}",
                 misc={"differs_in": list(comp.differs_in)})
        for key in ("trapped_eoi", "kvm_exit", "eoi_saved"):
            m = comp.metrics.get(key)
            if isinstance(m, Mapping) and _number(m.get("diff")) and comp.kind != "effect":
                doc.test(run_id, cbuild, [*path, f"{key}_diff"], "DONE", env,
                         number=_number(m["diff"], "events/interrupt"), start=start,
                         misc={"ci95": m.get("diff_ci"), "p_value": m.get("p_value")})


def render(results: Sequence[Result], origin: str = "pveoi") -> Json:
    """One KCIDB v5.3 document for ``results``.

    :param origin: the lab's KCIDB origin name (``[a-z0-9_]+``).
    :raises ConfigError: a bad origin.
    """
    doc = _Doc(check_origin(origin))
    for result in results:
        runner = str(result.runner.get("id") or result.runner.get("hostname") or "unknown")
        run_id = _hash(runner, result.created, result.plan.to_json() if result.plan else None,
                       sorted(result.workloads))
        start = _time(result.created)
        guest = (doc.manifest_build(result.kernel, "guest") if result.kernel
                 else doc.manifest_build({"kind": "unknown", "origin": f"{runner} {result.created}"}, "guest"))
        builds = {name: doc.arm_build(arm, guest) for name, arm in result.arms.items()}
        hosts = doc.host_builds(result)
        env = _clean({"comment": f"runner {runner}, KVM {result.host.get('chosen', '?')}",
                      "misc": {"runner": runner, "host": result.host.get("chosen"),
                               "cpu_vendor": result.runner.get("cpu_vendor"), "qemu": result.runner.get("qemu"),
                               "host_build_ids": hosts, "pveoi_version": result.pveoi_version}})
        if not result.workloads:
            doc.test(run_id, guest, ["pveoi"], STATUS.get(result.verdict, "ERROR"), env, start=start,
                     comment=result.reason or result.verdict)
        for w in result.workloads.values():
            _workload(doc, result, run_id, w, builds, guest, env, start)
    return doc.to_json()
