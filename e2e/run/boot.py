"""
The one path to a booted, proven guest, used by the A/B, ``pveoi boot`` and the
pytest plugin.

:func:`machine_spec` turns an :class:`~e2e.model.plan.Arm` into the QEMU
machine that runs it; :func:`boot` launches that machine paused, proves that
QEMU holds the arm (QMP's per-vCPU ``kvm-pv-eoi``), lets it run, waits for the
ready line, opens SSH and proves the guest's own view of the arm (its CPUID and
``MSR_KVM_PV_EOI_EN`` on every vCPU, from the guest patch's debugfs file). A
guest that comes back from :func:`boot` is the arm it was asked to be;
otherwise :func:`check_qmp_arm` or :func:`check_guest_arm` said why (a
capability of QEMU/KVM, or a finding against the kernel under test).
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..build.image import READY_PATTERN
from ..errors import Finding, MeasurementError
from ..measure.guest_counters import STATE_COMMAND, GuestState
from ..model.plan import Arm, BootPlan
from ..vm.argv import DEFAULT_APPEND, MachineSpec
from ..vm.cpus import VCpu
from ..vm.machine import Machine
from ..vm.ssh import GuestSsh

log = logging.getLogger(__name__)


def machine_spec(arm: Arm, *, kernel: Path, initrd: Path, accel: str, smp: int, memory_mb: int, name: str,
                 qemu: str = "qemu-system-x86_64", scratch_disk: Path | None = None,
                 io_workers: int | None = None) -> MachineSpec:
    """The paused machine that runs ``arm``: its kernel (or ``kernel``), PV EOI, CPU flags, vCPUs
    (``arm.smp`` or ``smp``) and command line after pveoi's :data:`~e2e.vm.argv.DEFAULT_APPEND`."""
    return MachineSpec(kernel=arm.kernel or kernel, initrd=initrd, append=f"{DEFAULT_APPEND} {arm.append}".strip(),
                       accel=accel, pv_eoi=arm.pv_eoi, cpu_flags=arm.cpu_flags, smp=arm.smp or smp,
                       memory_mb=memory_mb, scratch_disk=scratch_disk,
                       io_workers=io_workers,
                       paused=True, qemu=qemu, name=name)


@dataclass
class ProvenGuest:
    """A running guest whose arm was proven from both sides.

    :param kvm: QMP's ``query-kvm`` (``enabled`` false: TCG, nothing about PV EOI to prove).
    :param readback: QMP's ``kvm-pv-eoi`` per vCPU, read while paused.
    :param state_output: what the state command printed (the state, then any ``extra``'s output).
    :param marks: ``time.monotonic()`` at each step: ``qemu_paused``, ``guest_ready``, ``ssh_up``,
        ``state_read`` (plus the caller's own, e.g. ``start``).
    """

    machine: Machine
    ssh: GuestSsh
    arm: Arm
    kvm: dict[str, bool]
    readback: tuple[bool, ...]
    threads: tuple[VCpu, ...]
    ready: str
    state: GuestState
    state_output: str
    marks: dict[str, float] = field(default_factory=dict)

    @property
    def kvm_enabled(self) -> bool:
        return bool(self.kvm["enabled"])

    @property
    def thread_ids(self) -> list[int]:
        return [v.thread_id for v in self.threads]


def boot(stack: contextlib.ExitStack, machine: Machine, arm: Arm, *, private_key: Path, host_key_line: str,
         boot_timeout: float, extra: str = "", marks: dict[str, float] | None = None,
         while_booting: Callable[[Machine, tuple[VCpu, ...]], None] | None = None) -> ProvenGuest:
    """Launch ``machine`` (paused, see :func:`machine_spec`) into ``stack``, prove the arm, and return the
    guest with SSH up: :func:`launch`, then :func:`come_up`.

    :param extra: a shell script run right after the state command in the same SSH round trip
        (the trace's guest view), its output kept in :attr:`ProvenGuest.state_output`.
    :param marks: where to record the steps' times (a new dict if None).
    :param while_booting: called with the machine and its vCPU threads right after the guest is let run,
        before its ready line is awaited: what takes a while to set up (perf attaching to the vCPU
        threads) overlaps the boot.
    :raises MeasurementError: QEMU or the guest's CPUID does not hold the arm (capability).
    :raises Finding: the guest kernel did not do with PV EOI what the arm asked for.
    :raises GuestError: launch, boot, SSH or the state read failed (infrastructure).
    """
    launched = launch(stack, machine, arm, marks=marks, while_booting=while_booting)
    return come_up(launched, private_key=private_key, host_key_line=host_key_line, boot_timeout=boot_timeout,
                   extra=extra)


