"""
The decision on *where* PV EOI can be measured, from the host facts
(:mod:`e2e.host.capability`), the checks (:mod:`e2e.host.checks`) and, optionally,
a probe boot. :func:`decide` is pure.

Three answers (:class:`Decision`):

``direct``
    ``/dev/kvm`` is real hardware virtualisation (``kvm_intel``/``kvm_amd``),
    usable by us, a probe boot (if one ran) reached its ready line, APICv/AVIC
    is off, perf may count the ``kvm:*`` tracepoints and QEMU knows
    ``kvm-pv-eoi``.
``virtual``
    Direct is impossible or meaningless (``kvm_pvm``, no KVM, a failed probe
    boot, APICv/AVIC on...), but the virtual KVM host is possible: a TCG QEMU
    with ``-cpu max`` (which exposes SVM) running a KVM kernel, inside which
    perf runs as root from the host's root filesystem. Needs
    ``qemu-system-x86_64`` with TCG and ``kvm-pv-eoi``, and ``perf``.
``not-measurable``
    Neither; the reason and fix say what is missing.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from ..errors import NotMeasurable
from .capability import HostFacts
from .checks import (
    Check,
    check_backend,
    check_eoi_virtualisation,
    check_kvm_dev,
    check_perf,
    check_perf_permissions,
    check_pv_eoi_property,
    check_qemu,
    check_tcg,
    check_tracepoints,
    eoi_virtualisation,
)

HostKind = Literal["direct", "virtual", "not-measurable"]

VIRTUAL_HOST = "the virtual KVM host (a TCG QEMU with -cpu max exposing SVM, running a KVM kernel)"


@dataclass(frozen=True)
class ProbeBoot:
    """The outcome of booting a small guest under KVM to prove it works.

    :param ran: a boot was attempted (False: skipped, see ``detail``).
    :param reached_ready: the guest printed its ready line.
    :param seconds: how long the attempt took, if it ran.
    :param detail: one line: what happened or why it was skipped.
    """

    ran: bool
    reached_ready: bool
    seconds: float | None
    detail: str

    @classmethod
    def skipped(cls, detail: str) -> ProbeBoot:
        """A probe boot that was not attempted.

        :param detail: why not.
        :returns: the record.
        """
        return cls(ran=False, reached_ready=False, seconds=None, detail=detail)

    @property
    def failed(self) -> bool:
        """It ran and did not reach the ready line."""
        return self.ran and not self.reached_ready


@dataclass(frozen=True)
class Decision:
    """Where PV EOI will be measured, and why.

    :param host: ``direct``, ``virtual`` or ``not-measurable``.
    :param reason: one sentence naming the backend and the deciding facts.
    :param measurable_direct: this host's own KVM can measure PV EOI.
    :param fix: what would make direct measurement possible (or, when
        not measurable, any measurement), if anything can.
    """

    host: HostKind
    reason: str
    measurable_direct: bool
    fix: str | None = None


def _unique(items: Iterable[str | None]) -> list[str]:
    seen: list[str] = []
    for item in items:
        if item and item not in seen:
            seen.append(item)
    return seen


def _join(items: Iterable[str | None]) -> str | None:
    joined = "; ".join(_unique(items))
    return joined or None


def _direct_blockers(facts: HostFacts, probe: ProbeBoot | None) -> list[Check]:
    """Every reason this host's own KVM cannot measure PV EOI (empty: it can)."""
    backend = check_backend(facts)
    if not backend.ok:
        if probe is not None and probe.failed:
            return [Check(False, f"{backend.detail} (a probe boot confirmed it: {probe.detail})",
                           backend.fix)]
        return [backend]
    blockers = [c for c in (check_kvm_dev(facts),) if not c.ok]
    if not blockers and probe is not None and probe.failed:
        blockers.append(Check(False, f"a probe boot under {facts.vendor_module} did not reach "
                                      f"its ready line ({probe.detail})"))
    checks = [check_eoi_virtualisation(facts), check_perf(facts)]
    if facts.perf_version is not None:
        checks += [check_tracepoints(facts), check_perf_permissions(facts)]
    checks.append(check_qemu(facts))
    if facts.qemu_version is not None:
        checks.append(check_pv_eoi_property(facts))
    blockers += [c for c in checks if not c.ok]
    return blockers


def _virtual_gaps(facts: HostFacts) -> list[Check]:
    """Every reason the virtual KVM host is impossible here (empty: it is possible)."""
    qemu = check_qemu(facts)
    checks = [qemu, check_perf(facts)]
    if qemu.ok:
        checks[1:1] = [check_tcg(facts), check_pv_eoi_property(facts)]
    return [c for c in checks if not c.ok]


def _install_fix(fixes: Iterable[str | None]) -> list[str | None]:
    """Merge ``apt-get install X`` fixes into one command."""
    packages: list[str] = []
    rest: list[str | None] = []
    for fix in fixes:
        if fix and fix.startswith("apt-get install "):
            packages += [p for p in fix.split()[2:] if p not in packages]
        else:
            rest.append(fix)
    return ([f"apt-get install {' '.join(packages)}"] if packages else []) + rest


def decide(facts: HostFacts, probe: ProbeBoot | None) -> Decision:
    """Decide where PV EOI can be measured. Pure.

    :param facts: what :func:`~e2e.host.capability.probe_host` found.
    :param probe: a probe boot's outcome, or None if none was attempted (a
        skipped probe, ``ran=False``, counts as None).
    :returns: ``direct`` when this host's KVM can measure it, else ``virtual``
        when the virtual KVM host can, else ``not-measurable``.
    """
    if probe is not None and not probe.ran:
        probe = None
    blockers = _direct_blockers(facts, probe)
    if not blockers:
        module = facts.vendor_module
        probed = (f"; a probe boot reached ready in {probe.seconds:.1f}s"
                  if probe is not None and probe.seconds is not None else "")
        feature, _ = eoi_virtualisation(facts)
        return Decision("direct", f"/dev/kvm is backed by {module} ({facts.backend.upper()}), "
                                  f"{feature} is off and perf can count kvm:* tracepoints"
                                  f"{probed}; measuring on this host", True, None)
    why = "; ".join(_unique(b.detail for b in blockers))
    gaps = _virtual_gaps(facts)
    if not gaps:
        return Decision("virtual", f"{why}; using {VIRTUAL_HOST}", False,
                        _join(_install_fix(b.fix for b in blockers)))
    missing = "; ".join(_unique(g.detail for g in gaps if g.detail not in why))
    reason = f"{why}; and {VIRTUAL_HOST} is impossible" + (f": {missing}" if missing else "")
    return Decision("not-measurable", reason, False,
                    _join(_install_fix([*(g.fix for g in gaps), *(b.fix for b in blockers)])))


def resolve_host(decision: Decision) -> Literal["direct", "virtual"]:
    """The host kind to run on, for ``--host auto``.

    :param decision: the doctor's decision.
    :returns: ``direct`` or ``virtual``.
    :raises NotMeasurable: the decision is ``not-measurable`` (carries reason and fix).
    """
    if decision.host == "not-measurable":
        raise NotMeasurable(f"PV EOI is not measurable here: {decision.reason}", decision.fix)
    return decision.host
