"""
Running a plan where the host says: directly on this KVM host, or through the
virtual KVM host, one L1 per workload and host kernel, each running its part
of the very same :class:`e2e.model.plan.Plan` with the inner runner
(:mod:`e2e.run.inner`), the parts' raw runs analyzed together.

``pveoi ab`` and ``pveoi bisect`` both run their plans through :func:`measure`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from ..build.cache import atomic_write
from ..errors import ConfigError, GuestTimeout, Kind, PveoiError, retryable
from ..model.plan import Plan
from ..model.result import Result
from ..report import results
from ..util.paths import REPO_ROOT
from ..util.tmpdirs import tempdir
from ..vm.trials import TRIAL_KERNEL, Trial
from ..vm.vhost import VirtualKvmHost, run_in_vhost
from . import ab, inner, traces

log = logging.getLogger(__name__)

Sink = Callable[[bytes], None]


def stock_host_kernel(base: str | None = None) -> Path:
    """pveoi's own virtual-host kernel of ``base`` (default the kernel default; built on first use, then a
    cache hit); a trial's (:data:`~e2e.vm.trials.TRIAL_KERNEL`) when one is set.

    :raises ConfigError: a trial setting refused (:meth:`~e2e.vm.trials.Trial.from_environ`), or a trial's
        kernel given with ``base``.
    """
    from ..build import kernel

    trial = Trial.from_environ(os.environ).kernel
    if trial is not None:
        if base is not None:
            raise ConfigError(f"--host-base {base} and {TRIAL_KERNEL} both pick the virtual host's own kernel",
                              fix=f"drop one of --host-base and {TRIAL_KERNEL}")
        return trial
    return kernel.build_kernel(kernel.default_spec("host", base=base)).file("bzImage")


def measure(plan: Plan, host: str, why: str, sink: Sink | None = None) -> Result:
    """Run ``plan`` on ``host`` (``direct`` or ``virtual``, as :mod:`e2e.run.hostsel` chose, for ``why``).

    :raises PveoiError: config or capability errors, or infrastructure once retries are spent.
    """
    if host == "virtual":
        return run_virtual(plan, why, sink)
    return ab.run_plan(plan).with_(host={"chosen": "direct", "reason": why})


def run_virtual(plan: Plan, why: str, sink: Sink | None = None) -> Result:
    """Run ``plan`` through the virtual KVM host: one L1 per workload and host kernel, each running its
    part of the plan unchanged; the parts' raw runs are analyzed together.

    A lost L1 costs the guest it was running, not its part: the guests it had measured are kept
    (:data:`e2e.run.inner.PARTIAL`) and a fresh L1 (restarted per the one retry policy) resumes the part
    after them, in the same balanced order."""
    deadline = time.monotonic() + plan.timeout
    parts: list[Result] = []
    boots: list[float] = []
    stages: list[dict[str, object]] = []  # each part's virtual host: boot, command, shutdown
    restarts: list[dict[str, object]] = []
    facts: dict[str, str] = {}
    kernels = plan.host_kernels()
    for w in plan.workloads:
        for hk in kernels:
            part_plan = plan.only(w, hk)
            total = len(part_plan.order())
            tag = w if len(kernels) == 1 else f"{w}-{hk.parent.name if hk else 'stock'}"
            host_kernel = hk or stock_host_kernel()
            for attempt in range(plan.retries + 1):
                salvaged: list[tuple[int, Result]] = []
                vhost_logs = plan.logs / f"vhost-{tag}-{attempt + 1}"
                try:
                    part, vh = in_vhost(part_plan, host_kernel, deadline - time.monotonic(), vhost_logs, sink,
                                        under_test=not is_stock_host_kernel(host_kernel), salvage=salvaged)
                    parts.append(part)
                    boots.append(round(vh.boot_seconds or 0.0, 2))
                    stages.append({"part": tag, **vh.stage_seconds})
                    facts = vh.kvm_facts
                    break
                except PveoiError as err:
                    kept = 0
                    if salvaged:  # what the lost L1 had measured stays; the next one resumes after it
                        done, partial = salvaged[0]
                        kept = done - part_plan.start
                        parts.append(partial)
                        part_plan = replace(part_plan, start=done)
                    if part_plan.start >= total:  # it had measured every guest: nothing to resume
                        restarts.append(restart_record(tag, attempt + 1, err, vhost_logs, plan.logs, kept))
                        log.warning("the virtual host failed after its last guest (%s): %s", tag, err)
                        break
                    if not retryable(err) or attempt == plan.retries:
                        # the evidence of those before it, kept
                        raise err.with_(retried=(*restarts, *err.retried)) from err
                    restarts.append(restart_record(tag, attempt + 1, err, vhost_logs, plan.logs, kept))
                    log.warning("the virtual host failed; restarting it for %s after the %d guests measured: %s",
                                tag, part_plan.start, err)
    before = time.monotonic()
    trial = trial_record()  # a trial's virtual host may fail every boot itself: no recurring finding then
    merged = ab.reanalyze(parts[0], plan, parts[1:], recurring=not trial)
    analyzed = round(time.monotonic() - before, 2)
    manifests = {str(hk or "stock"): results.kernel_manifest(hk or stock_host_kernel()) for hk in kernels}
    return merged.with_(host={"chosen": "virtual", "reason": why, "inner_runner": dict(parts[0].runner),
                              "virtual_host": {"boot_seconds": boots[0] if boots else None, "boots": boots,
                                               "kvm": facts, "restarts": restarts, "kernels": manifests,
                                               "stages": stages, "analysis_seconds": analyzed,
                                               **trial}})


def inner_env() -> dict[str, str]:
    """The inner runner's ``PYTHONPATH``: pveoi's package and this interpreter's site-packages, which
    ``python -S`` (no ``site``) leaves out. ``site`` costs L1's emulated CPU about 2 s per interpreter
    (its .pth files: the editable install's finder imports importlib's machinery), and the inner runner
    needs none of it."""
    import site

    paths = [str(REPO_ROOT), *site.getsitepackages(), *os.environ.get("PYTHONPATH", "").split(os.pathsep)]
    return {"PYTHONPATH": os.pathsep.join(dict.fromkeys(p for p in paths if p))}


def trial_record() -> dict[str, object]:
    """The virtual host's trial settings, for the result (nothing when it ran as pveoi's own)."""
    trial = Trial.from_environ(os.environ)
    if not trial.active:
        return {}
    return {"trial": {"cpu": trial.cpu, "append": list(trial.append),
                      **({"kernel": results.kernel_manifest(trial.kernel)} if trial.kernel is not None else {}),
                      **({"tcg_thread": trial.tcg_thread} if trial.tcg_thread != "multi" else {}),
                      **({"host_cpus": list(trial.host_cpus)} if trial.host_cpus else {}),
                      **({"tb_size_mb": trial.tb_size_mb} if trial.tb_size_mb else {})}}


def is_stock_host_kernel(bzimage: Path) -> bool:
    """Whether ``bzimage`` is one of pveoi's own virtual-host kernels (pveoi's build of Debian's source
    of a base with its series and no extra fragments, the kernel its guests run too): its crash is
    nested TCG's, not a kernel under test's."""
    from ..build import kernel
    from ..build.bases import BASES

    trial = Trial.from_environ(os.environ).kernel
    if trial is not None and bzimage.resolve() == trial.resolve():
        return True  # a trial of the virtual host's own kernel: its crash is the virtual host's
    manifest = results.kernel_manifest(bzimage)
    base = manifest.get("base")
    if manifest.get("kind") != "build" or base not in BASES:
        return False
    try:
        return bool(manifest.get("hash") == kernel.default_spec("host", base=str(base)).key())
    except PveoiError:
        return False


def silence_limit(plan: Plan) -> float:
    """How long the inner runner may print nothing before its virtual host counts as stalled: it prints
    a line per guest attempt, and an attempt ends within its boot deadline, its workload's deadline and
    its other commands' (SSH 60 s, two state reads of 30 s, perf and the trace), with 5 minutes to spare."""
    from ..model.workloads import get_workloads

    return plan.boot_timeout + max(w.timeout for w in get_workloads(list(plan.workloads))) + 180.0 + 300.0


