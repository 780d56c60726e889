"""``pveoi ab``: the A/B (kvm-pv-eoi on vs off, or any arms); its inputs checked, its plan built, its result
printed and recorded."""

from __future__ import annotations

import argparse
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ConfigError, PveoiError
from ..model.plan import DEFAULT_RETRIES
from .common import SubParsers, bases_help, choose_host, guest_image, guest_kernel, parse_thresholds, stdout_sink

if TYPE_CHECKING:
    from ..build.kernel import BuildSpec
    from ..model.plan import Arm, Plan

log = logging.getLogger("pveoi")

@dataclass(frozen=True)
class AbOptions:
    """``pveoi ab``'s options; ``workloads`` is ``("timer",)`` when none was named, ``threshold`` the raw
    ``KEY=VALUE`` items."""

    workloads: tuple[str, ...]
    runs: int
    kernel: Path | None
    source: Path | None
    patches: Path | None
    no_patches: bool
    base: str | None
    host_base: str | None
    image: Path | None
    arms: Path | None
    aa: bool
    smp: int | None
    host_kernel: Path | None
    host_source: Path | None
    host_patches: Path | None
    host: str
    threshold: tuple[str, ...]
    json: Path | None
    history: Path | None
    ktap: str | None
    logs: Path | None
    memory: int
    timeout: float
    retries: int
    reps_per_boot: int = 1
    overlap_boots: bool = False

    @classmethod
    def from_args(cls, ns: argparse.Namespace) -> AbOptions:
        return cls(workloads=tuple(ns.workload or ["timer"]), runs=ns.runs, kernel=ns.kernel, source=ns.source,
                   patches=ns.patches, no_patches=ns.no_patches, base=ns.base, host_base=ns.host_base,
                   image=ns.image, arms=ns.arms, aa=ns.aa, smp=ns.smp, host_kernel=ns.host_kernel,
                   host_source=ns.host_source, host_patches=ns.host_patches, host=ns.host,
                   threshold=tuple(ns.threshold), json=ns.json, history=ns.history, ktap=ns.ktap, logs=ns.logs,
                   memory=ns.memory, timeout=ns.timeout, retries=ns.retries, reps_per_boot=ns.reps_per_boot,
                   overlap_boots=ns.overlap_boots)

    @property
    def host_under_test(self) -> bool:
        """A host kernel under test was asked for (--host-kernel, --host-source or --host-patches)."""
        return bool(self.host_kernel or self.host_source or self.host_patches)


