"""
Interrupt-heavy guest workloads, each a fixed amount of work (not a fixed time)
so that arms are comparable. A workload is a small declared object: add one by
adding an entry to :data:`WORKLOADS`.

Which interrupts each produces, and so whether PV EOI can help:
- ``timer``: LAPIC timer interrupts (edge): PV EOI applies to every one.
- ``ipi``: cross-CPU wakeup IPIs between two vCPUs (edge, fixed vectors): PV EOI applies.
  On 6.1 the remote wakeups arrive mostly as call-function IPIs (``CAL`` in
  /proc/interrupts), not reschedule IPIs (``RES``); each run records which.
- ``block``: virtio-blk completions over MSI-X (edge): PV EOI applies.
- ``net``: virtio-net RX/TX over MSI-X (edge): PV EOI applies. (A legacy
  INTx virtio device is level-triggered through the IOAPIC and can never use
  PV EOI; pveoi's guests always get MSI-X.)
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError


@dataclass(frozen=True)
class Workload:
    """One workload.

    :param command: argv run in the guest over SSH; ``{port}`` is replaced by
        the host-side server port for workloads that need one.
    :param ops: the operations the command performs (for per-op figures).
    :param smp: vCPUs the guest gets (an arm's ``smp`` overrides it). Two by default, so
        that the arm proof sees a second vCPU and per-CPU enabling bugs fail every workload.
    :param pin_last_cpu: run the command on the guest's last vCPU (``taskset``), never CPU 0
        alone: a kernel that sets PV EOI up on the boot CPU only must fail the measurement too.
    :param scratch_mb: size of the virtio-blk scratch disk (0: none).
    :param host_server: a host-side server to run during the workload, argv
        with ``{port}`` (e.g. iperf3 -s).
    :param needs: guest binaries it uses (all are in pveoi's image).
    :param sources: the workload's own interrupts, as shell patterns of the guest's names for
        them (``/proc/interrupts``, as the per-event trace names vectors): the ones its fixed
        amount of work raises. Beside them a run takes interrupts whose number follows the
        seconds it lasts (the guest's tick, call-function IPIs); the figure "EOI exits saved
        per workload interrupt" counts only these.
    """

    name: str
    command: tuple[str, ...]
    ops: int
    description: str
    smp: int = 2
    pin_last_cpu: bool = False
    scratch_mb: int = 0
    host_server: tuple[str, ...] = ()
    needs: tuple[str, ...] = ()
    timeout: float = 600.0
    sources: tuple[str, ...] = ()

    def argv(self, port: int | None = None, vcpus: int | None = None) -> list[str]:
        """The guest command, with the server port filled in and pinned to the last of ``vcpus``."""
        cmd = [a.replace("{port}", str(port)) if port is not None else a for a in self.command]
        n = vcpus or self.smp
        return ["taskset", "-c", str(n - 1), *cmd] if self.pin_last_cpu and n > 1 else cmd


WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in (
        Workload(
            "timer", ("pveoi-load", "timer", "3000", "100"), ops=3000, pin_last_cpu=True,
            description="3000 x 100 us clock_nanosleep on the last vCPU: one LAPIC timer interrupt each",
            needs=("pveoi-load", "taskset"), sources=("LOC",),
        ),
        Workload(
            "ipi", ("pveoi-load", "ipi", "3000"), ops=3000,
            description="3000 futex ping-pong round trips between threads pinned to CPU 0 and 1 "
                        "(cross-CPU wakeup IPIs, mostly CAL)",
            needs=("pveoi-load",), sources=("CAL", "RES"),
        ),
        Workload(
            "block",
            ("dd", "if=/dev/vda", "of=/dev/null", "bs=4k", "count=2048", "iflag=direct"),
            ops=2048, scratch_mb=16,
            description="2048 x 4 KiB O_DIRECT reads at queue depth 1 on virtio-blk (MSI-X completions)",
            needs=("dd",), sources=("virtio*-req.*",),
        ),
        Workload(
            "net", ("iperf3", "-c", "10.0.2.2", "-p", "{port}", "-n", "8M", "-l", "16K"), ops=512,
            description="8 MiB TCP to an iperf3 server on the host over virtio-net/slirp (MSI-X)",
            host_server=("iperf3", "-s", "--forceflush", "-B", "127.0.0.1", "-p", "{port}"),
            needs=("iperf3",), sources=("virtio*-input.*", "virtio*-output.*"),
        ),
    )
}


def get_workloads(names: list[str] | tuple[str, ...]) -> list[Workload]:
    """Look workloads up by name.

    :raises ConfigError: for an unknown name (listing the known ones).
    """
    out = []
    for name in names:
        if name not in WORKLOADS:
            raise ConfigError(f"unknown workload {name!r}", fix=f"use one of {', '.join(WORKLOADS)}")
        out.append(WORKLOADS[name])
    return out
