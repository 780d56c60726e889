"""
The A/B measurement: boot a fresh guest per arm and rep (interleaved), count
``kvm:*`` tracepoints with perf on that QEMU's vCPU threads for exactly the
workload window, read the guest's side, and decide a verdict.

This module is the "direct" path: it runs on a KVM host. Through the virtual
KVM host the very same code runs inside L1 (see :mod:`e2e.vhost`).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import platform
import select
import shlex
import socket
import subprocess
import time
import tomllib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import __version__
from .argv import DEFAULT_APPEND, MachineSpec
from .errors import CapabilityError, ConfigError, GuestPanic, MeasurementError, PveoiError
from .exit_reasons import breakdown_reasons
from .guest import STATE_COMMAND, GuestState, interrupt_delta, interrupt_delta_per_cpu, pveoi_delta
from .history import SCHEMA
from .hostfacts import COUNTED as COUNTED  # the host facts have one owner; importable from ab for now
from .hostfacts import cpu_vendor as cpu_vendor
from .image import READY_PATTERN
from .machine import Machine, child_preexec
from .perf import Event, PerfStat, check_required, list_kvm_tracepoints
from .stats import eoi_exits_saved_per_interrupt, headline_counts, per_interrupt, summarize
from .tmpdirs import tempdir
from .workloads import Workload

log = logging.getLogger(__name__)

THRESHOLDS = Path(__file__).resolve().parent / "data" / "thresholds.toml"


# ---------------------------------------------------------------- arms


@dataclass(frozen=True)
class Arm:
    """One side of the A/B.

    :param pv_eoi: QEMU's ``kvm-pv-eoi`` (None: QEMU's default).
    :param append: extra guest kernel parameters (e.g. ``no-kvm-pv-eoi``).
    :param kernel: a different guest kernel for this arm (a kernel A/B).
    """

    name: str
    pv_eoi: bool | None = True
    cpu_flags: tuple[str, ...] = ()
    append: str = ""
    kernel: Path | None = None

    @property
    def expects_pv_eoi(self) -> bool:
        """Whether PV EOI should be in use: offered by QEMU and not refused by the guest."""
        return self.pv_eoi is not False and not _refuses_pv_eoi(self.append)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "kvm_pv_eoi": self.pv_eoi, "cpu_flags": list(self.cpu_flags),
                "append": self.append, "kernel": str(self.kernel) if self.kernel else None,
                "expects_pv_eoi": self.expects_pv_eoi}


DEFAULT_ARMS = (Arm("on", pv_eoi=True), Arm("off", pv_eoi=False))


def _refuses_pv_eoi(append: str) -> bool:
    """Whether a kernel command line holds ``no-kvm-pv-eoi`` as the kernel parses it.

    The kernel matches a parameter by its name before ``=`` (the value is
    ignored by this one), treats ``-`` and ``_`` alike, and hands everything
    after ``--`` to init.
    """
    for word in append.split():
        if word == "--":
            return False
        if word.split("=", 1)[0].replace("_", "-") == "no-kvm-pv-eoi":
            return True
    return False


def load_arms(path: Path) -> tuple[Arm, ...]:
    """Arms from a TOML file: ``[[arm]]`` tables with name, pv_eoi, cpu_flags, append, kernel.

    :raises ConfigError: on a bad file, not exactly two arms, or none/both expecting PV EOI.
    """
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise ConfigError(f"cannot read arms file {path}: {err}", fix="write [[arm]] tables in TOML") from err
    arms = []
    for i, raw in enumerate(data.get("arm", [])):
        unknown = set(raw) - {"name", "pv_eoi", "cpu_flags", "append", "kernel"}
        if unknown or "name" not in raw:
            raise ConfigError(f"{path}: arm #{i + 1} has unknown keys {sorted(unknown)} or no name",
                              fix="use name, pv_eoi, cpu_flags, append, kernel")
        flags = raw.get("cpu_flags", [])
        if not isinstance(raw.get("pv_eoi", True), bool) or not (
                isinstance(flags, list) and all(isinstance(f, str) for f in flags)):
            raise ConfigError(f"{path}: arm {raw['name']}: pv_eoi must be true or false and "
                              "cpu_flags a list of strings",
                              fix='write e.g. pv_eoi = false, cpu_flags = ["x2apic=on"]')
        kernel = Path(raw["kernel"]).expanduser() if raw.get("kernel") else None
        if kernel is not None and not kernel.is_file():
            raise ConfigError(f"{path}: arm {raw['name']}: kernel {kernel} not found", fix="build it first")
        arms.append(Arm(str(raw["name"]), raw.get("pv_eoi", True), tuple(raw.get("cpu_flags", ())),
                        str(raw.get("append", "")), kernel))
    validate_arms(tuple(arms))
    return tuple(arms)


def validate_arms(arms: tuple[Arm, ...]) -> None:
    if len(arms) != 2 or len({a.name for a in arms}) != 2:
        raise ConfigError("an A/B needs exactly two arms with distinct names", fix="define two [[arm]] tables")
    if sum(a.expects_pv_eoi for a in arms) != 1:
        raise ConfigError("exactly one arm must expect PV EOI (pv_eoi on, no no-kvm-pv-eoi)",
                          fix="make one arm the PV EOI arm and the other the baseline")


def arm_order(arms: Sequence[Arm], runs: int) -> list[tuple[int, Arm]]:
    """Interleaved (rep, arm) order: A B, B A, A B, ... to spread drift over both arms."""
    order = []
    for rep in range(runs):
        pair = list(arms) if rep % 2 == 0 else list(reversed(arms))
        order += [(rep, arm) for arm in pair]
    return order


# ---------------------------------------------------------------- thresholds


def load_thresholds(workload: str, overrides: Mapping[str, float] | None = None,
                    path: Path = THRESHOLDS) -> dict[str, float]:
    """The workload's thresholds: ``[default]``, then ``[workload]``, then overrides.

    :raises ConfigError: on an unknown override key.
    """
    data = tomllib.loads(path.read_text())
    out = {k: float(v) for k, v in data.get("default", {}).items()}
    out.update({k: float(v) for k, v in data.get(workload, {}).items()})
    for key, value in (overrides or {}).items():
        if key not in out:
            raise ConfigError(f"unknown threshold {key!r}", fix=f"use one of {', '.join(sorted(out))}")
        out[key] = float(value)
    return out


# ---------------------------------------------------------------- one run


@dataclass(frozen=True)
class Setup:
    """What every run of an A/B shares."""

    kernel: Path
    initrd: Path
    private_key: Path
    host_key_line: str
    artifacts: Path
    memory_mb: int = 256
    boot_timeout: float = 180.0
    qemu: str = "qemu-system-x86_64"
    accel: str = "kvm"


def perf_events(vendor: str, available: Sequence[str]) -> list[Event]:
    """The counted tracepoints plus kvm_exit broken down by the vendor's exit reasons."""
    check_required(available)
    events = [Event(name) for name in COUNTED]
    for reason, code in breakdown_reasons(vendor).items():
        events.append(Event("kvm:kvm_exit", f"exit_reason == {code}", f"kvm_exit[{reason}]"))
    return events


