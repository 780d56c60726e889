"""
The ``pveoi`` command line: a thin layer over the library.

``make_parser()`` builds the parser; ``main(argv)`` runs it and returns the
exit code. Only this module prints; errors become one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import CapabilityError, ConfigError, PveoiError

log = logging.getLogger("pveoi")


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is now (a caller or test may swap and close it)."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


#: Loggers whose records may reach the terminal at default verbosity; everything else
#: (paramiko, qemu.qmp, asyncio, py.warnings, ...) goes only to the run's log file, or shows with -vv.
OWN_LOGGERS = ("pveoi", "e2e")


class _OneLineFormatter(logging.Formatter):
    """The terminal's format at default verbosity: the message, never a traceback (those go to the log file)."""

    def format(self, record: logging.LogRecord) -> str:
        if record.exc_info or record.exc_text or record.stack_info:
            record = logging.makeLogRecord({**record.__dict__, "exc_info": None, "exc_text": None,
                                            "stack_info": None})
        return super().format(record)


def _own_records(record: logging.LogRecord) -> bool:
    """Filter for the terminal: only pveoi's own loggers."""
    return record.name.split(".", 1)[0] in OWN_LOGGERS


def _log_file() -> Path | None:
    """This run's log file (``<cache>/logs/pveoi-<time>-<pid>.log``), None if it could not be made."""
    handler = next((h for h in logging.getLogger().handlers if isinstance(h, _RunLogHandler)), None)
    return Path(handler.baseFilename) if handler is not None else None


class _RunLogHandler(logging.FileHandler):
    """The run's log file: everything, with tracebacks.

    A write that fails (a full disk) silences the file for the rest of the run
    instead of printing logging's own "--- Logging error ---" traceback.
    """

    broken = False

    def emit(self, record: logging.LogRecord) -> None:
        if not self.broken:
            super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:
        self.broken = True


def _log_note() -> str:
    """`` (log: FILE)`` for the one-line error, or nothing when this run has no log file."""
    path = _log_file()
    return f" (log: {path})" if path is not None else ""


def _open_run_log() -> _RunLogHandler | None:
    import time

    from ..build.cache import cache_root

    try:
        logs = cache_root() / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        handler = _RunLogHandler(logs / f"pveoi-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log",
                                 encoding="utf-8")
    except (OSError, PveoiError):  # a read-only or unusable cache: no log file, the run goes on
        return None
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))
    handler.setLevel(logging.DEBUG)
    return handler


def _thread_excepthook(args: Any) -> None:
    """An exception that ends a thread: one line on the terminal, the traceback in the log file."""
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "?"
    log.error("unexpected error in thread %s: %s: %s", name, args.exc_type.__name__, args.exc_value,
              exc_info=(args.exc_type, args.exc_value, args.exc_traceback))


def _unraisable_hook(unraisable: Any) -> None:
    """An exception Python cannot raise (in __del__, a finalizer): to the log file, not the terminal."""
    logging.getLogger("pveoi.unraisable").debug(
        "exception ignored in %r: %s", unraisable.object, unraisable.exc_value,
        exc_info=(unraisable.exc_type, unraisable.exc_value, unraisable.exc_traceback)
        if unraisable.exc_value is not None else None)


def _setup_logging(verbose: int) -> None:
    """Route all logging: the terminal gets pveoi's own records, one line each; the run's log file everything.

    At ``-vv`` and above the terminal also gets other libraries' records and
    tracebacks (``-vvv``: their debug records too). Exceptions that end a
    thread, and unraisable ones, are logged instead of printed.

    :param verbose: 0 quiet, 1 default, 2 ``-vv``, 3 ``-vvv``.
    """
    import threading

    level = logging.DEBUG if verbose > 1 else logging.INFO
    handler = _StderrHandler()
    handler.setLevel(level)
    if verbose < 2:
        handler.setFormatter(_OneLineFormatter("pveoi: %(message)s"))
        handler.addFilter(_own_records)
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))
    root = logging.getLogger()
    for old in root.handlers:  # main() may run more than once in a process (tests, the soak): no leaked files
        if isinstance(old, _RunLogHandler):
            old.close()
    root.handlers[:] = [handler]
    run_log = _open_run_log()
    if run_log is not None:
        root.handlers.append(run_log)
    root.setLevel(logging.DEBUG if run_log is not None else level)
    for library in ("paramiko", "qemu.qmp", "asyncio", "py.warnings"):
        library_logger = logging.getLogger(library)
        library_logger.setLevel(logging.INFO if verbose < 3 else logging.DEBUG)
        library_logger.handlers[:] = []  # nothing of theirs writes to the terminal by itself
        library_logger.propagate = True
    logging.captureWarnings(True)
    threading.excepthook = _thread_excepthook
    sys.unraisablehook = _unraisable_hook


# ---------------------------------------------------------------- kernel