def add_parser(sub: SubParsers) -> None:
    from ..model.workloads import WORKLOADS

    p = sub.add_parser(
        "ab", help="the A/B: kvm-pv-eoi=on vs off (or any arms), perf kvm:* per workload window, verdict",
        description="Boot a fresh guest per arm and rep (interleaved), count kvm:* tracepoints on the host for "
                    "exactly the workload window and exactly that QEMU's vCPU threads, compare every pair of "
                    "arms and decide. Exit 0 pass, 1 fail (or a regression between arms), 2 not measurable or "
                    "setup error.",
    )
    p.add_argument("--workload", action="append", choices=sorted(WORKLOADS), metavar="NAME",
                   help=f"repeatable; one of {', '.join(WORKLOADS)} (default: timer)")
    p.add_argument("--runs", type=int, default=3, help="reps per arm (default 3)")
    p.add_argument("--reps-per-boot", type=int, default=1, metavar="N",
                   help="measure up to N reps in one guest, window after window, before booting the next (each "
                        "window counted, traced and accounted on its own; the arm proven at the boot): fewer boots, "
                        "a faster verdict; default 1, a fresh guest per rep (docs/measurement.md)")
    p.add_argument("--overlap-boots", action="store_true",
                   help="boot each round's guests (one per arm) at once, then measure them one after another, "
                        "each while the others sit idle: one boot's wait per round instead of one per arm")
    gk = p.add_mutually_exclusive_group()
    gk.add_argument("--kernel", type=Path, metavar="PATH", help="guest bzImage (default: build pveoi's)")
    gk.add_argument("--source", type=Path, metavar="DIR",
                    help="build the guest kernel from your tree (incremental; guest_patches/ unless --patches)")
    p.add_argument("--patches", type=Path, metavar="DIR", help="with --source: a quilt patch dir instead of "
                   "the base's guest_patches/<base>/")
    p.add_argument("--no-patches", action="store_true", help="with --source: build without pveoi's patches "
                   "(no skipped/written counters or markers: the loose host-only agreement)")
    p.add_argument("--base", metavar="BASE", help=f"the guest kernel's base: {bases_help()}; with --source, "
                   "the series to apply instead of the one the tree's version picks")
    p.add_argument("--host-base", metavar="BASE", help="the virtual host's own kernel base (pveoi's kernel "
                   "built from Debian's linux-source-<base>; default 6.1)")
    p.add_argument("--image", type=Path, metavar="DIR", help="a built guest image entry (default: build pveoi's)")
    p.add_argument("--arms", type=Path, metavar="TOML",
                   help="two or more [[arm]] tables: name, pv_eoi, cpu_flags, smp, append, kernel (a bzImage or "
                        "{source = DIR, patches = DIR}), host_kernel; default: on vs off")
    p.add_argument("--aa", action="store_true", help="an A/A noise check instead of on vs off: the on arm twice "
                   "(b a replica of a); a difference it flags is a false alarm of this runner")
    p.add_argument("--smp", type=int, metavar="N", help="vCPUs of every default arm (default: the workload's, 2)")
    hk = p.add_mutually_exclusive_group()
    hk.add_argument("--host-kernel", type=Path, metavar="PATH",
                    help="a KVM host kernel under test (virtual host only): PV EOI's effect under the stock host "
                         "kernel and under this one, and the difference (4 arms)")
    hk.add_argument("--host-source", type=Path, metavar="DIR",
                    help="build the host kernel under test from your tree (pveoi's host fragments on top)")
    p.add_argument("--host-patches", type=Path, metavar="DIR",
                   help="a quilt-style patch dir for the host kernel under test (on --host-source, or on Debian's "
                        "source)")
    p.add_argument("--host", choices=["auto", "direct", "virtual"], default="auto")
    p.add_argument("--threshold", action="append", default=[], metavar="KEY=VALUE",
                   help="override a verdict threshold (see e2e/data/thresholds.toml)")
    p.add_argument("--json", type=Path, metavar="PATH", help="write the result document here")
    p.add_argument("--history", type=Path, metavar="DIR", help="also add the result to this history dir")
    p.add_argument("--ktap", metavar="PATH|-", help="also write the verdicts as KTAP version 1 ('-': stdout)")
    p.add_argument("--logs", type=Path, metavar="DIR", help="keep console/QEMU logs here")
    p.add_argument("--memory", type=int, default=256, metavar="MIB", help="guest memory")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds for the whole A/B")
    p.add_argument("--retries", type=int, default=DEFAULT_RETRIES, metavar="N",
                   help="retry a run that failed on infrastructure (boot deadline, QMP, SSH, QEMU or the virtual "
                        "host gone) on a fresh guest up to N times; findings (a panic, a kernel that did not "
                        "enable PV EOI) are never retried, nor is a failure that repeats on every attempt of two or "
                        "more reps of an arm (a finding too); every retry is recorded (default %(default)s)")
    p.set_defaults(func=cmd_ab)


def cmd_ab(args: argparse.Namespace) -> int:
    return ab(AbOptions.from_args(args))


def _virtual_only() -> ConfigError:
    return ConfigError("a host kernel under test can only be booted by the virtual KVM host",
                       fix="add --host virtual (a hardware host cannot swap its kernel without a reboot)")