@contextlib.contextmanager
def host_server(argv: Sequence[str]) -> Iterator[int | None]:
    """Run a workload's host-side server on a free loopback port; yield the port."""
    if not argv:
        yield None
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [a.replace("{port}", str(port)) for a in argv]
    try:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                preexec_fn=child_preexec())
    except OSError as err:
        raise ConfigError(f"cannot start {cmd[0]}: {err.strerror}", fix=f"apt-get install {cmd[0]}") from err
    try:
        # Wait for the server's own "listening" line; a probe connection would be
        # served as a test (and a one-off server would then exit).
        assert proc.stdout is not None
        seen = b""
        deadline = time.monotonic() + 15
        while b"listening" not in seen.lower():
            left = deadline - time.monotonic()
            ready, _, _ = select.select([proc.stdout], [], [], max(0.0, left))
            chunk = os.read(proc.stdout.fileno(), 4096) if ready else b""
            if not chunk:
                raise PveoiError(f"{cmd[0]} did not start listening: {seen.decode(errors='replace').strip()!r}",
                                 fix=f"run {shlex.join(cmd)} by hand to see why")
            seen += chunk
        yield port
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def run_once(setup: Setup, arm: Arm, workload: Workload, events: Sequence[Event], rep: int) -> dict[str, Any]:
    """Boot one fresh guest for ``arm``, run ``workload`` once, count it.

    :raises MeasurementError: the arm is not what it claims (QMP or guest side).
    :raises GuestError: boot, SSH or the workload failed.
    """
    name = f"{workload.name}-{arm.name}-{rep}"
    scratch = None
    with contextlib.ExitStack() as stack:
        if workload.scratch_mb:
            scratch = stack.enter_context(tempdir("disk")) / "scratch.img"
            with open(scratch, "wb") as f:
                f.truncate(workload.scratch_mb << 20)
        spec = MachineSpec(
            kernel=arm.kernel or setup.kernel, initrd=setup.initrd,
            append=f"{DEFAULT_APPEND} {arm.append}".strip(), accel=setup.accel, pv_eoi=arm.pv_eoi,
            cpu_flags=arm.cpu_flags, smp=workload.smp, memory_mb=setup.memory_mb, scratch_disk=scratch,
            paused=True, qemu=setup.qemu, name=name,
        )
        started = time.monotonic()
        machine = stack.enter_context(Machine(spec, READY_PATTERN, artifacts=setup.artifacts))
        vcpus = machine.vcpus()
        readback = machine.pv_eoi_readback()
        kvm = machine.query_kvm()
        check_qmp_arm(arm, readback, kvm["enabled"])
        machine.resume()
        ready = machine.wait_ready(setup.boot_timeout)
        boot_s = time.monotonic() - started
        ssh = machine.ssh(setup.private_key, setup.host_key_line, timeout=60)
        before = GuestState.parse(ssh.run(STATE_COMMAND, timeout=30).check().stdout)
        check_guest_arm(arm, before, kvm["enabled"])
        with host_server(workload.host_server) as port:
            argv = workload.argv(port)
            with PerfStat(events, tids=[v.thread_id for v in vcpus]) as perf:
                perf.start()
                perf.enable()
                result = ssh.run(argv, timeout=workload.timeout)
                perf.disable()
                counts = perf.stop()
        after = GuestState.parse(ssh.run(STATE_COMMAND, timeout=30).check().stdout)
        result.check()
        machine.console.check()
    raw = {e.key: int(counts[e.key]) for e in events if e.filter is None}
    breakdown = {e.key[len("kvm_exit["):-1]: int(counts[e.key]) for e in events if e.filter is not None}
    record = {
        "rep": rep,
        "arm": arm.name,
        "boot_seconds": round(boot_s, 2),
        "workload_seconds": round(result.seconds, 3),
        "ready_line": ready,
        "qmp": {"kvm": kvm, "kvm_pv_eoi": readback, "vcpu_threads": [v.thread_id for v in vcpus]},
        "counts": raw,
        "exit_reasons": breakdown,
        "guest": {"interrupts": interrupt_delta(before, after),
                  "interrupts_per_cpu": interrupt_delta_per_cpu(before, after),
                  "pv_eoi": pveoi_delta(before, after)},
        "workload_output": result.stdout.strip()[-500:],
    }
    log.info("  %-6s rep %d: kvm_exit=%d kvm_pv_eoi=%d kvm_eoi=%d inj_virq=%d (%.1fs workload)",
             arm.name, rep, raw.get("kvm:kvm_exit", 0), raw.get("kvm:kvm_pv_eoi", 0), raw.get("kvm:kvm_eoi", 0),
             raw.get("kvm:kvm_inj_virq", 0), result.seconds)
    return record


