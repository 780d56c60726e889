"""
Host capability probes: what this machine's KVM, perf and QEMU can do.

Everything here reads files under a *root* directory (``/`` by default) so the
unit tests can point the probes at a fixture tree, and runs commands through
an injectable :data:`~e2e.host.tools.RunCommand` (:mod:`e2e.host.tools` asks perf
and QEMU; :mod:`e2e.host.access` says who may open ``/dev/kvm`` and the cache).
Nothing is probed at import time, nothing is changed on the host, and a missing
file or binary is a fact to report, never an exception.

What is probed (see :class:`HostFacts`):

* ``/proc/cpuinfo`` flags ``vmx``, ``svm``, ``hypervisor``;
* ``/sys/module/{kvm,kvm_intel,kvm_amd,kvm_pvm}`` and the vendor module
  parameters (``kvm_intel.enable_apicv``, ``kvm_amd.avic``/``npt``, ``nested``);
* ``/dev/kvm`` (exists; readable and writable by us; its group and mode, and
  whether we are in that group, in the user database and in this session);
* ``/proc/sys/kernel/perf_event_paranoid`` and our effective capabilities;
* tracefs (``/sys/kernel/tracing``, else ``/sys/kernel/debug/tracing``): the
  ``kvm:*`` tracepoints and whether we can read their ids;
* ``perf --version``, ``qemu-system-x86_64 --version``, ``-accel help`` and
  ``-cpu help`` (does QEMU know the ``kvm-pv-eoi`` CPU property?);
* the pveoi cache (when asked): can we write it, and read its SSH key?

The tracepoint list, the tracefs scan and the CPU flags and vendor come from
:mod:`e2e.host.hostfacts`, the one owner of those facts (re-exported here).

The backend of ``/dev/kvm`` is decided from the loaded vendor module, not from
``/dev/kvm`` itself: a nested paravirtual backend (``kvm_pvm``) creates a
``/dev/kvm`` on which ``KVM_CREATE_VM`` succeeds but standard guests die in the
instruction emulator.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .access import probe_cache, probe_kvm_dev_owner, user_name
from .hostfacts import TRACEFS_DIRS, TRACEPOINTS, TracefsFacts, cpu_flags, probe_tracefs, vendor_of
from .tools import PERF_BINARY, QEMU_BINARY, RunCommand, probe_tools, run_command

log = logging.getLogger(__name__)

#: KVM vendor modules pveoi knows, and the backend name each one means.
VENDOR_MODULES: dict[str, str] = {"kvm_intel": "vmx", "kvm_amd": "svm", "kvm_pvm": "pvm"}

#: Backends that run standard guests with hardware virtualisation.
HARDWARE_BACKENDS = frozenset({"vmx", "svm"})

#: The tracepoints pveoi counts (bare names; :mod:`e2e.host.hostfacts` owns the list).
NEEDED_TRACEPOINTS: tuple[str, ...] = TRACEPOINTS

#: Capability bits (include/uapi/linux/capability.h) that let perf count kernel events.
CAP_SYS_ADMIN = 21
CAP_PERFMON = 38


@dataclass(frozen=True)
class HostFacts:
    """Everything :func:`probe_host` found; plain data, JSON-friendly.

    :param root: the directory the probes read (``/`` on a real host).
    :param cpu_vmx: ``/proc/cpuinfo`` has the ``vmx`` flag.
    :param cpu_svm: ``/proc/cpuinfo`` has the ``svm`` flag.
    :param cpu_hypervisor: ``/proc/cpuinfo`` has the ``hypervisor`` flag (we are a guest).
    :param kvm_modules: the ``kvm`` and ``kvm_*`` entries of ``/sys/module``, sorted.
    :param backend: ``vmx``, ``svm``, ``pvm``, ``none`` or ``unknown-<module>``.
    :param kvm_dev: ``/dev/kvm`` exists (on ``/``: as a character device).
    :param kvm_access: ``/dev/kvm`` is readable and writable by us.
    :param apicv: ``kvm_intel.enable_apicv`` (None when not loaded or unreadable).
    :param avic: ``kvm_amd.avic`` (None when not loaded or unreadable).
    :param npt: ``kvm_amd.npt``.
    :param ept: ``kvm_intel.ept``.
    :param nested: the loaded vendor module's ``nested`` parameter.
    :param pvm_native: ``kvm_pvm.pvm_native``.
    :param is_root: our effective uid is 0.
    :param cap_perfmon: CAP_PERFMON or CAP_SYS_ADMIN is effective (None: unknown).
    :param perf_version: ``perf --version``'s version, or None.
    :param perf_error: why perf's version could not be read.
    :param perf_paranoid: ``kernel.perf_event_paranoid``, or None.
    :param tracefs_path: the tracefs directory found (absolute, as on the host), or None.
    :param tracefs_mounted: that directory has an ``events`` directory.
    :param tracefs_readable: we can read the kvm tracepoint ids (what perf needs).
    :param kvm_tracepoints: the number of ``kvm:*`` tracepoints in tracefs.
    :param missing_tracepoints: the :data:`~e2e.host.hostfacts.TRACEPOINTS` tracefs lacks
        (empty when tracefs is not mounted: unknown).
    :param qemu_version: ``qemu-system-x86_64 --version``'s version, or None.
    :param qemu_error: why QEMU's version could not be read.
    :param qemu_has_tcg: ``-accel help`` lists ``tcg`` (None: could not ask).
    :param qemu_knows_pv_eoi: ``-cpu help`` lists ``kvm-pv-eoi`` (None: could not ask).
    :param user: the effective user's name (``uid N`` if it has none).
    :param kvm_dev_group: the group owning ``/dev/kvm`` (None: no ``/dev/kvm``).
    :param kvm_dev_mode: ``/dev/kvm``'s permission bits, e.g. ``0660``.
    :param kvm_group_member: the user belongs to :attr:`kvm_dev_group` in the
        user database (``/etc/group`` or primary group).
    :param kvm_group_active: this process has that group now (a new member
        must log in again first).
    :param tracefs_listable: we can look into the tracefs directory at all
        (False: e.g. root's mode 0700; the tracepoint count is then unknown).
    :param cache_dir: the pveoi cache probed (None: not probed).
    :param cache_writable: we can write it (or create it: its nearest existing
        parent is writable).
    :param cache_key_readable: its SSH client key is readable by us (None: no key yet).
    """

    root: str
    cpu_vmx: bool
    cpu_svm: bool
    cpu_hypervisor: bool
    kvm_modules: tuple[str, ...]
    backend: str
    kvm_dev: bool
    kvm_access: bool
    apicv: bool | None
    avic: bool | None
    npt: bool | None
    ept: bool | None
    nested: bool | None
    pvm_native: bool | None
    is_root: bool
    cap_perfmon: bool | None
    perf_version: str | None
    perf_error: str | None
    perf_paranoid: int | None
    tracefs_path: str | None
    tracefs_mounted: bool
    tracefs_readable: bool
    kvm_tracepoints: int
    missing_tracepoints: tuple[str, ...]
    qemu_version: str | None
    qemu_error: str | None
    qemu_has_tcg: bool | None
    qemu_knows_pv_eoi: bool | None
    user: str = "root"
    kvm_dev_group: str | None = None
    kvm_dev_mode: str | None = None
    kvm_group_member: bool | None = None
    kvm_group_active: bool | None = None
    tracefs_listable: bool = True
    cache_dir: str | None = None
    cache_writable: bool | None = None
    cache_key_readable: bool | None = None

    @property
    def cpu_vendor(self) -> str:
        """``svm``, ``vmx`` or ``unknown``, by :func:`e2e.host.hostfacts.vendor_of` (the one rule)."""
        return vendor_of({flag for flag, on in (("svm", self.cpu_svm), ("vmx", self.cpu_vmx)) if on})

    @property
    def hardware_backend(self) -> bool:
        """The backend is VMX or SVM, i.e. can run standard guests."""
        return self.backend in HARDWARE_BACKENDS

    @property
    def kvm_usable(self) -> bool:
        """``/dev/kvm`` exists and we may open it read-write."""
        return self.kvm_dev and self.kvm_access

    @property
    def vendor_module(self) -> str | None:
        """The loaded vendor module behind :attr:`backend`, if any."""
        for module, backend in VENDOR_MODULES.items():
            if backend == self.backend:
                return module
        if self.backend.startswith("unknown-"):
            return self.backend.removeprefix("unknown-")
        return None


# ---------------------------------------------------------------- file probes


def _read(path: Path) -> str | None:
    """The text of *path*, or None when it is absent or unreadable."""
    try:
        return path.read_text(errors="replace")
    except OSError as err:
        log.debug("cannot read %s: %s", path, err)
        return None


def parse_bool_param(text: str | None) -> bool | None:
    """Parse a module parameter as a boolean.

    :param text: the parameter file's content (``Y``, ``N``, ``1``, ``0``...), or None.
    :returns: True/False, or None when absent or not a boolean.
    """
    if text is None:
        return None
    value = text.strip().lower()
    if value in ("y", "1", "yes", "on", "true"):
        return True
    if value in ("n", "0", "no", "off", "false"):
        return False
    try:
        return int(value) != 0
    except ValueError:
        return None


def kvm_modules(root: Path) -> tuple[str, ...]:
    """The ``kvm`` and ``kvm_*`` entries of ``/sys/module`` under *root*.

    :param root: the probed root.
    :returns: their names, sorted.
    """
    try:
        names = [p.name for p in (root / "sys/module").iterdir()]
    except OSError:
        return ()
    return tuple(sorted(n for n in names if n == "kvm" or n.startswith("kvm_")))


def backend_of(modules: Sequence[str], kvm_dev: bool) -> str:
    """Name the backend of ``/dev/kvm`` from the loaded modules.

    ``kvm_pvm`` wins over a hardware module if both were ever present (it is
    the one that cannot run standard guests; the conservative answer).

    :param modules: the ``kvm``/``kvm_*`` entries of ``/sys/module``.
    :param kvm_dev: whether ``/dev/kvm`` exists.
    :returns: ``pvm``, ``vmx``, ``svm``, ``unknown-<module>`` or ``none``.
    """
    present = set(modules)
    for module in ("kvm_pvm", "kvm_intel", "kvm_amd"):
        if module in present:
            return VENDOR_MODULES[module]
    others = sorted(present - {"kvm"})
    if others:
        return f"unknown-{others[0]}"
    if kvm_dev:
        return "unknown-kvm"
    return "none"


def _kvm_dev(root: Path) -> tuple[bool, bool]:
    """(exists, read-write for us) of ``/dev/kvm``; a fixture may use a regular file."""
    path = root / "dev/kvm"
    try:
        st = path.stat()
    except OSError:
        return False, False
    exists = stat.S_ISCHR(st.st_mode) if root == Path("/") else True
    return exists, exists and os.access(path, os.R_OK | os.W_OK)


def _paranoid(root: Path) -> int | None:
    text = _read(root / "proc/sys/kernel/perf_event_paranoid")
    try:
        return int(text.strip()) if text is not None else None
    except ValueError:
        return None


def _cap_perfmon(root: Path) -> bool | None:
    """Whether CAP_PERFMON or CAP_SYS_ADMIN is in ``/proc/self/status``'s CapEff."""
    for line in (_read(root / "proc/self/status") or "").splitlines():
        if line.startswith("CapEff:"):
            try:
                caps = int(line.split(":", 1)[1].strip(), 16)
            except ValueError:
                return None
            return bool(caps & (1 << CAP_PERFMON | 1 << CAP_SYS_ADMIN))
    return None


# ---------------------------------------------------------------- everything


def probe_host(root: Path = Path("/"), *, run: RunCommand | None = None,
               euid: int | None = None, perf: str = PERF_BINARY,
               qemu: str = QEMU_BINARY, cache: Path | None = None) -> HostFacts:
    """Probe this host (or a fixture tree) without booting anything.

    :param root: the directory to read ``/proc``, ``/sys`` and ``/dev`` from.
    :param run: how to run ``perf``/``qemu`` (default: :func:`e2e.host.tools.run_command`).
    :param euid: the effective uid to assume (default: ours).
    :param perf: the perf binary.
    :param qemu: the QEMU system emulator binary.
    :param cache: the pveoi cache to check (None: not checked).
    :returns: the facts; never raises for a missing file or tool.
    """
    root = Path(root)
    uid = os.geteuid() if euid is None else euid
    owner = probe_kvm_dev_owner(root, uid)
    cache_facts = probe_cache(cache) if cache is not None else None
    flags = cpu_flags(_read(root / "proc/cpuinfo"))
    modules = kvm_modules(root)
    kvm_dev, kvm_access = _kvm_dev(root)
    backend = backend_of(modules, kvm_dev)
    params = root / "sys/module"

    def param(module: str, name: str) -> bool | None:
        return parse_bool_param(_read(params / module / "parameters" / name))

    vendor = {"vmx": "kvm_intel", "svm": "kvm_amd"}.get(backend)
    trace = probe_tracefs(root)
    tools = probe_tools(run or run_command, perf=perf, qemu=qemu)
    facts = HostFacts(
        root=str(root),
        cpu_vmx="vmx" in flags,
        cpu_svm="svm" in flags,
        cpu_hypervisor="hypervisor" in flags,
        kvm_modules=modules,
        backend=backend,
        kvm_dev=kvm_dev,
        kvm_access=kvm_access,
        apicv=param("kvm_intel", "enable_apicv"),
        avic=param("kvm_amd", "avic"),
        npt=param("kvm_amd", "npt"),
        ept=param("kvm_intel", "ept"),
        nested=param(vendor, "nested") if vendor else None,
        pvm_native=param("kvm_pvm", "pvm_native"),
        is_root=uid == 0,
        cap_perfmon=_cap_perfmon(root),
        perf_version=tools.perf_version,
        perf_error=tools.perf_error,
        perf_paranoid=_paranoid(root),
        tracefs_path=trace.path,
        tracefs_mounted=trace.mounted,
        tracefs_readable=trace.readable,
        kvm_tracepoints=trace.count,
        missing_tracepoints=trace.missing,
        qemu_version=tools.qemu_version,
        qemu_error=tools.qemu_error,
        qemu_has_tcg=tools.qemu_has_tcg,
        qemu_knows_pv_eoi=tools.qemu_knows_pv_eoi,
        user=user_name(uid),
        kvm_dev_group=owner.group,
        kvm_dev_mode=owner.mode,
        kvm_group_member=owner.member,
        kvm_group_active=owner.active,
        tracefs_listable=trace.listable,
        cache_dir=cache_facts.path if cache_facts else None,
        cache_writable=cache_facts.writable if cache_facts else None,
        cache_key_readable=cache_facts.key_readable if cache_facts else None,
    )
    log.debug("host facts: %s", facts)
    return facts


__all__ = [
    "HARDWARE_BACKENDS",
    "NEEDED_TRACEPOINTS",
    "TRACEFS_DIRS",
    "VENDOR_MODULES",
    "HostFacts",
    "TracefsFacts",
    "backend_of",
    "cpu_flags",
    "kvm_modules",
    "parse_bool_param",
    "probe_host",
    "probe_tracefs",
]
