"""
Trials of the virtual host itself (issue 24: what lowers nested TCG's crash rate), set from the
environment and not for everyday use: L1's ``-cpu`` model, extra L1 kernel parameters, L1's own
kernel in place of pveoi's own, L1's TCG threading and translation cache, and the CPUs of
this machine L1 runs on. Each is checked before anything
boots, since nothing here may reach QEMU's or the kernel's command line unchecked;
docs/virtual-host.md.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ..build.vhostkernel import host_kernel_needs
from ..errors import ConfigError

#: Environment variables for trials of the virtual host itself (issue 24: what lowers nested TCG's crash
#: rate), not for everyday use: L1's ``-cpu`` model, extra L1 kernel parameters, and L1's own kernel
#: (e.g. a packaged one, :mod:`e2e.build.vhostkernel`) in place of pveoi's own.
TRIAL_CPU, TRIAL_APPEND, TRIAL_KERNEL = "PVEOI_VHOST_CPU", "PVEOI_VHOST_APPEND", "PVEOI_VHOST_KERNEL"
#: L1's TCG threading: ``multi`` (pveoi's own: a host thread per L1 vCPU, running at once) or ``single`` (one
#: host thread takes L1's vCPUs in turn, so no two of them ever run at the same time).
TRIAL_TCG = "PVEOI_VHOST_TCG"
TCG_THREADINGS = ("multi", "single")
#: The CPUs of this machine L1's QEMU may run on (every thread of it): with one, L1's vCPU threads take
#: turns as this machine's scheduler gives them (milliseconds), never running at once.
TRIAL_HOST_CPUS = "PVEOI_VHOST_HOST_CPUS"
#: The size of L1's TCG translation cache in MiB (QEMU's ``-accel tcg,tb-size=``; unset: QEMU's default, 1 GiB
#: on this machine): a smaller one drops old translations wholesale each time it fills, among them those of
#: memory earlier guests ran code from, which slow the next guest's boot (docs/measurements.md).
TRIAL_TB_SIZE = "PVEOI_VHOST_TB_SIZE"
TB_SIZE_RANGE = (16, 2048)  # QEMU caps the cache at 2 GiB on x86-64 hosts
_CPU_MODEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+=,-]*")
_KERNEL_PARAM = re.compile(r"[A-Za-z0-9_.-]+(=[A-Za-z0-9_.,:/+-]+)?")


@dataclass(frozen=True)
class Trial:
    """A virtual-host trial as the environment sets it: the one reader of the variables above, so the
    check before any boot, the virtual host's launch and the result's record all see the same values.
    ``Trial()`` is pveoi's own virtual host (no trial)."""

    cpu: str = "max"
    append: tuple[str, ...] = ()
    kernel: Path | None = None
    tcg_thread: str = "multi"
    host_cpus: tuple[int, ...] = ()
    tb_size_mb: int | None = None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Trial:
        """Every trial variable of ``environ``, checked.

        :raises ConfigError: the first value that is refused, named with the way out.
        """
        cpu, append = trial_settings(environ)
        return cls(cpu=cpu, append=append, kernel=trial_kernel(environ), tcg_thread=trial_tcg(environ),
                   host_cpus=trial_host_cpus(environ), tb_size_mb=trial_tb_size(environ))

    @property
    def active(self) -> bool:
        """Whether any setting differs from pveoi's own virtual host."""
        return self != Trial()