def check_qmp_arm(arm: Arm, readback: Sequence[bool], kvm_enabled: bool) -> None:
    """Under KVM, QEMU's per-vCPU ``kvm-pv-eoi`` (``qom-get``) must be what the arm asked for.

    (Under TCG QEMU filters every KVM paravirtual feature, so there is nothing to prove.)

    :raises MeasurementError: on a mismatch.
    """
    if kvm_enabled and arm.pv_eoi is not None and any(r != arm.pv_eoi for r in readback):
        raise MeasurementError(
            f"arm {arm.name} asked for kvm-pv-eoi={'on' if arm.pv_eoi else 'off'} but QMP reads {list(readback)}",
            fix="this QEMU/KVM does not honour kvm-pv-eoi; check `pveoi doctor`",
        )


def check_guest_arm(arm: Arm, state: GuestState, kvm_enabled: bool) -> None:
    """The guest's own view must agree with the arm (where the guest patch reports it).

    :raises MeasurementError: the guest's CPUID bit or MSR enable disagrees.
    """
    if state.pveoi is None or not kvm_enabled:
        return
    features = {c.feature for c in state.pveoi.values()}
    enabled = {c.enabled for c in state.pveoi.values()}
    if arm.pv_eoi is not None and features != {arm.pv_eoi}:
        raise MeasurementError(
            f"arm {arm.name}: QEMU was told kvm-pv-eoi={'on' if arm.pv_eoi else 'off'} but the guest's CPUID "
            f"says feature={sorted(features)}", fix="check QEMU's -cpu handling and `pveoi doctor`")
    if enabled != {arm.expects_pv_eoi}:
        raise MeasurementError(
            f"arm {arm.name}: the guest's MSR_KVM_PV_EOI_EN enable is {sorted(enabled)}, expected "
            f"{arm.expects_pv_eoi}", fix="check the guest kernel (CONFIG_KVM_GUEST) and its command line")


