"""
What an A/B is asked to do: its arms (:class:`Arm`: kernel, PV EOI, CPU flags, vCPUs,
command line, host kernel) and the whole plan (:class:`Plan`).

The plan is data, not a command line: the virtual host's inner runner reads the
very same :class:`Plan` the outer pveoi built. Every class is a frozen dataclass
with one writer (``to_json``) and one reader (``from_json``).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..errors import ConfigError

Json = dict[str, Any]



# ---------------------------------------------------------------- arms


def refuses_pv_eoi(append: str) -> bool:
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


def _without_pv_eoi_refusal(append: str) -> str:
    words = append.split()
    if "--" in words:
        cut = words.index("--")
        head, tail = words[:cut], words[cut:]
    else:
        head, tail = words, []
    return " ".join([w for w in head if w.split("=", 1)[0].replace("_", "-") != "no-kvm-pv-eoi"] + tail)


#: The arm settings that make two arms different experiments (all but the name).
ARM_SETTINGS = ("kernel", "pv_eoi", "cpu_flags", "smp", "append", "host_kernel")


@dataclass(frozen=True)
class Arm:
    """One arm of an experiment: everything a guest of this arm is booted with.

    :param name: unique within the plan.
    :param pv_eoi: QEMU's ``kvm-pv-eoi`` (None: QEMU's default).
    :param cpu_flags: extra ``-cpu`` flags, e.g. ``("-x2apic",)`` for xAPIC mode.
    :param append: extra guest kernel parameters (e.g. ``no-kvm-pv-eoi``).
    :param kernel: this arm's guest bzImage (None: the plan's kernel).
    :param smp: vCPUs (None: the workload's default).
    :param host_kernel: the virtual host's kernel for this arm (None: pveoi's).
    :param origin: where the kernels came from (source dir, patches), for the record.
    :param replica_of: the arm this one repeats on purpose (an A/A noise check: the two are the same
        experiment, measured twice); without it two identical arms are a mistake.
    """

    name: str
    pv_eoi: bool | None = True
    cpu_flags: tuple[str, ...] = ()
    append: str = ""
    kernel: Path | None = None
    smp: int | None = None
    host_kernel: Path | None = None
    origin: Mapping[str, str] = field(default_factory=dict)
    replica_of: str | None = None

    @property
    def expects_pv_eoi(self) -> bool:
        """Whether PV EOI should be in use: offered by QEMU and not refused by the guest."""
        return self.pv_eoi is not False and not refuses_pv_eoi(self.append)

    def differences(self, other: Arm) -> tuple[str, ...]:
        """The settings in which ``other`` differs from this arm (``pv_eoi`` for the PV EOI switch,
        whether it is QEMU's property or the guest's ``no-kvm-pv-eoi``)."""
        out = [k for k in ARM_SETTINGS if k not in ("pv_eoi", "append") and getattr(self, k) != getattr(other, k)]
        if self.expects_pv_eoi != other.expects_pv_eoi or self.pv_eoi != other.pv_eoi:
            out.append("pv_eoi")
        if _without_pv_eoi_refusal(self.append) != _without_pv_eoi_refusal(other.append):
            out.append("append")
        return tuple(sorted(out))

    def is_twin(self, other: Arm) -> bool:
        """Same everything but PV EOI, which one uses and the other does not."""
        return self.differences(other) == ("pv_eoi",) and self.expects_pv_eoi != other.expects_pv_eoi

    def to_json(self) -> Json:
        return {"name": self.name, "kvm_pv_eoi": self.pv_eoi, "cpu_flags": list(self.cpu_flags),
                "append": self.append, "kernel": str(self.kernel) if self.kernel else None,
                "smp": self.smp, "host_kernel": str(self.host_kernel) if self.host_kernel else None,
                "origin": dict(self.origin), "expects_pv_eoi": self.expects_pv_eoi,
                **({"replica_of": self.replica_of} if self.replica_of else {})}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Arm:
        kernel, host = data.get("kernel"), data.get("host_kernel")
        return cls(name=str(data["name"]), pv_eoi=data.get("kvm_pv_eoi", data.get("pv_eoi", True)),
                   cpu_flags=tuple(data.get("cpu_flags") or ()), append=str(data.get("append") or ""),
                   kernel=Path(kernel) if kernel else None, smp=data.get("smp"),
                   host_kernel=Path(host) if host else None, origin=dict(data.get("origin") or {}),
                   replica_of=data.get("replica_of") or None)


DEFAULT_ARMS = (Arm("on", pv_eoi=True), Arm("off", pv_eoi=False))
#: ``pveoi ab --aa``: the on arm twice, the second a replica of the first (the A/A noise check).
AA_ARMS = (Arm("a", pv_eoi=True), Arm("b", pv_eoi=True, replica_of="a"))


def validate_arms(arms: Sequence[Arm]) -> None:
    """:raises ConfigError: fewer than two arms, duplicate names, two identical arms or a bad vCPU count."""
    if len(arms) < 2:
        raise ConfigError(f"an experiment needs at least two arms, got {len(arms)}",
                          fix="define two or more [[arm]] tables")
    names = [a.name for a in arms]
    if len(set(names)) != len(names) or not all(names):
        raise ConfigError(f"arm names must be unique and non-empty: {names}", fix="give every [[arm]] its own name")
    for a in arms:
        if a.replica_of is not None and a.replica_of not in names:
            raise ConfigError(f"arm {a.name} is a replica of {a.replica_of!r}, which is no arm",
                              fix=f"name one of {', '.join(names)}")
    for a, b in itertools.combinations(arms, 2):
        if not a.differences(b) and a.name != b.replica_of and b.name != a.replica_of:
            raise ConfigError(f"arms {a.name} and {b.name} are the same experiment",
                              fix="make the arms differ in kernel, pv_eoi, cpu_flags, smp, append or host_kernel, "
                                  f"or, for an A/A noise check on purpose, write replica_of = \"{a.name}\" in arm "
                                  f"{b.name} (pveoi ab --aa)")
    for a in arms:
        if a.smp is not None and not 1 <= a.smp <= 64:
            raise ConfigError(f"arm {a.name}: smp {a.smp} is not in 1..64", fix="write e.g. smp = 2")


# ---------------------------------------------------------------- the plan


#: Fresh-guest retries of a run that failed on infrastructure, by default. Two, not one: under the
#: virtual host nested TCG triple-faults 2-6 % of L2 guests by itself, and one rep in about 160 guests
#: did so twice in a row (the QEMU 7.2 soak of 2026-12-07), which one retry turned into an A/B in error.
DEFAULT_RETRIES = 2


@dataclass(frozen=True)
class Plan:
    """What an A/B is asked to do, complete: every file it names is an absolute path.

    :param workloads: workload names (:data:`e2e.model.workloads.WORKLOADS`).
    :param arms: two or more arms; reps are interleaved across all of them.
    :param runs: reps per arm.
    :param kernel: the default guest bzImage (arms may override it).
    :param image: the guest image's cache entry directory.
    :param logs: where each guest's console and QEMU logs go.
    :param thresholds: verdict threshold overrides (``e2e/data/thresholds.toml`` keys).
    :param retries: fresh-guest retries of a run that failed on infrastructure.
    :param memory_mb: guest memory.
    :param boot_timeout: seconds from QEMU start to the guest's ready line.
    :param timeout: seconds for the whole A/B.
    :param start: reps of :meth:`order` another part already measured: this plan runs the rest
        (a virtual host that died mid-part is replaced by one that resumes after them).
    :param reps_per_boot: reps one guest measures, window after window, before it is shut down
        (1: a fresh guest per rep). Each window is proven, counted and accounted on its own; only
        the boot is shared (:meth:`boots`).
    :param overlap_boots: boot each round's guests (one per arm, :meth:`rounds`) at once, then measure
        them one after another, each while the others sit idle.
    """

    workloads: tuple[str, ...]
    arms: tuple[Arm, ...]
    runs: int
    kernel: Path
    image: Path
    logs: Path
    thresholds: Mapping[str, float] = field(default_factory=dict)
    retries: int = DEFAULT_RETRIES
    memory_mb: int = 256
    boot_timeout: float = 180.0
    timeout: float = 3600.0
    start: int = 0
    reps_per_boot: int = 1
    overlap_boots: bool = False

    def boots(self) -> list[tuple[Arm, tuple[int, ...]]]:
        """The guests to boot, in order: (arm, the reps it measures). Reps go in groups of
        :attr:`reps_per_boot`; group 0 boots the arms in order, group 1 reversed, and so on, so every
        arm sits on average at the same position (drift lands on all alike)."""
        out = []
        size = max(1, self.reps_per_boot)
        for group, first in enumerate(range(0, self.runs, size)):
            reps = tuple(range(first, min(first + size, self.runs)))
            seq = list(self.arms) if group % 2 == 0 else list(reversed(self.arms))
            out += [(arm, reps) for arm in seq]
        return out

    def rounds(self) -> list[list[tuple[Arm, tuple[int, ...]]]]:
        """:meth:`boots` in rounds: each the guests of one group of reps, one per arm."""
        boots = self.boots()
        n = len(self.arms)
        return [boots[i:i + n] for i in range(0, len(boots), n)]

    def order(self) -> list[tuple[int, Arm]]:
        """Every (rep, arm) in the order measured: :meth:`boots`, rep by rep (one rep per boot: rep 0
        runs the arms in order, rep 1 reversed, and so on)."""
        return [(rep, arm) for arm, reps in self.boots() for rep in reps]

    def arm(self, name: str) -> Arm:
        return next(a for a in self.arms if a.name == name)

    def kernel_of(self, arm: Arm) -> Path:
        return arm.kernel or self.kernel

    def files(self) -> list[Path]:
        """Every file or directory the plan names (what the virtual host must see)."""
        out = [self.kernel, self.image]
        for a in self.arms:
            out += [p for p in (a.kernel, a.host_kernel) if p is not None]
        return out

    def host_kernels(self) -> list[Path | None]:
        """The distinct virtual-host kernels of the arms, in arm order (None: pveoi's)."""
        seen: list[Path | None] = []
        for a in self.arms:
            if a.host_kernel not in seen:
                seen.append(a.host_kernel)
        return seen

    def only(self, workload: str | None = None, host_kernel: Path | bool | None = False) -> Plan:
        """This plan narrowed to one workload and/or the arms of one host kernel."""
        arms = self.arms if host_kernel is False else tuple(a for a in self.arms if a.host_kernel == host_kernel)
        return replace(self, workloads=(workload,) if workload else self.workloads, arms=arms)

    def to_json(self) -> Json:
        return {"workloads": list(self.workloads), "arms": [a.to_json() for a in self.arms], "runs": self.runs,
                "kernel": str(self.kernel), "image": str(self.image), "logs": str(self.logs),
                "thresholds": dict(self.thresholds), "retries": self.retries, "memory_mb": self.memory_mb,
                "boot_timeout": self.boot_timeout, "timeout": self.timeout,
                **({"start": self.start} if self.start else {}),
                **({"reps_per_boot": self.reps_per_boot} if self.reps_per_boot != 1 else {}),
                **({"overlap_boots": True} if self.overlap_boots else {})}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Plan:
        """:raises ConfigError: a malformed plan."""
        try:
            return cls(workloads=tuple(data["workloads"]), arms=tuple(Arm.from_json(a) for a in data["arms"]),
                       runs=int(data["runs"]), kernel=Path(data["kernel"]), image=Path(data["image"]),
                       logs=Path(data["logs"]), thresholds={k: float(v) for k, v in data["thresholds"].items()},
                       retries=int(data["retries"]), memory_mb=int(data["memory_mb"]),
                       boot_timeout=float(data["boot_timeout"]), timeout=float(data["timeout"]),
                       start=int(data.get("start", 0)), reps_per_boot=int(data.get("reps_per_boot", 1)),
                       overlap_boots=bool(data.get("overlap_boots", False)))
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise ConfigError(f"malformed plan ({type(err).__name__}: {err})",
                              fix="write plans with e2e.model.plan.Plan.to_json") from err


# ---------------------------------------------------------------- one run


@dataclass(frozen=True)
class BootPlan:
    """What ``pveoi boot`` is asked to do: boot one guest of ``arm`` and run ``command`` in it.

    The same object runs here or, under the virtual KVM host, is shipped as JSON to the inner
    runner (``python -m e2e.run.inner boot PLAN``): no command line is rebuilt for L1.

    :param image: the guest image's cache entry (a directory).
    :param command: what to run in the guest; empty: an interactive shell (never in the virtual host).
    """

    arm: Arm
    kernel: Path
    image: Path
    accel: str = "kvm"
    smp: int = 1
    memory_mb: int = 256
    boot_timeout: float = 120.0
    timeout: float = 600.0
    command: tuple[str, ...] = ()
    logs: Path | None = None

    def files(self) -> list[Path]:
        """Every file or directory the plan names (what the virtual host must see)."""
        return [p for p in (self.kernel, self.image, self.arm.kernel) if p is not None]

    def to_json(self) -> Json:
        return {"boot": 1, "arm": self.arm.to_json(), "kernel": str(self.kernel), "image": str(self.image),
                "accel": self.accel, "smp": self.smp, "memory_mb": self.memory_mb,
                "boot_timeout": self.boot_timeout, "timeout": self.timeout, "command": list(self.command),
                "logs": str(self.logs) if self.logs else None}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> BootPlan:
        try:
            return cls(arm=Arm.from_json(data["arm"]), kernel=Path(data["kernel"]), image=Path(data["image"]),
                       accel=str(data["accel"]), smp=int(data["smp"]), memory_mb=int(data["memory_mb"]),
                       boot_timeout=float(data["boot_timeout"]), timeout=float(data["timeout"]),
                       command=tuple(str(c) for c in data["command"]),
                       logs=Path(data["logs"]) if data.get("logs") else None)
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise ConfigError(f"malformed boot plan ({type(err).__name__}: {err})",
                              fix="write boot plans with e2e.model.plan.BootPlan.to_json") from err