def ab(opts: AbOptions) -> int:
    """Check the inputs, choose the host, build the plan, measure, record and print; the verdict's exit code."""
    from ..model.result import Result
    from ..report import results
    from ..run import ab as runs
    from ..run.runner import measure
    from ..util.laps import Laps, seconds_since_process_start

    laps = Laps()  # where the outer pveoi's time goes, beside the guests' and the virtual host's own
    check_inputs(opts)
    laps.lap("inputs_checked")
    host, why, doctor_report = choose_host(opts.host)
    log.info("host: %s (%s)", host, why)
    runner = results.runner_identity(runs.runner_info(runs.cpu_vendor()), doctor_report)  # the machine running pveoi
    laps.lap("host_chosen")
    if host == "not-measurable":
        res = results.not_measurable(why, opts.runs).with_(runner=runner)
        results.emit(res, opts.json, opts.history)
        print(results.format_table(res))
        return 2
    if host == "direct" and opts.host_under_test:
        raise _virtual_only()
    plan = build_plan(opts)
    laps.lap("planned")
    from ..host import conditions

    started = conditions.snapshot()
    if host == "direct" and any(a.host_kernel for a in plan.arms):
        raise _virtual_only()
    from ..build.cache import Cache
    from ..util.logs import run_log_file

    try:
        # No prune removes a kernel or image this A/B boots, nor its logs while it writes them.
        with Cache().hold([*plan.files(), plan.logs, *filter(None, [run_log_file()])]):
            measured: Result = measure(plan, host, why, sink=stdout_sink)
    except ConfigError:
        raise  # a mistake in the input, not a night without a measurement
    except PveoiError as err:
        if opts.json or opts.history:  # the history shows this run measured nothing, and why
            runner = {**runner, "conditions": conditions.summarize(started, conditions.snapshot())}
            failed = results.error_result(err, host, why, opts.runs).with_(runner=runner, plan=plan)
            try:
                results.emit(failed, opts.json, opts.history)
            except (OSError, PveoiError) as write_err:  # e.g. the disk is full: the first error is the news
                log.warning("could not record the error in the results: %s", write_err)
        raise
    laps.lap("measured")
    timings = dict(laps.seconds)
    alive = seconds_since_process_start()
    if alive is not None:  # the interpreter's start-up and the CLI's parsing, before ab()
        timings = {"python_start": round(alive - sum(laps.seconds.values()), 2), **timings}
    runner = {**runner, "conditions": conditions.summarize(started, conditions.snapshot()), "timings": timings}
    res = measured.with_(runner=runner, kernel=results.kernel_manifest(plan.kernel),
                         image={"path": str(plan.image)}, logs=str(plan.logs))
    results.emit(res, opts.json, opts.history)
    results.write_ktap(opts.ktap, [res])
    print(results.format_table(res))
    from .cache import cap_cache

    cap_cache([opts.history])
    return res.exit_code


# ---------------------------------------------------------------- checks, before anything is built or booted


def _check_arm_kernel(source: Path | None, patches: Path | None, role: str, base: str | None) -> Path:
    """What an arms file's kernel table would build, checked without building it (a stand-in path that
    tells arms apart the way the built kernels would)."""
    from ..build import kernel

    kernel.default_spec(role, source=source, patches_dir=patches, base=base)  # base, version, source package
    return Path(f"<{role} kernel of {source or 'debian'} {patches or ''} {base or ''}>")


def _check_outputs(opts: AbOptions) -> None:
    """Make the --json parent and --history dirs now, so a bad path fails before anything boots."""
    for where in (opts.json.expanduser().absolute().parent if opts.json else None,
                  opts.history.expanduser().absolute() if opts.history else None):
        if where is None:
            continue
        try:
            where.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ConfigError(f"cannot create {where}: {err.strerror}",
                              fix="pick a writable path for --json/--history") from err
        if not os.access(where, os.W_OK):
            raise ConfigError(f"{where} is not writable", fix="pick a writable path for --json/--history")
    if opts.json and opts.json.expanduser().is_dir():
        raise ConfigError(f"--json {opts.json} is a directory", fix="pass a file path, e.g. results/ab.json")


