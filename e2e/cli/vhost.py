"""``pveoi vhost``: run a command as root inside the virtual KVM host, its output streamed, its status returned."""

from __future__ import annotations

import argparse
import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from .common import SubParsers, host_kernel, stdout_sink, strip_dashdash

log = logging.getLogger("pveoi")


@dataclass(frozen=True)
class VhostOptions:
    """``pveoi vhost``'s options; ``cmd`` without the ``--``."""

    cpus: int
    memory: int
    timeout: float
    results: Path | None
    logs: Path | None
    cmd: tuple[str, ...]
    kernel: Path | None = None

    @classmethod
    def from_args(cls, ns: argparse.Namespace) -> VhostOptions:
        return cls(cpus=ns.cpus, memory=ns.memory, timeout=ns.timeout, results=ns.results, logs=ns.logs,
                   cmd=strip_dashdash(ns.cmd), kernel=ns.kernel)


def add_parser(sub: SubParsers) -> None:
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
    p.add_argument("--kernel", type=Path, metavar="PATH",
                   help="the virtual host's kernel (default: pveoi's own); one with virtio-PCI, 9p and "
                        "KVM_AMD as modules boots with an initramfs that loads them, e.g. Debian's "
                        "(pveoi kernel fetch --debian --package linux-image-amd64)")
    p.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD")
    p.set_defaults(func=cmd_vhost)


def cmd_vhost(args: argparse.Namespace) -> int:
    return vhost(VhostOptions.from_args(args))


def vhost(opts: VhostOptions) -> int:
    """Boot the virtual host, run ``opts.cmd`` in it, tear it down; CMD's exit status."""
    from ..util.tmpdirs import tempdir
    from ..vm.vhost import run_in_vhost

    if not opts.cmd:
        raise ConfigError("no command given", fix="pveoi vhost -- CMD ...")
    kernel = opts.kernel.expanduser().absolute() if opts.kernel is not None else None
    if kernel is not None:
        from ..build.vhostkernel import host_kernel_needs

        host_kernel_needs(kernel)  # before any boot: a kernel that cannot be the host's, in one line
    with contextlib.ExitStack() as stack:
        results = opts.results or stack.enter_context(tempdir("vhost"))
        rc, host = run_in_vhost(list(opts.cmd), kernel or host_kernel(), results, cpus=opts.cpus, memory_mb=opts.memory,
                                timeout=opts.timeout, sink=stdout_sink, artifacts=opts.logs)
    log.info("virtual host: booted in %.1fs, KVM %s", host.boot_seconds or 0.0,
             " ".join(f"{k}={v}" for k, v in host.kvm_facts.items()))
    return int(rc)
