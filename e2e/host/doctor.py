"""
The doctor: turn host facts (and, optionally, a probe boot) into findings and
a decision on *where* PV EOI can be measured.

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

:func:`decide` and :func:`findings` are pure. :func:`run_doctor` probes,
optionally boots a probe guest through a caller-supplied callable, and returns
the JSON report (:func:`doctor_report`); :func:`format_text` renders it. This
module never prints.

Why perf may or may not count tracepoints (Linux 6.1, ``kernel/events/core.c``
and ``kernel/trace/trace_event_perf.c``): counting a tracepoint without
``PERF_SAMPLE_RAW`` needs no tracepoint privilege, but tracepoints fire in
kernel mode, so the event must not exclude the kernel, which
``perf_event_paranoid >= 2`` forbids without CAP_PERFMON (Debian's 3 forbids
perf altogether); ``perf stat -p PID`` is per-task, which ``1`` allows
(``-a`` would need ``0``; raw tracepoint samples ``-1``). perf also reads each
event's id from tracefs, which is root-only by default.

Measured as a throwaway non-root user (kernel 6.18, perf 6.1, ``perf stat -e
kvm:kvm_exit -- /bin/true``): with tracefs mode 0700 perf rejects the event as
unknown; with tracefs group-readable and ``paranoid=2`` perf *silently* turns
the event into ``kvm:kvm_exitu`` (user mode only) and counts 0; with
``paranoid=1`` it counts; ``-a`` still fails at 1. So each missing permission
is a finding of its own, with the fix that removes it
(``host_config/prepare-host.sh --perf`` does both).

Non-root users also need ``/dev/kvm`` (its group, usually ``kvm``, and a
session that has that group) for direct measurement, and for any measurement
a pveoi cache they can write and whose SSH key they can read: the ``cache``
finding (it does not change the decision).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..errors import NotMeasurable, PveoiError
from .capability import VENDOR_MODULES, HostFacts, RunCommand, probe_host
from .hostfacts import TRACEPOINTS

log = logging.getLogger(__name__)

Status = Literal["ok", "warn", "fail", "info"]
HostKind = Literal["direct", "virtual", "not-measurable"]

SCHEMA = 1

#: The highest ``kernel.perf_event_paranoid`` at which an unprivileged user can
#: count kernel-mode events (tracepoints) of their own process (``perf stat -p``).
PARANOID_MAX_FOR_COUNTING = 1

VIRTUAL_HOST = "the virtual KVM host (a TCG QEMU with -cpu max exposing SVM, running a KVM kernel)"
PREPARE_HOST = "host_config/prepare-host.sh"
PKG_QEMU = "qemu-system-x86"
PKG_PERF = "linux-perf"


@dataclass(frozen=True)
class Finding:
    """One line of the doctor's report.

    :param name: what was checked (stable, e.g. ``kvm backend``).
    :param status: ``ok``, ``warn``, ``fail`` or ``info``.
    :param detail: what was found, one line.
    :param fix: what to do about it, if anything.
    """

    name: str
    status: Status
    detail: str
    fix: str | None = None


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


# ---------------------------------------------------------------- checks


@dataclass(frozen=True)
class Check:
    """One pass/fail check, with the words for the report.

    :param ok: it passed.
    :param detail: what was found, one line.
    :param fix: what to do if it failed, if anything.
    """

    ok: bool
    detail: str
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


def _flags(facts: HostFacts) -> str:
    shown = [f for f, on in (("vmx", facts.cpu_vmx), ("svm", facts.cpu_svm),
                             ("hypervisor", facts.cpu_hypervisor)) if on]
    return ", ".join(shown) if shown else "neither vmx nor svm"


def check_backend(facts: HostFacts) -> Check:
    """Can ``/dev/kvm``'s backend run standard guests with hardware virtualisation?

    :param facts: the probed facts.
    :returns: the check; ``detail`` names the backend.
    """
    b = facts.backend
    if b == "vmx":
        return Check(True, f"kvm_intel (VMX); cpu flags: {_flags(facts)}")
    if b == "svm":
        return Check(True, f"kvm_amd (SVM); cpu flags: {_flags(facts)}")
    if b == "pvm":
        return Check(False, "/dev/kvm is backed by kvm_pvm (a paravirtual backend without "
                             "VMX/SVM) and cannot run standard guests")
    if b == "none":
        module = next((m for m, b in VENDOR_MODULES.items() if b == facts.cpu_vendor), None)
        if module is not None:
            return Check(False, f"no KVM: the CPU has {facts.cpu_vendor} but {module} is not loaded",
                          f"modprobe {module}")
        guest = " (this machine is itself a guest)" if facts.cpu_hypervisor else ""
        return Check(False, f"no KVM: /dev/kvm is absent and the CPU shows neither vmx nor "
                             f"svm{guest}",
                      "enable VT-x/AMD-V (or nested virtualisation) and load kvm_intel or kvm_amd")
    module = facts.vendor_module or b
    return Check(False, f"/dev/kvm is backed by {module}, a backend pveoi does not know "
                         f"(cpu flags: {_flags(facts)})")


def check_kvm_dev(facts: HostFacts) -> Check:
    """Is ``/dev/kvm`` there and read-write for us?

    :param facts: the probed facts.
    :returns: the check.
    """
    if not facts.kvm_dev:
        return Check(False, "/dev/kvm is absent",
                      f"load {facts.vendor_module}" if facts.hardware_backend else None)
    if not facts.kvm_access:
        return _kvm_dev_denied(facts)
    return Check(True, "/dev/kvm is present and read-write")


def _kvm_dev_denied(facts: HostFacts) -> Check:
    """Why this user may not open ``/dev/kvm``, and the fix for exactly that."""
    user, group, mode = facts.user, facts.kvm_dev_group, facts.kvm_dev_mode
    owned = f" ({group} {mode})" if group and mode else ""
    prefix = f"/dev/kvm exists but is not readable and writable by {user}{owned}"
    if facts.is_root:
        return Check(False, f"{prefix}, not even for root", "check /dev/kvm's mode and the mount's nodev flag")
    group_rw = mode is not None and int(mode, 8) & 0o060 == 0o060
    if group in (None, "root", "0") or not group_rw:
        return Check(False, f"{prefix}: only root may open it",
                     "let group kvm open it: chgrp kvm /dev/kvm && chmod 0660 /dev/kvm (for good: a udev rule "
                     'KERNEL=="kvm", GROUP="kvm", MODE="0660"), then add the user to that group: '
                     f"usermod -aG kvm {user} and log in again")
    if facts.kvm_group_member is False:
        return Check(False, f"{prefix}: {user} is not in group {group}",
                     f"add {user} to group {group}: usermod -aG {group} {user}, then log in again")
    if facts.kvm_group_active is False:
        return Check(False, f"{prefix}: {user} is in group {group}, but this session is not (added after "
                            "login)", f"log in again (or start a shell with the group: newgrp {group})")
    return Check(False, prefix, f"check /dev/kvm's ACLs and mount flags (getfacl /dev/kvm; usermod -aG {group} "
                                f"{user})")


def eoi_virtualisation(facts: HostFacts) -> tuple[str, bool | None]:
    """The hardware EOI virtualisation feature that matters here, and its state.

    :param facts: the probed facts.
    :returns: (``APICv``/``AVIC``/``""``, on?) where on is None when unreadable.
    """
    if facts.backend == "vmx":
        return "APICv", facts.apicv
    if facts.backend == "svm":
        return "AVIC", facts.avic
    return "", None


def check_eoi_virtualisation(facts: HostFacts) -> Check:
    """Is APICv (Intel) or AVIC (AMD) off, so EOIs still exit and PV EOI matters?

    :param facts: the probed facts.
    :returns: the check (ok for non-hardware backends: nothing to say).
    """
    feature, on = eoi_virtualisation(facts)
    if not feature:
        return Check(True, f"not applicable (backend {facts.backend})")
    module, param = ("kvm_intel", "enable_apicv") if feature == "APICv" else ("kvm_amd", "avic")
    if on is None:
        return Check(False, f"cannot read {module}.{param}, so hardware EOI virtualisation "
                             f"({feature}) cannot be ruled out",
                      f"check /sys/module/{module}/parameters/{param}")
    if on:
        return Check(False, f"{feature} is on ({module}.{param}=Y): the CPU virtualises EOIs, "
                             "they never exit and KVM does not arm PV EOI, so PV EOI is not "
                             "measurable directly",
                      f"modprobe -r {module} && modprobe {module} {param}=0 (or sudo {PREPARE_HOST} "
                      "--apicv, which refuses while VMs run and can --restore)")
    return Check(True, f"{feature} is off ({module}.{param}=N): EOIs exit, PV EOI can save them")


def _tool_check(binary: str, label: str, version: str | None, error: str | None, package: str) -> Check:
    """A tool is present (its version) or missing (why, and the package that has it)."""
    if version is None:
        return Check(False, f"{binary} is missing ({error or 'not found'})", f"apt-get install {package}")
    return Check(True, f"{label} {version}")


def check_perf(facts: HostFacts) -> Check:
    """Is perf installed?

    :param facts: the probed facts.
    :returns: the check.
    """
    return _tool_check("perf", "perf", facts.perf_version, facts.perf_error, PKG_PERF)


def check_tracepoints(facts: HostFacts) -> Check:
    """Does this kernel have the ``kvm:*`` tracepoints pveoi counts?

    :param facts: the probed facts.
    :returns: the check.
    """
    if facts.tracefs_mounted and not facts.tracefs_listable:
        if facts.is_root:
            return Check(True, f"{facts.tracefs_path} cannot be listed (tracepoints not counted here)")
        return Check(False, f"{facts.tracefs_path} is root-only, so {facts.user} cannot see the kvm:* "
                            "tracepoints (perf rejects them as unknown events)",
                     f"sudo {PREPARE_HOST} --perf (remounts tracefs readable by group kvm; add {facts.user} "
                     "to it), or run as root")
    if not facts.tracefs_mounted:
        if facts.is_root:
            return Check(True, "tracefs is not mounted; perf mounts it on first use as root "
                                "(tracepoints not counted here)")
        return Check(False, "tracefs is not mounted, so perf cannot resolve kvm:* tracepoints",
                      "mount -t tracefs nodev /sys/kernel/tracing")
    where = facts.tracefs_path
    if facts.kvm_tracepoints == 0:
        return Check(False, f"no kvm:* tracepoints in {where} (kvm not loaded, or a kernel "
                             "without CONFIG_TRACEPOINTS?)",
                      "load kvm (modprobe kvm_intel or kvm_amd)")
    if facts.missing_tracepoints:
        missing = ", ".join(f"kvm:{t}" for t in facts.missing_tracepoints)
        return Check(False, f"{facts.kvm_tracepoints} kvm:* tracepoints in {where}, but "
                             f"{missing} missing", "use a kernel whose KVM has these tracepoints")
    return Check(True, f"{facts.kvm_tracepoints} kvm:* tracepoints in {where}, including all "
                        f"{len(TRACEPOINTS)} pveoi counts")


def check_perf_permissions(facts: HostFacts) -> Check:
    """May perf count kernel tracepoints of our own QEMU (``perf stat -p``)?

    Root or CAP_PERFMON may; otherwise ``perf_event_paranoid`` must be at most
    :data:`PARANOID_MAX_FOR_COUNTING` and tracefs readable (see the module docs).

    :param facts: the probed facts.
    :returns: the check.
    """
    paranoid = f"perf_event_paranoid={facts.perf_paranoid}"
    if facts.is_root:
        return Check(True, f"root ({paranoid}): perf may count kernel tracepoints")
    if facts.cap_perfmon:
        return Check(True, f"CAP_PERFMON ({paranoid}): perf may count kernel tracepoints")
    if facts.perf_paranoid is None:
        return Check(False, "/proc/sys/kernel/perf_event_paranoid is missing (a kernel without "
                             "perf events?)", "use a kernel with CONFIG_PERF_EVENTS")
    fixes: list[str] = []
    problems: list[str] = []
    user = facts.user
    if facts.perf_paranoid > PARANOID_MAX_FOR_COUNTING:
        problems.append(f"{paranoid} stops {user} counting kernel-mode events such as kvm:* tracepoints "
                        "(perf silently counts user mode only: zeros)")
        fixes.append(f"sysctl -w kernel.perf_event_paranoid={PARANOID_MAX_FOR_COUNTING}")
    if facts.tracefs_mounted and not facts.tracefs_readable:
        problems.append(f"{facts.tracefs_path} is not readable by {user} (perf reads tracepoint ids there)")
        fixes.append(f"mount -o remount,gid=kvm,mode=0750 {facts.tracefs_path} with {user} in group kvm")
    if problems:
        fix = "; ".join(fixes)
        return Check(False, "; ".join(problems),
                     f"{fix} (both: sudo {PREPARE_HOST} --perf; or run as root / grant CAP_PERFMON)")
    return Check(True, f"{paranoid} and readable tracefs let this user count its own QEMU's "
                        "kvm:* tracepoints")


def check_qemu(facts: HostFacts) -> Check:
    """Is ``qemu-system-x86_64`` installed?

    :param facts: the probed facts.
    :returns: the check.
    """
    return _tool_check("qemu-system-x86_64", "QEMU", facts.qemu_version, facts.qemu_error, PKG_QEMU)


def check_tcg(facts: HostFacts) -> Check:
    """Does QEMU have TCG (needed for the virtual KVM host)?

    :param facts: the probed facts.
    :returns: the check.
    """
    if facts.qemu_has_tcg:
        return Check(True, "QEMU has TCG (the virtual KVM host runs on it)")
    if facts.qemu_version is None:
        return Check(False, "unknown: QEMU is missing", f"apt-get install {PKG_QEMU}")
    if facts.qemu_has_tcg is None:
        return Check(False, "unknown: 'qemu-system-x86_64 -accel help' failed")
    return Check(False, "this QEMU was built without TCG", f"apt-get install {PKG_QEMU}")


def check_pv_eoi_property(facts: HostFacts) -> Check:
    """Does QEMU know the ``kvm-pv-eoi`` CPU property (the A/B switch)?

    :param facts: the probed facts.
    :returns: the check.
    """
    if facts.qemu_knows_pv_eoi:
        return Check(True, "QEMU knows -cpu ...,kvm-pv-eoi=on|off")
    if facts.qemu_version is None:
        return Check(False, "unknown: QEMU is missing", f"apt-get install {PKG_QEMU}")
    if facts.qemu_knows_pv_eoi is None:
        return Check(False, "unknown: 'qemu-system-x86_64 -cpu help' failed")
    return Check(False, f"QEMU {facts.qemu_version} does not list kvm-pv-eoi in -cpu help",
                  f"install a QEMU that has it (>= 1.3; Debian: {PKG_QEMU})")


def check_cache(facts: HostFacts) -> Check | None:
    """Can this user use the pveoi cache (write it, read its SSH client key)?

    :param facts: the probed facts.
    :returns: the check, or None when the cache was not probed.
    """
    if facts.cache_dir is None:
        return None
    where, user = facts.cache_dir, facts.user
    own = "point PVEOI_CACHE at a cache of your own (e.g. export PVEOI_CACHE=~/.cache/pveoi)"
    if facts.cache_key_readable is False:
        return Check(False, f"{user} cannot read the cache's SSH client key in {where}/ssh (another user's "
                            "0600 key): pveoi could not log into guests built from this cache",
                     f"{own}, or run as the cache's owner")
    if not facts.cache_writable:
        return Check(False, f"{where} is not writable by {user} (nor can it be created): pveoi cannot build "
                            "kernels and images or keep logs there",
                     f"{own}, or chown -R {user} {where}")
    key = ", its SSH key readable" if facts.cache_key_readable else ""
    return Check(True, f"{where} is writable by {user}{key}")


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


# ---------------------------------------------------------------- findings


def _finding(name: str, check: Check, *, relevant: bool = True, bad: Status = "warn",
             aside: str = "") -> Finding:
    """A finding from a check; failures that do not matter for the decision are ``info``."""
    if check.ok:
        return Finding(name, "ok", check.detail)
    if not relevant:
        return Finding(name, "info", f"{check.detail}{aside}", check.fix)
    return Finding(name, bad, check.detail, check.fix)


def findings(facts: HostFacts, probe: ProbeBoot | None, decision: Decision) -> list[Finding]:
    """One finding per checked thing, in a stable order, ending with the decision.

    :param facts: the probed facts.
    :param probe: the probe boot's outcome, if any.
    :param decision: :func:`decide`'s answer for the same facts and probe.
    :returns: the findings: kvm backend, /dev/kvm, probe boot, apicv/avic, perf,
        kvm tracepoints, perf permissions, qemu, qemu tcg, kvm-pv-eoi property,
        cache, decision.
    """
    direct = decision.host == "direct"
    hardware = facts.hardware_backend
    host_only = " (not needed: the virtual KVM host counts inside its own kernel, as root)"
    out: list[Finding] = []

    backend = check_backend(facts)
    extra = ""
    if facts.backend == "pvm" and facts.pvm_native is not None:
        extra = f"; pvm_native={'Y' if facts.pvm_native else 'N'}"
    elif hardware and facts.nested is not None:
        extra = f"; nested={'Y' if facts.nested else 'N'}"
    out.append(Finding("kvm backend", "ok" if backend.ok else "warn", backend.detail + extra,
                       backend.fix))

    dev = check_kvm_dev(facts)
    dev = dataclasses.replace(dev, detail=dev.detail.removeprefix("/dev/kvm "))
    if hardware:
        out.append(_finding("/dev/kvm", dev, bad="fail"))
    else:
        out.append(Finding("/dev/kvm", "info", f"{dev.detail}, but backend {facts.backend} "
                                               "cannot run standard guests"
                           if facts.kvm_dev else dev.detail))

    if probe is None:
        out.append(Finding("probe boot", "info", "not run"))
    elif not probe.ran:
        out.append(Finding("probe boot", "info", f"not run: {probe.detail}"))
    elif probe.reached_ready:
        took = f" in {probe.seconds:.1f}s" if probe.seconds is not None else ""
        out.append(Finding("probe boot", "ok", f"reached its ready line{took}: {probe.detail}"))
    else:
        out.append(Finding("probe boot", "fail", f"did not reach its ready line: {probe.detail}",
                           "see the probe boot's console log"))

    out.append(_finding("apicv/avic", check_eoi_virtualisation(facts))
               if hardware else Finding("apicv/avic", "info",
                                        f"not applicable (backend {facts.backend})"))
    out.append(_finding("perf", check_perf(facts), bad="fail"))
    out.append(_finding("kvm tracepoints", check_tracepoints(facts),
                        relevant=decision.host != "virtual", aside=host_only))
    out.append(_finding("perf permissions", check_perf_permissions(facts),
                        relevant=decision.host != "virtual", aside=host_only))
    out.append(_finding("qemu", check_qemu(facts), bad="fail"))
    if facts.qemu_version is None:
        out += [Finding(name, "info", "unknown: QEMU is missing")
                for name in ("qemu tcg", "kvm-pv-eoi property")]
    else:
        out.append(_finding("qemu tcg", check_tcg(facts), relevant=not direct, bad="fail",
                            aside=" (only the virtual KVM host needs it)"))
        out.append(_finding("kvm-pv-eoi property", check_pv_eoi_property(facts), bad="fail"))
    cache = check_cache(facts)
    out.append(Finding("cache", "info", "not checked") if cache is None
               else _finding("cache", cache, bad="fail"))

    status: Status = "ok" if direct else "info" if decision.host == "virtual" else "fail"
    out.append(Finding("decision", status, f"{decision.host}: {decision.reason}", decision.fix))
    return out


# ---------------------------------------------------------------- report


def should_probe(facts: HostFacts) -> str | None:
    """Whether a probe boot is worth running on this host.

    :param facts: the probed facts.
    :returns: None when it is, else why it is skipped.
    """
    if not facts.hardware_backend:
        return f"backend {facts.backend} cannot run standard guests"
    if not facts.kvm_usable:
        return "/dev/kvm is not usable"
    return None


def run_probe(probe_boot: Callable[[], ProbeBoot]) -> ProbeBoot:
    """Run a probe boot; a pveoi error or OS error becomes a failed probe.

    :param probe_boot: boots a small guest under KVM and reports.
    :returns: its outcome.
    """
    start = time.monotonic()
    try:
        result = probe_boot()
    except (PveoiError, OSError) as err:
        log.info("probe boot failed: %s", err)
        return ProbeBoot(True, False, time.monotonic() - start, str(err))
    log.info("probe boot: ready=%s (%s)", result.reached_ready, result.detail)
    return result


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def doctor_report(facts: HostFacts, probe: ProbeBoot | None = None,
                  decision: Decision | None = None) -> dict[str, Any]:
    """The doctor's JSON document (stable; ``schema`` bumps on incompatible change).

    :param facts: the probed facts.
    :param probe: the probe boot's outcome, if any.
    :param decision: the decision (default: ``decide(facts, probe)``).
    :returns: ``{"schema": 1, "facts": {...}, "probe_boot": {...} | None,
        "findings": [{"name", "status", "detail", "fix"}...],
        "decision": {"host", "reason", "measurable_direct", "fix"}}``.
    """
    decision = decision or decide(facts, probe)
    return {
        "schema": SCHEMA,
        "facts": _jsonable(dataclasses.asdict(facts)),
        "probe_boot": dataclasses.asdict(probe) if probe is not None else None,
        "findings": [dataclasses.asdict(f) for f in findings(facts, probe, decision)],
        "decision": dataclasses.asdict(decision),
    }


def run_doctor(root: Path = Path("/"), probe_boot: Callable[[], ProbeBoot] | None = None, *,
               run: RunCommand | None = None, always_probe: bool = False,
               cache: Path | None = None) -> dict[str, Any]:
    """Probe the host, run the probe boot where it makes sense, and report.

    :param root: the root to probe (``/`` on a real host).
    :param probe_boot: boots a small guest under KVM; None: no probe boot.
    :param run: how to run perf/QEMU (default: for real).
    :param always_probe: run the probe boot even where it cannot succeed
        (e.g. ``kvm_pvm``), to see the failure.
    :param cache: the pveoi cache to check (default: ``$PVEOI_CACHE`` etc.
        when probing ``/``; not checked for a fixture root).
    :returns: :func:`doctor_report`'s document.
    """
    if cache is None and Path(root) == Path("/"):
        from ..build.cache import cache_root

        cache = cache_root()
    facts = probe_host(root, run=run, cache=cache)
    probe: ProbeBoot | None = None
    if probe_boot is not None:
        skip = None if always_probe else should_probe(facts)
        probe = ProbeBoot.skipped(skip) if skip else run_probe(probe_boot)
    report = doctor_report(facts, probe)
    log.debug("doctor decision: %s", report["decision"])
    return report


def decision_from_report(report: dict[str, Any]) -> Decision:
    """Read the decision back from a doctor report (e.g. a saved JSON file).

    :param report: :func:`doctor_report`'s document.
    :returns: the decision.
    :raises ValueError: the document is not a schema-1 doctor report.
    """
    if report.get("schema") != SCHEMA or not isinstance(report.get("decision"), dict):
        raise ValueError(f"not a schema-{SCHEMA} doctor report")
    d = report["decision"]
    host = d.get("host")
    if host not in ("direct", "virtual", "not-measurable"):
        raise ValueError(f"bad decision host {host!r} in doctor report")
    return Decision(host, str(d.get("reason", "")), bool(d.get("measurable_direct")),
                    d.get("fix"))


def resolve_host(decision: Decision) -> Literal["direct", "virtual"]:
    """The host kind to run on, for ``--host auto``.

    :param decision: the doctor's decision.
    :returns: ``direct`` or ``virtual``.
    :raises NotMeasurable: the decision is ``not-measurable`` (carries reason and fix).
    """
    if decision.host == "not-measurable":
        raise NotMeasurable(f"PV EOI is not measurable here: {decision.reason}", decision.fix)
    return decision.host


def format_text(report: dict[str, Any]) -> str:
    """Render a doctor report as text: one line per finding, its fix indented below.

    :param report: :func:`doctor_report`'s document.
    :returns: the text, ending with a newline.
    """
    lines: list[str] = []
    for f in report["findings"]:
        lines.append(f"{f['status']:<6}{f['name']}: {f['detail']}")
        if f.get("fix"):
            lines.append(f"      fix: {f['fix']}")
    return "\n".join(lines) + "\n"


__all__ = [
    "PARANOID_MAX_FOR_COUNTING", "PREPARE_HOST", "SCHEMA", "Check", "Decision", "Finding", "HostKind",
    "ProbeBoot", "Status", "check_cache", "decide", "decision_from_report", "doctor_report", "findings", "format_text",
    "resolve_host", "run_doctor", "run_probe", "should_probe",
]