# ---------------------------------------------------------------- analysis


def analyze(workload: Workload, arms: Sequence[Arm], runs: Sequence[Mapping[str, Any]],
            thresholds: Mapping[str, float]) -> dict[str, Any]:
    """Metrics and verdict for one workload's runs (pure).

    :returns: ``{"verdict", "reasons", "metrics", "eoi_exits_saved_per_interrupt", ...}``.
    """
    treat = next(a for a in arms if a.expects_pv_eoi)
    base = next(a for a in arms if not a.expects_pv_eoi)
    on = [r for r in runs if r["arm"] == treat.name]
    off = [r for r in runs if r["arm"] == base.name]
    reasons: list[str] = []
    notes: list[str] = []
    out: dict[str, Any] = {"workload": workload.name, "description": workload.description,
                           "treatment": treat.name, "baseline": base.name, "thresholds": dict(thresholds)}
    if not on or not off:
        out.update(verdict="not-measurable", reasons=["an arm has no completed runs"], metrics={},
                   eoi_exits_saved_per_interrupt=None)
        return out
    few = [r for r in on + off if r["counts"]["kvm:kvm_inj_virq"] < thresholds["min_interrupts"]]
    if few:
        out.update(verdict="not-measurable",
                   reasons=[f"{len(few)} run(s) injected fewer than {thresholds['min_interrupts']:.0f} interrupts: "
                            "this workload does not interrupt the guest enough to measure PV EOI here"],
                   metrics={}, eoi_exits_saved_per_interrupt=None)
        return out
    metrics: dict[str, Any] = {}
    for key in COUNTED:
        if key == "kvm:kvm_inj_virq":
            continue
        metrics[key.split(":", 1)[1]] = summarize(
            key.split(":", 1)[1], [per_interrupt(r, key) for r in on], [per_interrupt(r, key) for r in off]
        ).to_json()
    metrics["kvm_exit_per_op"] = summarize(
        "kvm_exit_per_op", [r["counts"]["kvm:kvm_exit"] / workload.ops for r in on],
        [r["counts"]["kvm:kvm_exit"] / workload.ops for r in off], unit=f"per operation ({workload.ops} ops)",
    ).to_json()
    for reason in sorted({k for r in on + off for k in r["exit_reasons"]}):
        def per_int(r: Mapping[str, Any], reason: str = reason) -> float:
            return float(r["exit_reasons"].get(reason, 0)) / float(r["counts"]["kvm:kvm_inj_virq"])

        metrics[f"kvm_exit[{reason}]"] = summarize(
            f"kvm_exit[{reason}]", [per_int(r) for r in on], [per_int(r) for r in off]).to_json()
    try:
        trapped = eoi_exits_saved_per_interrupt([headline_counts(r) for r in on], [headline_counts(r) for r in off])
    except MeasurementError as err:  # inconsistent counts: a broken measurement is never a pass
        out.update(verdict="fail", reasons=[str(err)], metrics=metrics, eoi_exits_saved_per_interrupt=None)
        return out
    metrics["trapped_eoi"] = trapped.to_json()
    saved = {"value": trapped.diff, "ci": list(trapped.diff_ci) if trapped.diff_ci else None,
             "limit": 1.0}
    out["eoi_exits_saved_per_interrupt"] = saved
    out["metrics"] = metrics

    # Verdict conditions.
    pv_on = [r["counts"]["kvm:kvm_pv_eoi"] for r in on]
    pv_off = [r["counts"]["kvm:kvm_pv_eoi"] for r in off]
    if not all(v > 0 for v in pv_on):
        reasons.append(f"kvm_pv_eoi was 0 in a {treat.name} run ({pv_on}): the host never used PV EOI")
    if any(v != 0 for v in pv_off):
        reasons.append(f"kvm_pv_eoi was non-zero in a {base.name} run ({pv_off})")
    lo = trapped.diff_ci[0] if trapped.diff_ci else trapped.diff
    if trapped.diff < thresholds["min_eoi_saved_per_interrupt"]:
        reasons.append(f"EOI exits saved per interrupt {trapped.diff:.3f} < threshold "
                       f"{thresholds['min_eoi_saved_per_interrupt']:.2f}")
    elif lo <= 0:
        reasons.append(f"EOI exits saved per interrupt {trapped.diff:.3f} has a CI touching zero ({trapped.diff_ci})")
    exit_m = metrics["kvm_exit"]
    if not exit_m["on_median"] < exit_m["off_median"]:
        reasons.append(f"kvm_exit per interrupt not lower with PV EOI ({exit_m['on_median']:.3f} vs "
                       f"{exit_m['off_median']:.3f})")
    agreement = []
    for r in on:
        g = r["guest"]["pv_eoi"]
        if g is None:
            continue
        host_n, guest_n = r["counts"]["kvm:kvm_pv_eoi"], g["skipped"]
        gap = abs(host_n - guest_n)
        ok = gap <= thresholds["agreement_slack"] + thresholds["max_agreement_error"] * max(host_n, guest_n)
        agreement.append({"rep": r["rep"], "host_pv_eoi": host_n, "guest_skipped": guest_n, "ok": ok})
        if not ok:
            reasons.append(f"host kvm_pv_eoi {host_n} and guest skipped EOIs {guest_n} disagree (rep {r['rep']})")
    if not agreement:
        notes.append("the guest kernel has no skipped-EOI counter (guest_patches/0001); host/guest agreement "
                     "not checked")
    out["agreement"] = agreement
    out["verdict"] = "fail" if reasons else "pass"
    out["reasons"] = reasons
    out["notes"] = notes
    return out


