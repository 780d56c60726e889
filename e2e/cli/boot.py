"""``pveoi boot``: boot pveoi's guest once, show its kvm-pv-eoi state, run a command (or a shell) over SSH."""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import CapabilityError, ConfigError
from .common import SubParsers, choose_host, guest_image, guest_kernel, host_kernel, stdout_sink, strip_dashdash

if TYPE_CHECKING:
    from ..model.plan import BootPlan

log = logging.getLogger("pveoi")


@dataclass(frozen=True)
class BootOptions:
    """``pveoi boot``'s options; ``cmd`` without the ``--``."""

    accel: str
    host: str
    pv_eoi: str
    kernel: Path | None
    image: Path | None
    smp: int
    memory: int
    append: str
    timeout: float
    boot_timeout: float
    logs: Path | None
    cmd: tuple[str, ...]

    @classmethod
    def from_args(cls, ns: argparse.Namespace) -> BootOptions:
        return cls(accel=ns.accel, host=ns.host, pv_eoi=ns.pv_eoi, kernel=ns.kernel, image=ns.image, smp=ns.smp,
                   memory=ns.memory, append=ns.append, timeout=ns.timeout, boot_timeout=ns.boot_timeout,
                   logs=ns.logs, cmd=strip_dashdash(ns.cmd))


def add_parser(sub: SubParsers) -> None:
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
    p.set_defaults(func=cmd_boot)


def cmd_boot(args: argparse.Namespace) -> int:
    return boot(BootOptions.from_args(args))


def boot(opts: BootOptions) -> int:
    """Boot here (KVM or TCG), or under KVM inside the virtual host; the exit code is CMD's."""
    accel = opts.accel
    host = "direct"
    if accel != "tcg":
        host, why, _ = choose_host(opts.host)
        if accel == "auto":
            accel = "kvm" if host == "direct" else "tcg"
            log.info("accel auto: %s (%s)", accel, why)
    if accel == "kvm" and host == "not-measurable":
        raise CapabilityError(f"no KVM to boot under: {why}", fix="use --accel tcg")
    if accel == "kvm" and host == "virtual" and not opts.cmd:
        raise ConfigError("an interactive shell cannot run inside the virtual KVM host",
                          fix="pass -- CMD, or use --accel tcg")
    from ..model.plan import Arm, BootPlan
    from ..run.boot import run_boot_plan

    plan = BootPlan(arm=Arm("boot", pv_eoi=opts.pv_eoi == "on", append=opts.append),
                    kernel=guest_kernel(opts.kernel), image=guest_image(opts.kernel, opts.image).path, accel=accel,
                    smp=opts.smp, memory_mb=opts.memory, boot_timeout=opts.boot_timeout, timeout=opts.timeout,
                    command=opts.cmd, logs=opts.logs)
    if accel == "kvm" and host == "virtual":
        log.info("booting under KVM inside the virtual KVM host: %s", why)
        return _boot_in_vhost(plan)
    return run_boot_plan(plan)


def _boot_in_vhost(plan: BootPlan) -> int:
    """``plan`` run by the inner runner inside the virtual KVM host (the plan shipped as JSON through the
    results share, as ``pveoi ab``'s is); its guest's logs come back to ``plan.logs``."""
    import json
    import shutil
    from dataclasses import replace

    from ..build.cache import atomic_write
    from ..util.tmpdirs import tempdir
    from ..vm.vhost import run_in_vhost

    with tempdir("vhost") as tmp:
        results = Path(tmp)
        atomic_write(results / "boot.json", json.dumps(replace(plan, logs=results / "logs").to_json(), indent=2))
        argv = [sys.executable, "-m", "e2e.run.inner", "boot", str(results / "boot.json")]
        try:
            rc, _ = run_in_vhost(argv, host_kernel(), results, sink=stdout_sink, keep=plan.files(),
                                 timeout=plan.timeout + plan.boot_timeout + 300, artifacts=plan.logs)
        finally:
            if plan.logs is not None and (results / "logs").is_dir():
                shutil.copytree(results / "logs", plan.logs, dirs_exist_ok=True)
    return rc