def trial_settings(environ: Mapping[str, str]) -> tuple[str, tuple[str, ...]]:
    """L1's ``-cpu`` model and extra kernel parameters as a trial's environment sets them
    (:data:`TRIAL_CPU`, :data:`TRIAL_APPEND`; unset: ``max`` and none).

    :raises ConfigError: a value that is no CPU model or no plain kernel parameters (nothing here may
        reach QEMU's or the kernel's command line unchecked).
    """
    cpu = environ.get(TRIAL_CPU, "").strip() or "max"
    if not _CPU_MODEL.fullmatch(cpu):
        raise ConfigError(f"{TRIAL_CPU}={cpu!r} is not a QEMU CPU model",
                          fix=f"unset {TRIAL_CPU}, or name a model with SVM (qemu-system-x86_64 -cpu help), e.g. EPYC")
    words = tuple(environ.get(TRIAL_APPEND, "").split())
    bad = [w for w in words if not _KERNEL_PARAM.fullmatch(w) or w.split("=", 1)[0] in ("init", "root", "--")]
    if bad:
        raise ConfigError(f"{TRIAL_APPEND} holds what is no plain kernel parameter: {' '.join(bad)}",
                          fix=f"unset {TRIAL_APPEND}, or give NAME=VALUE words, e.g. kvm_amd.npt=0")
    return cpu, words


def trial_kernel(environ: Mapping[str, str]) -> Path | None:
    """The virtual host's own kernel as a trial's environment names it (:data:`TRIAL_KERNEL`), checked
    before any boot (:func:`e2e.build.vhostkernel.host_kernel_needs`); None when unset.

    :raises ConfigError: not a file, or no kernel the virtual host can boot (named, with the way out).
    """
    value = environ.get(TRIAL_KERNEL, "").strip()
    if not value:
        return None
    path = Path(value).expanduser().absolute()
    if not path.is_file():
        raise ConfigError(f"{TRIAL_KERNEL}={value} is not a file",
                          fix=f"unset {TRIAL_KERNEL}, or give a bzImage (pveoi kernel fetch --debian --package "
                              "linux-image-amd64 prints one)")
    host_kernel_needs(path)
    return path


def trial_tcg(environ: Mapping[str, str]) -> str:
    """L1's TCG threading as a trial's environment sets it (:data:`TRIAL_TCG`; unset: ``multi``).

    :raises ConfigError: anything but :data:`TCG_THREADINGS`.
    """
    value = environ.get(TRIAL_TCG, "").strip() or "multi"
    if value not in TCG_THREADINGS:
        raise ConfigError(f"{TRIAL_TCG}={value!r} is not one of {', '.join(TCG_THREADINGS)}",
                          fix=f"unset {TRIAL_TCG}, or set it to single (L1's vCPUs taken in turn by one host thread)")
    return value


def trial_host_cpus(environ: Mapping[str, str]) -> tuple[int, ...]:
    """The CPUs of this machine L1's QEMU is confined to, as a trial's environment names them
    (:data:`TRIAL_HOST_CPUS`, e.g. ``0`` or ``0,1``); unset: none (the scheduler's choice).

    :raises ConfigError: not a comma list of CPU numbers this process may run on.
    """
    value = environ.get(TRIAL_HOST_CPUS, "").strip()
    if not value:
        return ()
    allowed = os.sched_getaffinity(0)
    words = [w.strip() for w in value.split(",")]
    if not all(w.isascii() and w.isdigit() for w in words) or not {int(w) for w in words} <= allowed:
        raise ConfigError(f"{TRIAL_HOST_CPUS}={value!r} is not a list of this machine's CPUs "
                          f"({','.join(map(str, sorted(allowed)))})",
                          fix=f"unset {TRIAL_HOST_CPUS}, or name CPUs pveoi may run on, e.g. 0")
    return tuple(sorted({int(w) for w in words}))


def trial_tb_size(environ: Mapping[str, str]) -> int | None:
    """The size of L1's TCG translation cache in MiB as a trial's environment sets it (:data:`TRIAL_TB_SIZE`);
    None when unset (QEMU's default).

    :raises ConfigError: not a whole number of MiB in :data:`TB_SIZE_RANGE`.
    """
    value = environ.get(TRIAL_TB_SIZE, "").strip()
    if not value:
        return None
    low, high = TB_SIZE_RANGE
    if not (value.isascii() and value.isdigit()) or not low <= int(value) <= high:
        raise ConfigError(f"{TRIAL_TB_SIZE}={value!r} is not a size in MiB from {low} to {high}",
                          fix=f"unset {TRIAL_TB_SIZE}, or give MiB, e.g. 64")
    return int(value)