@dataclass
class Launched:
    """A guest let run after QEMU was proven to hold its arm, its ready line not yet awaited."""

    machine: Machine
    arm: Arm
    kvm: dict[str, bool]
    readback: tuple[bool, ...]
    threads: tuple[VCpu, ...]
    marks: dict[str, float]


def launch(stack: contextlib.ExitStack, machine: Machine, arm: Arm, *, marks: dict[str, float] | None = None,
           while_booting: Callable[[Machine, tuple[VCpu, ...]], None] | None = None) -> Launched:
    """The first half of :func:`boot`: start ``machine`` paused into ``stack``, prove QEMU holds ``arm``
    (QMP), let the guest run and call ``while_booting``; returns at once, the guest booting.

    :raises MeasurementError: QEMU does not hold the arm (capability).
    :raises GuestError: the launch or QMP failed (infrastructure).
    """
    marks = {} if marks is None else marks
    stack.enter_context(machine)
    threads = tuple(machine.vcpus())
    readback = tuple(machine.pv_eoi_readback())
    kvm = machine.query_kvm()
    check_qmp_arm(arm, readback, kvm["enabled"])
    marks["qemu_paused"] = time.monotonic()
    machine.resume()
    if while_booting is not None:
        while_booting(machine, threads)
    return Launched(machine, arm, kvm, readback, threads, marks)


def come_up(launched: Launched, *, private_key: Path, host_key_line: str, boot_timeout: float,
            extra: str = "") -> ProvenGuest:
    """The second half of :func:`boot`: wait for the ready line (``boot_timeout`` from now), open SSH and
    prove the guest's own view of the arm.

    :raises Finding: the guest kernel did not do with PV EOI what the arm asked for.
    :raises GuestError: boot, SSH or the state read failed (infrastructure).
    """
    machine, arm, marks = launched.machine, launched.arm, launched.marks
    ready = machine.wait_ready(boot_timeout)
    marks["guest_ready"] = time.monotonic()
    ssh = machine.ssh(private_key, host_key_line, timeout=60)
    marks["ssh_up"] = time.monotonic()
    command = [*STATE_COMMAND[:2], f"{STATE_COMMAND[2]}; {extra}"] if extra else STATE_COMMAND
    output = ssh.run(command, timeout=30).check().stdout
    # The state's parser reads only its own lines (``cpuN feature=...``), so ``extra``'s output after
    # them is left alone.
    state = GuestState.parse(output)
    check_guest_arm(arm, state, launched.kvm["enabled"])
    marks["state_read"] = time.monotonic()
    return ProvenGuest(machine, ssh, arm, launched.kvm, launched.readback, launched.threads, ready, state, output,
                       marks)


def run_boot_plan(plan: BootPlan) -> int:
    """``pveoi boot``: boot ``plan``'s guest, say what QEMU and the guest report about PV EOI (stderr),
    then run its command with the output streamed (or, with no command, an interactive shell).
    The same code runs here and inside the virtual KVM host (``python -m e2e.run.inner boot``).

    :returns: the command's exit status.
    """
    from ..build.image import load_image

    img = load_image(plan.image)
    spec = machine_spec(plan.arm, kernel=plan.kernel, initrd=img.initrd, accel=plan.accel, smp=plan.smp,
                        memory_mb=plan.memory_mb, name="pveoi-boot")
    with contextlib.ExitStack() as stack:
        guest = boot(stack, Machine(spec, READY_PATTERN, artifacts=plan.logs), plan.arm,
                     private_key=img.identity.private_key, host_key_line=img.host_key_line,
                     boot_timeout=plan.boot_timeout)
        log.info("guest ready (%s)", guest.ready)
        for line in describe(guest, "on" if plan.arm.pv_eoi else "off"):
            print(line, file=sys.stderr)
        if not plan.command:
            return guest.ssh.interactive()

        def stream(kind: str, data: bytes) -> None:
            out = sys.stdout if kind == "stdout" else sys.stderr
            out.buffer.write(data)
            out.flush()

        return guest.ssh.run(list(plan.command), timeout=plan.timeout, on_output=stream).exit_status