def _add_kernel(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("kernel", help="build or fetch a guest/host kernel (cached by content hash)")
    ks = p.add_subparsers(dest="kernel_cmd", required=True)
    b = ks.add_parser("build", help="build a bzImage out of tree (Debian's linux-source-<base> or your tree)",
                      description="Build tinyconfig + kvm_guest.config + pveoi's fragments (+ --config), "
                                  "with the base's guest_patches/<base>/ applied to a private copy. Cached by "
                                  "content hash.")
    src = b.add_mutually_exclusive_group()
    src.add_argument("--source", type=Path, metavar="DIR", help="your kernel tree (never modified); its version "
                     "picks the series (the newest base not above it) unless --base says")
    src.add_argument("--debian", action="store_true", help="Debian's linux-source-<base> (the default)")
    b.add_argument("--base", metavar="BASE", help=f"kernel base: {_bases_help()}")
    b.add_argument("--patches", type=Path, metavar="DIR", help="a quilt-style patch dir instead of the base's "
                   "series (default: guest_patches/<base>/ for the guest flavour, none for host)")
    b.add_argument("--no-patches", action="store_true", help="build without any patches")
    b.add_argument("--config", type=Path, action="append", default=[], metavar="FRAGMENT",
                   help="extra Kconfig fragment, applied last (repeatable)")
    b.add_argument("--flavour", choices=["guest", "host"], default="guest")
    b.add_argument("-j", "--jobs", type=int, default=None, help="make jobs (default: CPU count)")
    b.add_argument("--force", action="store_true", help="rebuild even on a cache hit")
    b.add_argument("--json", action="store_true", help="print the manifest as JSON")
    b.set_defaults(func=_cmd_kernel_build)

    f = ks.add_parser("fetch", help="get a prebuilt kernel: Debian's package, a path or a URL",
                      description="Fetch a kernel without building it; cached like builds.")
    g = f.add_mutually_exclusive_group(required=True)
    g.add_argument("--debian", action="store_true", help="Debian's packaged kernel via apt (with modules)")
    g.add_argument("--path", type=Path, help="a local bzImage")
    g.add_argument("--url", help="a URL; needs --sha256")
    f.add_argument("--package", help="with --debian: the exact package (default: linux-image-cloud-amd64's)")
    f.add_argument("--sha256", help="with --url: the expected sha256")
    f.add_argument("--json", action="store_true", help="print the manifest as JSON")
    f.set_defaults(func=_cmd_kernel_fetch)


def _print_entry(entry_path: Path, manifest: dict[str, object], as_json: bool) -> None:
    if as_json:
        print(json.dumps({"path": str(entry_path), **manifest}, indent=2, sort_keys=True))
    else:
        print(entry_path / "bzImage")


def _cmd_kernel_build(args: argparse.Namespace) -> int:
    from ..build import kernel

    spec = kernel.default_spec(
        flavour=args.flavour, source=args.source, patches_dir=args.patches, fragments=args.config,
        jobs=args.jobs, with_patches=False if args.no_patches else None, base=args.base,
    )
    entry = kernel.build_kernel(spec, force=args.force)
    _print_entry(entry.path, kernel.load_manifest(entry), args.json)
    from .cache import cap_cache

    cap_cache([])
    return 0


def _cmd_kernel_fetch(args: argparse.Namespace) -> int:
    from ..build import kernel

    if args.debian:
        entry = kernel.fetch_debian(args.package)
    elif args.path:
        entry = kernel.fetch_path(args.path)
    else:
        entry = kernel.fetch_url(args.url, args.sha256 or "")
    _print_entry(entry.path, kernel.load_manifest(entry), args.json)
    return 0


# ---------------------------------------------------------------- shared helpers


def _bases_help() -> str:
    from ..build.kernel import BASES, DEFAULT_BASE

    return f"{', '.join(BASES)} (default {DEFAULT_BASE}; Debian's linux-source-<base>)"


def _guest_kernel(args: argparse.Namespace) -> Path:
    """The guest bzImage: --kernel PATH, else the default guest build of --base (a cache hit when built)."""
    from ..build import kernel

    if getattr(args, "kernel", None):
        return kernel.check_kernel_file(Path(args.kernel).expanduser().absolute())
    base = getattr(args, "base", None)
    if getattr(args, "source", None):
        patches = args.patches.expanduser().resolve() if args.patches else None
        spec = kernel.default_spec("guest", source=args.source.expanduser().resolve(), patches_dir=patches,
                                   base=base, with_patches=False if getattr(args, "no_patches", False) else None)
        return kernel.build_kernel(spec).file("bzImage")
    return kernel.build_kernel(kernel.default_spec("guest", base=base)).file("bzImage")


def _host_kernel(args: argparse.Namespace | None = None) -> Path:
    from ..run.runner import stock_host_kernel

    return stock_host_kernel(getattr(args, "host_base", None))


def _image(args: argparse.Namespace) -> Any:
    """The guest image: --image DIR (a built entry, used read-only), else build or hit the cache; for an
    A/B, only the tools its workloads run."""
    from ..build import image

    entry = getattr(args, "image", None)
    tools = image.TOOLS
    if getattr(args, "command", None) == "ab":
        from ..model.workloads import get_workloads

        tools = image.tools_for(n for w in get_workloads(args.workload or ["timer"]) for n in w.needs)
    return image.guest_image(Path(args.kernel) if getattr(args, "kernel", None) else None, entry, tools)


def _stdout_sink(data: bytes) -> None:
    sys.stdout.buffer.write(data)
    sys.stdout.flush()


def _reinvoke(argv: Sequence[str]) -> list[str]:
    """This pveoi run as a command to run inside the virtual host."""
    return [sys.executable, "-m", "e2e.cli", *argv]


def _choose_host(requested: str) -> tuple[str, str, dict[str, Any] | None]:
    """Resolve --host auto|direct|virtual to (direct|virtual|not-measurable, why, doctor report);
    inside the virtual host the answer is always direct (that is what it is for; the caller
    outside records the doctor's report)."""
    from ..run import hostsel

    if os.environ.get("PVEOI_IN_VHOST"):
        return "direct", "running inside the virtual KVM host", None
    return hostsel.choose(requested)


# ---------------------------------------------------------------- image


def _add_image(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("image", help="build the guest initramfs (busybox, dropbear, iperf3, pveoi-load)")
    s = p.add_subparsers(dest="image_cmd", required=True)
    b = s.add_parser("build", help="build (or find in the cache) the guest image")
    b.add_argument("--force", action="store_true", help="rebuild even on a cache hit")
    b.add_argument("--json", action="store_true", help="print the manifest as JSON")
    b.set_defaults(func=_cmd_image_build)


def _cmd_image_build(args: argparse.Namespace) -> int:
    from ..build import image

    img = image.build_image(force=args.force)
    if args.json:
        print(json.dumps({"path": str(img.path), "initrd": str(img.initrd), **dict(img.manifest)}, indent=2,
                         sort_keys=True, default=str))
    else:
        print(img.initrd)
    return 0


# ---------------------------------------------------------------- boot


def _add_boot(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "boot", help="boot the guest, show its kvm-pv-eoi state, run a command over SSH",
        description="Boot pveoi's guest, print the QMP-read kvm-pv-eoi value and the guest's own view, run CMD "
                    "over SSH (or an interactive shell without CMD), exit with CMD's status; nothing is left "
                    "running. With --accel kvm and a host whose KVM cannot run guests, the guest boots under "
                    "real KVM inside the virtual KVM host.",
    )
    p.add_argument("--accel", choices=["kvm", "tcg", "auto"], default="auto",
                   help="auto: kvm when this machine's KVM can run the guest, else tcg")
    p.add_argument("--host", choices=["auto", "direct", "virtual"], default="auto",
                   help="with --accel kvm: this machine's KVM (direct) or the virtual KVM host")
    p.add_argument("--pv-eoi", choices=["on", "off"], default="on", help="QEMU's kvm-pv-eoi CPU property")
    k = p.add_mutually_exclusive_group()
    k.add_argument("--kernel", type=Path, metavar="PATH", help="a guest bzImage")
    k.add_argument("--kernel-build", action="store_true", help="build pveoi's guest kernel (the default)")
    p.add_argument("--image", type=Path, metavar="DIR", help="a built guest image entry (default: build pveoi's)")
    p.add_argument("--smp", type=int, default=1)
    p.add_argument("--memory", type=int, default=256, metavar="MIB")
    p.add_argument("--append", default="", help="extra guest kernel parameters")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds for CMD")
    p.add_argument("--boot-timeout", type=float, default=120.0)
    p.add_argument("--logs", type=Path, help="keep console and QEMU logs here")
    p.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD", help="command to run in the guest")
    p.set_defaults(func=_cmd_boot)


def _strip_dashdash(cmd: list[str]) -> list[str]:
    return cmd[1:] if cmd and cmd[0] == "--" else cmd


def _cmd_boot(args: argparse.Namespace) -> int:
    from ..measure.guest_counters import STATE_COMMAND, GuestState
    from ..run.ab import Arm, check_guest_arm, check_qmp_arm
    from ..vm.argv import DEFAULT_APPEND, MachineSpec
    from ..vm.machine import Machine

    cmd = _strip_dashdash(args.cmd)
    accel = args.accel
    host = "direct"
    if accel != "tcg":
        host, why, _ = _choose_host(args.host)
        if accel == "auto":
            accel = "kvm" if host == "direct" else "tcg"
            log.info("accel auto: %s (%s)", accel, why)
    if accel == "kvm" and host == "not-measurable":
        raise CapabilityError(f"no KVM to boot under: {why}", fix="use --accel tcg")
    if accel == "kvm" and host == "virtual":
        if not cmd:
            raise ConfigError("an interactive shell cannot run inside the virtual KVM host",
                              fix="pass -- CMD, or use --accel tcg")
        log.info("booting under KVM inside the virtual KVM host: %s", why)
        kernel_path = _guest_kernel(args)
        img = _image(args)
        inner = ["boot", "--accel", "kvm", "--pv-eoi", args.pv_eoi, "--kernel", str(kernel_path),
                 "--image", str(img.path), "--smp", str(args.smp), "--memory", str(args.memory),
                 "--append", args.append, "--timeout", str(args.timeout),
                 "--boot-timeout", str(args.boot_timeout), "--", *cmd]
        from ..util.tmpdirs import tempdir
        from ..vm.vhost import run_in_vhost

        with tempdir("vhost") as results:
            rc, _ = run_in_vhost(_reinvoke(inner), _host_kernel(), Path(results), sink=_stdout_sink,
                                 timeout=args.timeout + args.boot_timeout + 300, artifacts=args.logs)
        return rc
    kernel_path = _guest_kernel(args)
    img = _image(args)
    spec = MachineSpec(kernel=kernel_path, initrd=img.initrd, append=f"{DEFAULT_APPEND} {args.append}".strip(),
                       accel=accel, pv_eoi=args.pv_eoi == "on", smp=args.smp, memory_mb=args.memory,
                       paused=True, name="pveoi-boot")
    from ..build.image import READY_PATTERN

    arm = Arm("boot", pv_eoi=args.pv_eoi == "on", append=args.append)
    with Machine(spec, READY_PATTERN, artifacts=args.logs) as m:
        readback = m.pv_eoi_readback()
        kvm = m.query_kvm()
        check_qmp_arm(arm, readback, kvm["enabled"])
        m.resume()
        ready = m.wait_ready(args.boot_timeout)
        log.info("guest ready (%s)", ready)
        ssh = m.ssh(img.identity.private_key, img.host_key_line)
        state = GuestState.parse(ssh.run(STATE_COMMAND, timeout=30).check().stdout)
        check_guest_arm(arm, state, kvm["enabled"])
        note = "" if kvm["enabled"] else " (TCG: QEMU filters KVM paravirtual CPUID features, so it reads off)"
        print(f"kvm-pv-eoi: requested {args.pv_eoi}, QMP reads {', '.join('on' if r else 'off' for r in readback)}"
              f"{note}", file=sys.stderr)
        if state.pveoi is None:
            why = ("not a KVM guest: the guest patch's file exists only on KVM" if not kvm["enabled"]
                   else "guest kernel without guest_patches/0001")
            print(f"guest view: no /sys/kernel/debug/kvm_pv_eoi ({why})", file=sys.stderr)
        else:
            for c in state.pveoi.values():
                print(f"guest view: cpu{c.cpu} feature={int(c.feature)} enabled={int(c.enabled)}", file=sys.stderr)
        if not cmd:
            return ssh.interactive()

        def stream(kind: str, data: bytes) -> None:
            out = sys.stdout if kind == "stdout" else sys.stderr
            out.buffer.write(data)
            out.flush()

        res = ssh.run(cmd, timeout=args.timeout, on_output=stream)
        return res.exit_status


# ---------------------------------------------------------------- vhost


def _add_vhost(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "vhost", help="run a command inside the virtual KVM host (TCG L1 with real kvm_amd)",
        description="Boot the virtual KVM host (a TCG QEMU with -cpu max, exposing SVM, running pveoi's host "
                    "kernel with KVM) with this machine's root shared read-only, run CMD inside as root, stream "
                    "its output and exit with its status.",
    )
    p.add_argument("--cpus", type=int, default=2)
    p.add_argument("--memory", type=int, default=2048, metavar="MIB")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds for the whole run")
    p.add_argument("--results", type=Path, help="writable dir shared into the host (default: a temp dir)")
    p.add_argument("--logs", type=Path, help="keep the virtual host's console and QEMU logs here")
    p.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD")
    p.set_defaults(func=_cmd_vhost)


def _cmd_vhost(args: argparse.Namespace) -> int:
    import contextlib

    from ..util.tmpdirs import tempdir
    from ..vm.vhost import run_in_vhost

    cmd = _strip_dashdash(args.cmd)
    if not cmd:
        raise ConfigError("no command given", fix="pveoi vhost -- CMD ...")
    with contextlib.ExitStack() as stack:
        results = args.results or stack.enter_context(tempdir("vhost"))
        rc, host = run_in_vhost(cmd, _host_kernel(), results, cpus=args.cpus, memory_mb=args.memory,
                                timeout=args.timeout, sink=_stdout_sink, artifacts=args.logs)
    log.info("virtual host: booted in %.1fs, KVM %s", host.boot_seconds or 0.0,
             " ".join(f"{k}={v}" for k, v in host.kvm_facts.items()))
    return int(rc)


# ---------------------------------------------------------------- ab


def _add_ab(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
    gk = p.add_mutually_exclusive_group()
    gk.add_argument("--kernel", type=Path, metavar="PATH", help="guest bzImage (default: build pveoi's)")
    gk.add_argument("--source", type=Path, metavar="DIR",
                    help="build the guest kernel from your tree (incremental; guest_patches/ unless --patches)")
    p.add_argument("--patches", type=Path, metavar="DIR", help="with --source: a quilt patch dir instead of "
                   "the base's guest_patches/<base>/")
    p.add_argument("--no-patches", action="store_true", help="with --source: build without pveoi's patches "
                   "(no skipped/written counters or markers: the loose host-only agreement)")
    p.add_argument("--base", metavar="BASE", help=f"the guest kernel's base: {_bases_help()}; with --source, "
                   "the series to apply instead of the one the tree's version picks")
    p.add_argument("--host-base", metavar="BASE", help="the virtual host's own kernel base (pveoi's host "
                   "flavour built from Debian's linux-source-<base>; default 6.1)")
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
    p.add_argument("--retries", type=int, default=1, metavar="N",
                   help="retry a run that failed on infrastructure (boot deadline, QMP, SSH, QEMU or the virtual "
                        "host gone) on a fresh guest up to N times; findings (a panic, a kernel that did not "
                        "enable PV EOI) are never retried; every retry is recorded (default 1)")
    p.set_defaults(func=_cmd_ab)

    a = sub.add_parser(
        "analyze", help="recompute metrics, comparisons and verdicts from a saved result (boots nothing)",
        description="Read a result document (`pveoi ab --json`, any schema), draw every conclusion anew from its "
                    "raw counts under today's thresholds (and --threshold overrides), print the table. Exit codes "
                    "as for `pveoi ab`.")
    a.add_argument("result", type=Path, metavar="RESULT.json")
    a.add_argument("--threshold", action="append", default=[], metavar="KEY=VALUE")
    a.add_argument("--json", type=Path, metavar="PATH", help="write the recomputed result here")
    a.set_defaults(func=_cmd_analyze)


def _parse_thresholds(items: Sequence[str]) -> dict[str, float]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        try:
            out[key.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise ConfigError(f"bad --threshold {item!r}", fix="write KEY=NUMBER, e.g. min_eoi_saved_per_interrupt=0.8")
    return out


def _build_from_source(source: Path | None, patches: Path | None, flavour: str, base: str | None) -> Path:
    """A kernel built by pveoi from a user's tree or Debian's source of ``base`` (a cache hit when built
    before)."""
    from ..build import kernel

    spec = kernel.default_spec(flavour, source=source, patches_dir=patches, base=base)
    return kernel.build_kernel(spec).file("bzImage")


def _check_arm_kernel(source: Path | None, patches: Path | None, flavour: str, base: str | None) -> Path:
    """What an arms file's kernel table would build, checked without building it (a stand-in path that
    tells arms apart the way the built kernels would)."""
    from ..build import kernel

    kernel.default_spec(flavour, source=source, patches_dir=patches, base=base)  # base, version, source package
    return Path(f"<{flavour} kernel of {source or 'debian'} {patches or ''} {base or ''}>")


def _check_outputs(args: argparse.Namespace) -> None:
    """Make the --json parent and --history dirs now, so a bad path fails before anything boots."""
    for where in (args.json.expanduser().absolute().parent if args.json else None,
                  args.history.expanduser().absolute() if getattr(args, "history", None) else None):
        if where is None:
            continue
        try:
            where.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ConfigError(f"cannot create {where}: {err.strerror}",
                              fix="pick a writable path for --json/--history") from err
        if not os.access(where, os.W_OK):
            raise ConfigError(f"{where} is not writable", fix="pick a writable path for --json/--history")
    if args.json and args.json.expanduser().is_dir():
        raise ConfigError(f"--json {args.json} is a directory", fix="pass a file path, e.g. results/ab.json")


def _check_inputs(args: argparse.Namespace) -> None:
    """Every input of ``pveoi ab`` that can be checked cheaply, checked before the doctor's probe boot,
    any build or any boot (a kernel an arm builds from source is only looked at here).

    :raises ConfigError: naming the input and the fix.
    """
    from ..analysis import compare as analysis
    from ..model.plan import validate_arms
    from ..model.workloads import get_workloads
    from ..run import ab

    overrides = _parse_thresholds(args.threshold)
    for w in get_workloads(args.workload or ["timer"]):
        analysis.load_thresholds(w.name, overrides)  # reject unknown keys
    if args.runs < 1:
        raise ConfigError("--runs must be at least 1", fix="pass --runs 3")
    if args.retries < 0:
        raise ConfigError("--retries must be 0 or more", fix="pass --retries 1")
    if args.smp is not None and not 1 <= args.smp <= 64:
        raise ConfigError(f"--smp {args.smp} is not in 1..64", fix="pass e.g. --smp 2")
    _check_outputs(args)
    if args.kernel:
        from ..build import kernel

        kernel.check_kernel_file(Path(args.kernel).expanduser().absolute())
    if args.image:
        from ..build import image

        image.load_image(args.image)
    if args.patches is not None and args.source is None:
        raise ConfigError("--patches goes with --source", fix="pass --source DIR too, or drop --patches")
    if args.no_patches and (args.source is None or args.patches is not None):
        raise ConfigError("--no-patches goes with --source (and not with --patches)",
                          fix="pass --source DIR --no-patches")
    _check_bases(args)
    for d, what in ((args.source, "--source"), (args.patches, "--patches"), (args.host_source, "--host-source"),
                    (args.host_patches, "--host-patches")):
        if d is not None and not d.expanduser().is_dir():
            raise ConfigError(f"{what} {d} is not a directory", fix=f"pass a directory to {what}")
    if args.host_kernel is not None and not args.host_kernel.expanduser().is_file():
        raise ConfigError(f"--host-kernel {args.host_kernel} not found",
                          fix="build one: pveoi kernel build --flavour host --source DIR")
    if args.host == "direct" and (args.host_kernel or args.host_source or args.host_patches):
        raise ConfigError("a host kernel under test can only be booted by the virtual KVM host",
                          fix="add --host virtual (a hardware host cannot swap its kernel without a reboot)")
    if args.arms and (args.host_kernel or args.host_source or args.host_patches):
        raise ConfigError("--host-kernel/--host-source/--host-patches make the arms themselves; with --arms, "
                          "set host_kernel in the arms file", fix="use one or the other")
    if args.aa and args.arms:
        raise ConfigError("--aa makes the arms itself", fix="drop --arms, or write replica_of in the arms file")
    validate_arms(ab.load_arms(args.arms, build=_check_arm_kernel) if args.arms else _default_arms(args))


def _default_arms(args: argparse.Namespace) -> tuple[Any, ...]:
    from ..model.plan import AA_ARMS, DEFAULT_ARMS

    return AA_ARMS if getattr(args, "aa", False) else DEFAULT_ARMS


def _check_bases(args: argparse.Namespace) -> None:
    """--base/--host-base name bases pveoi has, whose Debian source is installed where it will be built;
    a --source tree's version has a series (or --patches/--no-patches say otherwise).

    :raises ConfigError: one line naming the fix, before anything is built or booted.
    """
    from ..build import kernel

    if args.base is not None and args.kernel is not None:
        raise ConfigError("--base picks the kernel pveoi builds; --kernel brings your own",
                          fix="drop one of --base and --kernel")
    if args.host_base is not None and (args.host_kernel or args.host_source):
        raise ConfigError("--host-base picks the virtual host's own kernel; --host-kernel/--host-source add a "
                          "host kernel under test", fix="drop --host-base, or the host kernel under test")
    if args.host_base is not None and args.host == "direct":
        raise ConfigError("--host-base picks the virtual host's kernel; --host direct runs on this machine's",
                          fix="add --host virtual or drop --host-base")
    if args.source is not None:
        tree = kernel.KernelSource.tree(args.source)
        if args.base is not None:
            kernel.base_named(args.base)
        elif args.patches is None and not args.no_patches:
            kernel.base_for_version(kernel.tree_version(tree.path))
    elif args.kernel is None:
        kernel.KernelSource.debian(args.base)
    if args.host_base is not None:
        kernel.KernelSource.debian(args.host_base)


def _host_kernel_arms(args: argparse.Namespace, arms: tuple[Any, ...]) -> tuple[Any, ...]:
    """The default arms under the stock host kernel and again under the host kernel under test."""
    from dataclasses import replace

    if args.host_kernel:
        kernel, origin = args.host_kernel.expanduser().absolute(), {"host_kernel": str(args.host_kernel)}
    elif args.host_source or args.host_patches:
        from ..build import kernel as kernels

        source = args.host_source.expanduser().absolute() if args.host_source else None
        patches = args.host_patches.expanduser().absolute() if args.host_patches else None
        spec = kernels.default_spec("host", source=source, patches_dir=patches)
        kernel = kernels.build_kernel(spec).file("bzImage")
        origin = {k: str(v) for k, v in (("host_source", source), ("host_patches", patches)) if v is not None}
    else:
        return arms
    return (*arms, *(replace(a, name=f"{a.name}-test-host", host_kernel=kernel, origin={**a.origin, **origin})
                     for a in arms))


def _plan(args: argparse.Namespace) -> Any:
    """The A/B's plan from the command line, every input resolved (kernels built) before anything boots."""
    from dataclasses import replace

    from ..model.plan import Plan, validate_arms
    from ..model.workloads import get_workloads
    from ..run import ab

    workloads = get_workloads(args.workload or ["timer"])
    overrides = _parse_thresholds(args.threshold)
    arms = ab.load_arms(args.arms, build=_build_from_source) if args.arms else _default_arms(args)
    if args.smp is not None:
        arms = tuple(a if a.smp is not None else replace(a, smp=args.smp) for a in arms)
    arms = _host_kernel_arms(args, arms)
    if args.host_base is not None:
        from ..run.runner import stock_host_kernel

        host = stock_host_kernel(args.host_base)
        arms = tuple(a if a.host_kernel else replace(a, host_kernel=host,
                                                     origin={**a.origin, "host_base": args.host_base})
                     for a in arms)
    validate_arms(arms)
    kernel_path = _guest_kernel(args)
    img = _image(args)
    logs = (args.logs or _default_logs()).absolute()
    return Plan(workloads=tuple(w.name for w in workloads), arms=arms, runs=args.runs, kernel=kernel_path,
                image=img.path, logs=logs, thresholds=overrides, retries=args.retries, memory_mb=args.memory,
                timeout=args.timeout)


def _cmd_ab(args: argparse.Namespace) -> int:
    from ..model.result import Result
    from ..report import results
    from ..run import ab
    from ..run.runner import measure

    _check_inputs(args)
    host, why, doctor_report = _choose_host(args.host)
    log.info("host: %s (%s)", host, why)
    runner = results.runner_identity(ab.runner_info(ab.cpu_vendor()), doctor_report)  # the machine running pveoi
    if host == "not-measurable":
        res = results.not_measurable(why, args.runs).with_(runner=runner)
        results.emit(res, args.json, args.history)
        print(results.format_table(res))
        return 2
    if host == "direct" and (args.host_kernel or args.host_source or args.host_patches):
        raise ConfigError("a host kernel under test can only be booted by the virtual KVM host",
                          fix="add --host virtual (a hardware host cannot swap its kernel without a reboot)")
    plan = _plan(args)
    from ..host import conditions

    started = conditions.snapshot()
    if host == "direct" and any(a.host_kernel for a in plan.arms):
        raise ConfigError("a host kernel under test can only be booted by the virtual KVM host",
                          fix="add --host virtual (a hardware host cannot swap its kernel without a reboot)")
    from ..build.cache import Cache

    try:
        with Cache().hold(plan.files()):  # no prune removes a kernel or image this A/B boots
            measured: Result = measure(plan, host, why, sink=_stdout_sink)
    except ConfigError:
        raise  # a mistake in the input, not a night without a measurement
    except PveoiError as err:
        if args.json or args.history:  # the history shows this run measured nothing, and why
            runner = {**runner, "conditions": conditions.summarize(started, conditions.snapshot())}
            failed = results.error_result(err, host, why, args.runs).with_(runner=runner, plan=plan)
            try:
                results.emit(failed, args.json, args.history)
            except (OSError, PveoiError) as write_err:  # e.g. the disk is full: the first error is the news
                log.warning("could not record the error in the results: %s", write_err)
        raise
    runner = {**runner, "conditions": conditions.summarize(started, conditions.snapshot())}
    res = measured.with_(runner=runner, kernel=results.kernel_manifest(plan.kernel),
                    image={"path": str(plan.image)}, logs=str(plan.logs))
    results.emit(res, args.json, args.history)
    results.write_ktap(args.ktap, [res])
    print(results.format_table(res))
    from .cache import cap_cache

    cap_cache([args.history])
    return res.exit_code


def _cmd_analyze(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from ..model.plan import DEFAULT_ARMS, Plan
    from ..report import results
    from ..run import ab

    res = results.load(args.result.expanduser())
    overrides = _parse_thresholds(args.threshold)
    plan = res.plan
    if plan is None:  # a schema 1/2 result: its arms and workloads are in the document
        plan = Plan(workloads=tuple(res.workloads), arms=tuple(res.arms.values()) or DEFAULT_ARMS,
                    runs=res.runs_per_arm or 0, kernel=Path(str(res.kernel.get("path", ""))),
                    image=Path(str(res.image.get("path", ""))), logs=Path(res.logs or ""))
    plan = replace(plan, thresholds={**plan.thresholds, **overrides})
    if not res.runs:
        raise ConfigError(f"{args.result} holds no runs to analyze (verdict {res.verdict})",
                          fix="pass a result of an A/B that measured something")
    again = ab.reanalyze(res, plan)
    if args.json:
        results.emit(again, args.json, None)
    print(results.format_table(again))
    return again.exit_code


def _default_logs() -> Path:
    import time

    from ..build.cache import cache_root

    return cache_root() / "logs" / time.strftime("ab-%Y%m%d-%H%M%S") / str(os.getpid())


# ---------------------------------------------------------------- bisect


def _add_bisect(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from ..model.workloads import WORKLOADS

    p = sub.add_parser(
        "bisect", help="find the commit that broke PV EOI: git bisect run with the A/B as the predicate",
        description="Bisect --good..--bad of your kernel tree in a temporary git worktree (your checkout is never "
                    "touched). Each step builds that revision incrementally and runs the A/B: good if it passes "
                    "and PV EOI's saving did not drop from the good revision's, bad if it fails or dropped, "
                    "skipped if it does not build or cannot be measured; infrastructure failures (after retries) "
                    "abort. Prints the first bad commit; every step's result goes to --history.")
    p.add_argument("--source", type=Path, required=True, metavar="DIR", help="your kernel git tree")
    p.add_argument("--good", required=True, metavar="REV")
    p.add_argument("--bad", required=True, metavar="REV")
    p.add_argument("--host", action="store_true", help="bisect the host (KVM) kernel (through the virtual host)")
    p.add_argument("--patches", type=Path, metavar="DIR", help="a quilt patch dir applied on every revision")
    p.add_argument("--workload", default="timer", choices=sorted(WORKLOADS))
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--retries", type=int, default=1)
    p.add_argument("--threshold", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--history", type=Path, metavar="DIR", help="every step's result (default: under the cache)")
    p.add_argument("--logs", type=Path, metavar="DIR")
    p.set_defaults(func=_cmd_bisect)


def _cmd_bisect(args: argparse.Namespace) -> int:
    import time
    from dataclasses import replace

    from ..analysis.compare import load_thresholds
    from ..build.cache import cache_root
    from ..run import bisect

    overrides = _parse_thresholds(args.threshold)
    load_thresholds(args.workload, overrides)
    if args.runs < 1 or args.retries < 0:
        raise ConfigError("--runs must be at least 1 and --retries at least 0", fix="pass --runs 3 --retries 1")
    if args.patches is not None and not args.patches.is_dir():
        raise ConfigError(f"--patches {args.patches} is not a directory", fix="pass a quilt patch directory")
    stamp = time.strftime("bisect-%Y%m%d-%H%M%S")
    spec = bisect.resolve(bisect.BisectSpec(
        source=args.source.expanduser().resolve(), good=args.good, bad=args.bad, workload=args.workload,
        runs=args.runs, retries=args.retries, thresholds=overrides, host=args.host,
        patches=args.patches.expanduser().resolve() if args.patches else None,
        history=(args.history or cache_root() / "bisect" / stamp).expanduser().absolute(),
        logs=(args.logs or cache_root() / "logs" / stamp).expanduser().absolute()))
    host, why, _ = _choose_host("virtual" if args.host else "auto")
    if host == "not-measurable":
        raise CapabilityError(f"PV EOI cannot be measured here: {why}", fix="run pveoi doctor")
    outcome = bisect.run(replace(spec, host_choice=(host, why)))
    for rev, code, reason in outcome.steps:
        word = {0: "good", 1: "bad", 125: "skip"}.get(code, "abort")
        print(f"{rev[:12]} {word}: {reason}")
    print(f"first bad commit: {outcome.first_bad} {outcome.subject}")
    print(f"history: {spec.history}")
    return 0


# ---------------------------------------------------------------- doctor


def _add_doctor(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("doctor", help="can this machine measure PV EOI, and how?",
                       description="Probe the KVM backend (vmx/svm/pvm/none), a probe boot under -enable-kvm, "
                                   "APICv/AVIC, perf and its permissions, QEMU and kvm-pv-eoi; decide direct, "
                                   "virtual or not measurable.")
    p.add_argument("--json", action="store_true", help="the stable machine-readable report")
    p.add_argument("--no-probe", action="store_true", help="skip the probe boot")
    p.add_argument("--always-probe", action="store_true",
                   help="run the probe boot even where the backend cannot run guests, to see the failure")
    p.set_defaults(func=_cmd_doctor)


def _cmd_doctor(args: argparse.Namespace) -> int:
    from ..host.doctor import format_text, run_doctor
    from ..run.hostsel import probe_boot

    report = run_doctor(probe_boot=None if args.no_probe else probe_boot(), always_probe=args.always_probe)
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
    else:
        sys.stdout.write(format_text(report))
    return 0 if report["decision"]["host"] != "not-measurable" else 2


# ---------------------------------------------------------------- main


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pveoi",
        description="End-to-end tests for KVM's paravirtual End-Of-Interrupt (PV EOI): build a guest, "
                    "boot it with kvm-pv-eoi=on and =off, count kvm:* exits with perf, assert the saving.",
    )
    parser.add_argument("--version", action="version", version=f"pveoi {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=1, help="more output (repeatable)")
    parser.add_argument("-q", "--quiet", action="store_true", help="only errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_kernel(sub)
    _add_image(sub)
    _add_boot(sub)
    _add_vhost(sub)
    _add_ab(sub)
    _add_doctor(sub)
    _add_bisect(sub)
    from .cache import add_parser as _add_cache

    _add_cache(sub)
    from ..report.render import add_parser as _add_report

    _add_report(sub)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM (a CI job's timeout, systemd): unwinds like Ctrl-C, so everything started is stopped."""


def _on_sigterm(signum: int, frame: object) -> None:
    import signal

    # Once pveoi is stopping, further SIGTERMs (a supervisor that signals twice) must not cut
    # the unwinding (QMP quit, temp dir removal) short. Not SIG_IGN: an ignored signal stays
    # ignored across exec, and a process started while unwinding must still stop on SIGTERM.
    signal.signal(signal.SIGTERM, _ignore_sigterm)
    raise Terminated()


def _ignore_sigterm(signum: int, frame: object) -> None:
    """SIGTERM again while stopping: ignored (nothing is done here, not even logging), the cleanup goes on."""


def main(argv: Sequence[str] | None = None) -> int:
    import signal

    parser = make_parser()
    args = parser.parse_args(argv)
    _setup_logging(0 if args.quiet else args.verbose)
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        from ..util.tmpdirs import reap_stale

        reap_stale()  # temp dirs of a pveoi that was SIGKILLed
        return int(args.func(args))
    except PveoiError as err:
        log.debug("stopped on %s", type(err).__name__, exc_info=True)  # the traceback: log file (and -vv)
        print(f"pveoi: error: {err}{_log_note()}", file=sys.stderr)
        return err.exit_code
    except OSError as err:  # an I/O failure no layer below named: still one line, never a traceback
        log.debug("unexpected OSError", exc_info=True)
        where = f" ({err.filename})" if err.filename else ""
        print(f"pveoi: error: {err.strerror or err}{where}; fix: check that path and its disk (-vv shows where)"
              f"{_log_note()}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        if isinstance(err, Terminated):
            print("pveoi: terminated (SIGTERM); everything started was stopped", file=sys.stderr)
            return 143
        print("pveoi: interrupted; everything started was stopped", file=sys.stderr)
        return 130
    finally:
        if signal.getsignal(signal.SIGTERM) is _ignore_sigterm:
            # Stopped after a SIGTERM; the process exits 143 next. SIG_IGN now (nothing is
            # started any more): interpreter shutdown resets Python-level handlers to the
            # default, which would let a further SIGTERM kill it on the way out.
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        else:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())