def check_inputs(opts: AbOptions) -> None:
    """Every input of ``pveoi ab`` that can be checked cheaply, checked before the doctor's probe boot,
    any build or any boot (a kernel an arm builds from source is only looked at here).

    :raises ConfigError: naming the input and the fix.
    """
    from ..analysis import compare as analysis
    from ..model.plan import validate_arms
    from ..model.workloads import get_workloads
    from ..run.arms import load_arms

    overrides = parse_thresholds(opts.threshold)
    for w in get_workloads(list(opts.workloads)):
        analysis.load_thresholds(w.name, overrides)  # reject unknown keys
    if opts.runs < 1:
        raise ConfigError("--runs must be at least 1", fix="pass --runs 3")
    if opts.reps_per_boot < 1:
        raise ConfigError("--reps-per-boot must be at least 1", fix="pass --reps-per-boot 3, or leave it out")
    if opts.host != "direct":
        from ..vm.trials import Trial

        trial = Trial.from_environ(os.environ)  # a virtual-host trial's settings, refused now rather than at L1's boot
        if trial.kernel is not None and opts.host_base is not None:
            raise ConfigError("--host-base and PVEOI_VHOST_KERNEL both pick the virtual host's own kernel",
                              fix="drop one of --host-base and PVEOI_VHOST_KERNEL")
    if opts.retries < 0:
        raise ConfigError("--retries must be 0 or more", fix="pass --retries 1")
    if opts.smp is not None and not 1 <= opts.smp <= 64:
        raise ConfigError(f"--smp {opts.smp} is not in 1..64", fix="pass e.g. --smp 2")
    _check_outputs(opts)
    if opts.kernel:
        from ..build.kentry import check_kernel_file

        check_kernel_file(Path(opts.kernel).expanduser().absolute())
    if opts.image:
        from ..build import image

        image.load_image(opts.image)
    if opts.patches is not None and opts.source is None:
        raise ConfigError("--patches goes with --source", fix="pass --source DIR too, or drop --patches")
    if opts.no_patches and (opts.source is None or opts.patches is not None):
        raise ConfigError("--no-patches goes with --source (and not with --patches)",
                          fix="pass --source DIR --no-patches")
    _check_bases(opts)
    for d, what in ((opts.source, "--source"), (opts.patches, "--patches"), (opts.host_source, "--host-source"),
                    (opts.host_patches, "--host-patches")):
        if d is not None and not d.expanduser().is_dir():
            raise ConfigError(f"{what} {d} is not a directory", fix=f"pass a directory to {what}")
    if opts.host_kernel is not None and not opts.host_kernel.expanduser().is_file():
        raise ConfigError(f"--host-kernel {opts.host_kernel} not found",
                          fix="build one: pveoi kernel build --role host --source DIR")
    if opts.host == "direct" and opts.host_under_test:
        raise _virtual_only()
    if opts.arms and opts.host_under_test:
        raise ConfigError("--host-kernel/--host-source/--host-patches make the arms themselves; with --arms, "
                          "set host_kernel in the arms file", fix="use one or the other")
    if opts.aa and opts.arms:
        raise ConfigError("--aa makes the arms itself", fix="drop --arms, or write replica_of in the arms file")
    arms = load_arms(opts.arms, build=_check_arm_kernel) if opts.arms else _default_arms(opts)
    validate_arms(arms)
    # a host kernel under test must be able to be the virtual host's (KVM_AMD and 9p built in, or as
    # modules beside it); a table's is built by pveoi with them, so only given files are read
    from ..build.vhostkernel import host_kernel_needs

    given = [opts.host_kernel.expanduser().absolute()] if opts.host_kernel is not None else []
    for path in dict.fromkeys([*given, *(a.host_kernel for a in arms if a.host_kernel and a.host_kernel.is_file())]):
        host_kernel_needs(path)


def _check_bases(opts: AbOptions) -> None:
    """--base/--host-base name bases pveoi has, whose Debian source is installed where it will be built;
    a --source tree's version has a series (or --patches/--no-patches say otherwise).

    :raises ConfigError: one line naming the fix, before anything is built or booted.
    """
    from ..build import bases
    from ..build.kernel import KernelSource

    if opts.base is not None and opts.kernel is not None:
        raise ConfigError("--base picks the kernel pveoi builds; --kernel brings your own",
                          fix="drop one of --base and --kernel")
    if opts.host_base is not None and (opts.host_kernel or opts.host_source):
        raise ConfigError("--host-base picks the virtual host's own kernel; --host-kernel/--host-source add a "
                          "host kernel under test", fix="drop --host-base, or the host kernel under test")
    if opts.host_base is not None and opts.host == "direct":
        raise ConfigError("--host-base picks the virtual host's kernel; --host direct runs on this machine's",
                          fix="add --host virtual or drop --host-base")
    if opts.source is not None:
        tree = KernelSource.tree(opts.source)
        if opts.base is not None:
            bases.base_named(opts.base)
        elif opts.patches is None and not opts.no_patches:
            bases.base_for_version(bases.tree_version(tree.path))
    elif opts.kernel is None:
        KernelSource.debian(opts.base)
    if opts.host_base is not None:
        KernelSource.debian(opts.host_base)