def describe(guest: ProvenGuest, requested: str) -> list[str]:
    """What QMP and the guest say about PV EOI, one line each (``pveoi boot`` prints them)."""
    note = "" if guest.kvm_enabled else " (TCG: QEMU filters KVM paravirtual CPUID features, so it reads off)"
    lines = [f"kvm-pv-eoi: requested {requested}, QMP reads "
             f"{', '.join('on' if r else 'off' for r in guest.readback)}{note}"]
    if guest.state.pveoi is None:
        why = ("not a KVM guest: the guest patch's file exists only on KVM" if not guest.kvm_enabled
               else "guest kernel without guest_patches/0001")
        lines.append(f"guest view: no /sys/kernel/debug/kvm_pv_eoi ({why})")
    else:
        lines += [f"guest view: cpu{c.cpu} feature={int(c.feature)} enabled={int(c.enabled)}"
                  for c in guest.state.pveoi.values()]
    return lines


def check_qmp_arm(arm: Arm, readback: Sequence[bool], kvm_enabled: bool) -> None:
    """Under KVM, QEMU's per-vCPU ``kvm-pv-eoi`` (``qom-get``) must be what the arm asked for.

    (Under TCG QEMU filters every KVM paravirtual feature, so there is nothing to prove.)

    :raises MeasurementError: on a mismatch (this QEMU/KVM cannot run the experiment: capability).
    """
    if kvm_enabled and arm.pv_eoi is not None and any(r != arm.pv_eoi for r in readback):
        raise MeasurementError(
            f"arm {arm.name} asked for kvm-pv-eoi={'on' if arm.pv_eoi else 'off'} but QMP reads {list(readback)}",
            fix="this QEMU/KVM does not honour kvm-pv-eoi; check `pveoi doctor`",
        )


def check_guest_arm(arm: Arm, state: GuestState, kvm_enabled: bool) -> None:
    """The guest's own view, on every vCPU, must agree with the arm (where the guest patch reports it).

    :raises MeasurementError: a vCPU's CPUID disagrees with what QEMU was told (QEMU/KVM: capability).
    :raises Finding: the host offered PV EOI (and the command line did not refuse it) but a
        vCPU's kernel did not enable it, or enabled it though refused: a bug of the kernel under test.
    """
    if state.pveoi is None or not kvm_enabled:
        return
    cpus = sorted(state.pveoi.values(), key=lambda c: c.cpu)
    if arm.pv_eoi is not None:
        wrong = [f"cpu{c.cpu}" for c in cpus if c.feature != arm.pv_eoi]
        if wrong:
            raise MeasurementError(
                f"arm {arm.name}: QEMU was told kvm-pv-eoi={'on' if arm.pv_eoi else 'off'} but the guest's CPUID "
                f"says otherwise on {', '.join(wrong)}", fix="check QEMU's -cpu handling and `pveoi doctor`")
    offered = [c for c in cpus if c.feature]
    if arm.expects_pv_eoi:
        off = [c.cpu for c in offered if not c.enabled]
        if off:
            raise Finding(
                f"arm {arm.name}: {', '.join(f'cpu{n}' for n in off)} did not enable PV EOI "
                f"(MSR_KVM_PV_EOI_EN) although its CPUID offers KVM_FEATURE_PV_EOI "
                f"(enabled on {', '.join(f'cpu{c.cpu}' for c in offered if c.enabled) or 'no CPU'})",
                fix="the guest kernel must enable PV EOI on every CPU (arch/x86/kernel/kvm.c, kvm_guest_cpu_init)",
                vcpu=off[0])
    else:
        on = [c.cpu for c in cpus if c.enabled]
        if on:
            raise Finding(
                f"arm {arm.name}: {', '.join(f'cpu{n}' for n in on)} enabled PV EOI although "
                + ("the kernel command line refuses it (no-kvm-pv-eoi)" if arm.pv_eoi is not False
                   else "its CPUID does not offer it"),
                fix="check the guest kernel's PV EOI setup (arch/x86/kernel/kvm.c)", vcpu=on[0])