# ---------------------------------------------------------------- the A/B


@dataclass
class AbConfig:
    workloads: list[Workload]
    runs: int = 3
    arms: tuple[Arm, ...] = DEFAULT_ARMS
    threshold_overrides: dict[str, float] = field(default_factory=dict)
    #: fresh-guest retries of a run that failed on infrastructure (boot deadline, QMP, SSH, QEMU
    #: gone); a kernel panic is a finding and never retried. Every retry is recorded.
    retries: int = 1


def run_ab(setup: Setup, config: AbConfig, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run every workload's interleaved A/B on this (KVM) host; return the result document.

    A run that fails (boot, SSH, QEMU) is recorded and makes that workload's
    verdict ``error``, never a pass or fail; a host that cannot count (perf
    missing or denied, tracepoints missing) raises: there is no verdict at all.
    """
    validate_arms(config.arms)
    if config.runs < 1:
        raise ConfigError("--runs must be at least 1", fix="pass --runs 3")
    say = progress or (lambda msg: log.info("%s", msg))
    vendor = cpu_vendor()
    events = perf_events(vendor, list_kvm_tracepoints())
    setup.artifacts.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    arm_runs: dict[str, dict[str, list[dict[str, Any]]]] = {a.name: {} for a in config.arms}
    for workload in config.workloads:
        thresholds = load_thresholds(workload.name, config.threshold_overrides)
        runs: list[dict[str, Any]] = []
        errors: list[str] = []
        order = arm_order(config.arms, config.runs)
        say(f"workload {workload.name}: {workload.description}; {len(order)} guests")
        retried: list[str] = []
        for i, (rep, arm) in enumerate(order, 1):
            say(f"[{workload.name} {i}/{len(order)}] arm {arm.name}, rep {rep + 1}: boot + workload")
            for attempt in range(config.retries + 1):
                try:
                    runs.append(run_once(setup, arm, workload, events, rep))
                    break
                except (MeasurementError, CapabilityError):
                    raise  # the host cannot count (perf missing or denied, a tracepoint gone): no verdict at all
                except PveoiError as err:
                    if attempt < config.retries and not isinstance(err, GuestPanic):
                        retried.append(f"{arm.name} rep {rep + 1}: {err}")
                        log.warning("run failed, retrying once on a fresh guest: %s", err)
                        continue
                    errors.append(f"{arm.name} rep {rep + 1}: {err}")
                    log.error("run failed: %s", err)
                    break
        analysis = analyze(workload, config.arms, runs, thresholds)
        analysis["retried"] = retried
        if retried:
            analysis.setdefault("notes", []).append(
                f"{len(retried)} run(s) failed and were retried on a fresh guest: " + "; ".join(retried))
        if errors:  # a run that did not finish measured nothing: no pass or fail from the rest
            analysis["verdict"] = "error"
            analysis["reasons"] = [f"{len(errors)} of {len(order)} runs did not complete, so no verdict",
                                   *errors]
        results[workload.name] = analysis
        for arm in config.arms:
            arm_runs[arm.name][workload.name] = [r for r in runs if r["arm"] == arm.name]
    return {
        "schema": SCHEMA,
        "pveoi_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "runs_per_arm": config.runs,
        "runner": runner_info(vendor),
        "arms": {a.name: {"settings": a.to_json(), "runs": arm_runs[a.name]} for a in config.arms},
        "workloads": results,
        "events": [{"name": e.name, "filter": e.filter, "label": e.label} for e in events],
        **overall(results),
    }


def overall(results: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The document-level verdict, reason, metrics and headline from the per-workload results (pure)."""
    verdicts = [w["verdict"] for w in results.values()]
    return {
        "verdict": next((v for v in ("fail", "error", "pass") if v in verdicts), "not-measurable"),
        "reason": "; ".join(f"{name}: {'; '.join(w['reasons']) or w['verdict']}" for name, w in results.items()),
        "metrics": {name: w.get("metrics", {}) for name, w in results.items()},
        "eoi_exits_saved_per_interrupt": next((w["eoi_exits_saved_per_interrupt"] for w in results.values()
                                               if w.get("eoi_exits_saved_per_interrupt")), None),
    }


def merge_results(docs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One result document from several of the same A/B, each of other workloads (pure).

    :raises ValueError: no documents, or two that measured the same workload.
    """
    if not docs:
        raise ValueError("nothing to merge")
    out: dict[str, Any] = copy.deepcopy(dict(docs[0]))
    for doc in docs[1:]:
        clash = out["workloads"].keys() & doc["workloads"].keys()
        if clash:
            raise ValueError(f"workload(s) {sorted(clash)} measured twice")
        out["workloads"].update(copy.deepcopy(doc["workloads"]))
        for name, arm in doc["arms"].items():
            mine = out["arms"].setdefault(name, {"settings": arm["settings"], "runs": {}})
            mine["runs"].update(copy.deepcopy(arm["runs"]))
    out.update(overall(out["workloads"]))
    return out


def runner_info(vendor: str) -> dict[str, Any]:
    def qemu_version() -> str:
        try:
            out = subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True, text=True,
                                 timeout=30, check=False).stdout
        except (OSError, subprocess.TimeoutExpired):
            return "unknown"
        return out.splitlines()[0] if out else "unknown"

    def cpu_model() -> str:
        try:
            text = Path("/proc/cpuinfo").read_text()
        except OSError:
            return "unknown"
        return next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")),
                    "unknown")

    return {"hostname": platform.node(), "kernel": platform.release(), "cpu_vendor": vendor, "cpu_model": cpu_model(),
            "cpus": os.cpu_count(), "qemu": qemu_version(), "python": platform.python_version()}