def restart_record(part: str, attempt: int, err: PveoiError, logs: Path, root: Path,
                   kept: int = 0) -> dict[str, object]:
    """One failed virtual host that was restarted, as the result keeps it: its part, attempt,
    kind, class (``virtual host stall``, an exit class such as ``killed by signal``, or ``""``),
    message, evidence, its logs' directory (relative to the result's logs) and how many guests it
    had measured that were kept (the next virtual host resumed after them)."""
    try:
        where = str(logs.relative_to(root))
    except ValueError:
        where = str(logs)
    return {"part": part, "attempt": attempt, "kind": str(err.kind), "class": err.cause, "message": str(err),
            "evidence": list(err.evidence), "logs": where, **({"kept": kept} if kept else {})}


def in_vhost(plan: Plan, host_kernel: Path, timeout: float, vhost_logs: Path, sink: Sink | None = None,
             under_test: bool = False,
             salvage: list[tuple[int, Result]] | None = None) -> tuple[Result, VirtualKvmHost]:
    """One part of a plan, run by the inner runner inside a fresh virtual KVM host: (its result, the host).

    The plan goes in as JSON through the results share; the typed result comes back the same way.
    The guests' logs go to ``plan.logs``; the virtual host's own (console, output, QEMU) to ``vhost_logs``,
    and so do its guests' when the part failed (``vhost_logs/guests/``: a retry cannot overwrite them).

    :param under_test: ``host_kernel`` is a kernel under test (its crash is its own, not nested TCG's).
    :param salvage: when the part fails, what it had measured is appended here
        (:func:`e2e.run.inner.load_partial`).
    :raises GuestTimeout: no time left before this part.
    :raises PveoiError: the inner run's own error, as its kind; or no result (infrastructure).
    """
    if timeout <= 0:
        raise GuestTimeout(f"the A/B ran past --timeout {plan.timeout:.0f}s before {', '.join(plan.workloads)}",
                           fix="raise --timeout")
    with tempdir("ab") as tmp:
        inner_plan = replace(plan, logs=tmp / "logs")
        atomic_write(tmp / "plan.json", json.dumps(inner_plan.to_json(), indent=2))
        argv = [sys.executable, "-S", "-m", "e2e.run.inner", str(tmp / "plan.json"), str(tmp / "result.json")]
        res: Result | None = None
        try:
            rc, vh = run_in_vhost(argv, host_kernel, tmp, timeout=timeout, sink=sink, artifacts=vhost_logs,
                                  env=inner_env(),
                                  keep=plan.files(), under_test=under_test, silence_timeout=silence_limit(plan))
            if not (tmp / "result.json").is_file():
                raise PveoiError(f"the A/B inside the virtual host wrote no result (exit {rc})",
                                 fix=f"read the logs in {vhost_logs}", kind=Kind.INFRASTRUCTURE)
            res = results.load(tmp / "result.json")
            inner.raise_inner_error(res)
            before = time.monotonic()
            res = traces.finish_traces(res, tmp / "logs")  # summarized here: native Python, not L1's emulated one
            res = res.with_(runner={**res.runner, "timings": {**(res.runner.get("timings") or {}),
                                                              "traces_summarized_outside": round(
                                                                  time.monotonic() - before, 2)}})
        except BaseException as err:
            res = None
            # (Ctrl-C or SIGTERM: nothing is resumed, so nothing is salvaged.)
            if (salvage is not None and isinstance(err, PveoiError)
                    and (partial := inner.load_partial(tmp / inner.PARTIAL)) is not None):
                try:
                    salvage.append((partial[0], traces.finish_traces(partial[1], tmp / "logs")))
                except PveoiError as err:  # its traces are lost with L1: measure those guests again
                    log.warning("the runs the virtual host measured before it failed are not kept: %s", err)
            raise
        finally:
            # A failed part may be retried in a fresh virtual host whose guests have the same names: its
            # guests' logs stay with the virtual host's own (vhost_logs/guests/), never overwritten by the retry.
            if (tmp / "logs").is_dir():
                shutil.copytree(tmp / "logs", plan.logs if res is not None else vhost_logs / "guests",
                                dirs_exist_ok=True)
            stacks = tmp / inner.STACKS
            if stacks.is_file() and stacks.stat().st_size:  # the inner run lasted past inner.STACKS_EVERY
                vhost_logs.mkdir(parents=True, exist_ok=True)
                shutil.copy(stacks, vhost_logs / inner.STACKS)
    return res, vh


__all__ = ["in_vhost", "measure", "restart_record", "run_virtual", "stock_host_kernel"]
