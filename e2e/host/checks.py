"""
Each thing ``pveoi doctor`` checks on the host facts (:mod:`e2e.host.capability`), as a
pass/fail :class:`Check` with what was found and the fix: the KVM backend, ``/dev/kvm``,
APICv/AVIC, perf, the ``kvm:*`` tracepoints, perf's permissions, QEMU, TCG, ``kvm-pv-eoi``
and the pveoi cache. All pure.

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
is a check of its own, with the fix that removes it
(``host_config/prepare-host.sh --perf`` does both).

Non-root users also need ``/dev/kvm`` (its group, usually ``kvm``, and a
session that has that group) for direct measurement, and for any measurement
a pveoi cache they can write and whose SSH key they can read: the ``cache``
check (it does not change the decision).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .capability import VENDOR_MODULES, HostFacts
from .hostfacts import TRACEPOINTS

#: The highest ``kernel.perf_event_paranoid`` at which an unprivileged user can
#: count kernel-mode events (tracepoints) of their own process (``perf stat -p``).
PARANOID_MAX_FOR_COUNTING = 1

PREPARE_HOST = "host_config/prepare-host.sh"
PKG_QEMU = "qemu-system-x86"
PKG_PERF = "linux-perf"


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


#: The oldest QEMU the virtual KVM host is recommended on: under nested TCG, 7.2 triple-faulted more of
#: its L2 guests than 10.0 did, side by side (README, "QEMU"; docs/measurements.md).
QEMU_RECOMMENDED = (10, 0)


def qemu_older_than_recommended(version: str | None) -> bool:
    """Whether ``version`` (``7.2.22``) is below :data:`QEMU_RECOMMENDED` (False when unreadable)."""
    parts = re.match(r"(\d+)\.(\d+)", version or "")
    return parts is not None and (int(parts[1]), int(parts[2])) < QEMU_RECOMMENDED


def check_qemu(facts: HostFacts, virtual: bool = False) -> Check:
    """Is ``qemu-system-x86_64`` installed (and, for the virtual KVM host, recent enough)?

    :param facts: the probed facts.
    :param virtual: the virtual KVM host will run on it.
    :returns: the check.
    """
    found = _tool_check("qemu-system-x86_64", "QEMU", facts.qemu_version, facts.qemu_error, PKG_QEMU)
    if found.ok and virtual and qemu_older_than_recommended(facts.qemu_version):
        want = ".".join(map(str, QEMU_RECOMMENDED))
        return Check(False, f"QEMU {facts.qemu_version}, older than {want}: under nested TCG it crashes more of "
                            f"the virtual host's guests (retried, but slower; README, \"QEMU\")",
                     f"host_config/install-deps.sh (QEMU {want}; on Debian 12 from bookworm-backports)")
    return found


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