# ---------------------------------------------------------------- the plan


def _default_arms(opts: AbOptions) -> tuple[Arm, ...]:
    from ..model.plan import AA_ARMS, DEFAULT_ARMS

    return AA_ARMS if opts.aa else DEFAULT_ARMS


def _build_from_source(source: Path | None, patches: Path | None, role: str, base: str | None) -> Path:
    """A kernel built by pveoi from a user's tree or Debian's source of ``base`` (a cache hit when built
    before)."""
    from ..build import kernel

    spec = kernel.default_spec(role, source=source, patches_dir=patches, base=base)
    return kernel.build_kernel(spec).file("bzImage")


def host_under_test_spec(opts: AbOptions) -> tuple[BuildSpec, dict[str, str]]:
    """What ``--host-source``/``--host-patches`` build, and the test arms' origin. Patches without a
    tree go on Debian's source of ``--host-base`` (default 6.1), the base the stock arms' host is
    built from, so the two host kernels differ by the patches alone."""
    from ..build import kernel as kernels

    source = opts.host_source.expanduser().absolute() if opts.host_source else None
    patches = opts.host_patches.expanduser().absolute() if opts.host_patches else None
    base = opts.host_base if source is None else None
    spec = kernels.default_spec("host", source=source, patches_dir=patches, base=base)
    origin = {k: str(v) for k, v in (("host_source", source), ("host_patches", patches), ("host_base", base))
              if v is not None}
    return spec, origin


def _host_kernel_arms(opts: AbOptions, arms: tuple[Arm, ...]) -> tuple[Arm, ...]:
    """The default arms under the stock host kernel and again under the host kernel under test."""
    from dataclasses import replace

    if opts.host_kernel:
        kernel, origin = opts.host_kernel.expanduser().absolute(), {"host_kernel": str(opts.host_kernel)}
    elif opts.host_source or opts.host_patches:
        from ..build import kernel as kernels

        spec, origin = host_under_test_spec(opts)
        kernel = kernels.build_kernel(spec).file("bzImage")
    else:
        return arms
    return (*arms, *(replace(a, name=f"{a.name}-test-host", host_kernel=kernel, origin={**a.origin, **origin})
                     for a in arms))


def _default_logs() -> Path:
    import time

    from ..build.cache import cache_root

    return cache_root() / "logs" / time.strftime("ab-%Y%m%d-%H%M%S") / str(os.getpid())


def build_plan(opts: AbOptions) -> Plan:
    """The A/B's plan from the command line, every input resolved (kernels built) before anything boots."""
    from dataclasses import replace

    from ..model.plan import Plan, validate_arms
    from ..model.workloads import get_workloads
    from ..run.arms import load_arms

    workloads = get_workloads(list(opts.workloads))
    overrides = parse_thresholds(opts.threshold)
    arms = load_arms(opts.arms, build=_build_from_source) if opts.arms else _default_arms(opts)
    if opts.smp is not None:
        arms = tuple(a if a.smp is not None else replace(a, smp=opts.smp) for a in arms)
    arms = _host_kernel_arms(opts, arms)
    if opts.host_base is not None:
        from ..run.runner import stock_host_kernel

        host = stock_host_kernel(opts.host_base)
        arms = tuple(a if a.host_kernel else replace(a, host_kernel=host,
                                                     origin={**a.origin, "host_base": opts.host_base})
                     for a in arms)
    validate_arms(arms)
    kernel_path = guest_kernel(opts.kernel, source=opts.source, patches=opts.patches, no_patches=opts.no_patches,
                               base=opts.base)
    img = guest_image(opts.kernel, opts.image, opts.workloads)
    logs = (opts.logs or _default_logs()).absolute()
    return Plan(workloads=tuple(w.name for w in workloads), arms=arms, runs=opts.runs, kernel=kernel_path,
                image=img.path, logs=logs, thresholds=overrides, retries=opts.retries, memory_mb=opts.memory,
                timeout=opts.timeout, reps_per_boot=opts.reps_per_boot, overlap_boots=opts.overlap_boots)
