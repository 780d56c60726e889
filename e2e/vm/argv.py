"""
Pure builders of QEMU command lines from typed specs.

No shell is ever involved: every function returns a ``list[str]`` for
``subprocess.Popen(..., shell=False)``. Option values that may contain commas
are escaped with :func:`quote_optarg` (QEMU doubles commas).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError

ACCELS = ("kvm", "tcg")
#: The guest's command line. Besides the console and a quiet boot, it skips what costs seconds under
#: nested TCG and serves no workload (tests/bench_boot.py --append initcall_debug): pci=nommconf (config
#: space through I/O ports: pci_subsys_init took 3.1 s probing MMCONFIG), ipv6.disable=1 (the net
#: workload is IPv4; inet6_init 0.3-0.5 s), pty.legacy_count=0 (only /dev/pts is used; pty_init 0.3 s).
DEFAULT_APPEND = "console=ttyS0 quiet random.trust_cpu=on panic=-1 pci=nommconf ipv6.disable=1 pty.legacy_count=0"


def quote_optarg(value: str) -> str:
    """Escape a value for a QEMU ``key=value,...`` option (commas are doubled)."""
    return value.replace(",", ",,")


def on_off(value: bool) -> str:
    return "on" if value else "off"


@dataclass(frozen=True)
class MachineSpec:
    """Everything that defines one guest's QEMU.

    :param kernel: the bzImage.
    :param initrd: the initramfs, if any.
    :param append: the kernel command line.
    :param accel: ``kvm`` or ``tcg`` (resolve ``auto`` before building a spec).
    :param cpu_model: default ``host`` under KVM, ``max`` under TCG.
    :param pv_eoi: set ``kvm-pv-eoi`` on or off; None leaves QEMU's default.
    :param cpu_flags: more ``-cpu`` properties, e.g. ``("x2apic=on",)``.
    :param nested: show the guest SVM and VMX. Off by default: a guest here runs no hypervisor, and
        pveoi's kernel (KVM built in for its other job, the virtual host) then skips KVM's start-up,
        about 0.5 s of a nested guest's boot. ``cpu_flags`` come after, so an arm may turn them on.
    :param scratch_disk: a raw image attached as virtio-blk (``/dev/vda``).
    :param io_workers: pin QEMU's I/O thread pool to this many workers (``thread-pool-min`` =
        ``-max``, QEMU 7.1+): workers that are never reaped, so the set of QEMU's threads does not
        change under ``perf record -p`` (a worker exiting during perf's attach made it fail).
    :param ssh_forward: forward a free loopback port to the guest's port 22.
    :param paused: start with ``-S`` (vCPUs exist but do not run until ``cont``).
    """

    kernel: Path
    initrd: Path | None = None
    append: str = DEFAULT_APPEND
    accel: str = "tcg"
    cpu_model: str | None = None
    pv_eoi: bool | None = None
    cpu_flags: tuple[str, ...] = ()
    nested: bool = False
    smp: int = 1
    memory_mb: int = 256
    scratch_disk: Path | None = None
    io_workers: int | None = None
    ssh_forward: bool = True
    paused: bool = False
    qemu: str = "qemu-system-x86_64"
    name: str = "pveoi-guest"
    extra_args: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.accel not in ACCELS:
            raise ConfigError(f"accel {self.accel!r} is not one of {', '.join(ACCELS)}",
                              fix="resolve 'auto' with the doctor before building a MachineSpec")
        if self.smp < 1 or self.smp > 64:
            raise ConfigError(f"smp {self.smp} is out of range", fix="use 1..64 vCPUs")
        if self.memory_mb < 64:
            raise ConfigError(f"memory {self.memory_mb} MiB is too small", fix="give the guest at least 64 MiB")
        if len(self.append.encode()) >= 2048:
            raise ConfigError("kernel command line is 2048 bytes or longer", fix="shorten --append")

    @property
    def model(self) -> str:
        return self.cpu_model or ("host" if self.accel == "kvm" else "max")


def cpu_arg(spec: MachineSpec) -> str:
    """The ``-cpu`` value: model, ``kvm-pv-eoi``, SVM and VMX off unless ``nested``, and extra flags."""
    parts = [spec.model]
    if spec.pv_eoi is not None:
        parts.append(f"kvm-pv-eoi={on_off(spec.pv_eoi)}")
    if not spec.nested:
        parts.extend(("svm=off", "vmx=off"))
    parts.extend(spec.cpu_flags)
    return ",".join(parts)


def base_argv(qemu: str, name: str, accel: str, cpu: str, smp: int, memory_mb: int, qmp_fd: int,
              console_fd: int) -> list[str]:
    """What every pveoi QEMU has: q35, no defaults, QMP and the serial console on inherited sockets.

    :param accel: the ``-accel`` value (``kvm`` or ``tcg,thread=multi``).
    :param cpu: the ``-cpu`` value.
    """
    return [
        qemu,
        "-name", f"{quote_optarg(name)},debug-threads=on",
        "-machine", "q35",
        "-accel", accel,
        "-cpu", cpu,
        "-smp", str(smp),
        "-m", f"{memory_mb}M",
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
        "-chardev", f"socket,id=mon,fd={qmp_fd}",
        "-mon", "chardev=mon,mode=control",
        "-chardev", f"socket,id=con,fd={console_fd}",
        "-serial", "chardev:con",
    ]


def qemu_argv(spec: MachineSpec, qmp_fd: int, console_fd: int) -> list[str]:
    """QEMU's argv for ``spec``.

    QMP and the serial console are already-connected sockets passed by fd
    (one end of a ``socketpair``), so there is no socket file to race on.

    :param qmp_fd: the fd QEMU inherits for QMP.
    :param console_fd: the fd QEMU inherits for the serial console.
    """
    argv = base_argv(spec.qemu, spec.name, "kvm" if spec.accel == "kvm" else "tcg,thread=multi", cpu_arg(spec),
                     spec.smp, spec.memory_mb, qmp_fd, console_fd)
    argv += [
        "-kernel", str(spec.kernel),
        "-append", spec.append,
    ]
    if spec.initrd is not None:
        argv += ["-initrd", str(spec.initrd)]
    if spec.ssh_forward:
        argv += ["-netdev", "user,id=net0,hostfwd=tcp:127.0.0.1:0-:22",
                 "-device", "virtio-net-pci,netdev=net0"]
    if spec.io_workers is not None:
        argv += ["-object", f"main-loop,id=main-loop,thread-pool-min={spec.io_workers},"
                            f"thread-pool-max={spec.io_workers}"]
    if spec.scratch_disk is not None:
        argv += ["-drive", f"file={quote_optarg(str(spec.scratch_disk))},if=none,id=scratch,format=raw,"
                           "cache=writeback,aio=threads",
                 "-device", "virtio-blk-pci,drive=scratch"]
    if spec.paused:
        argv.append("-S")
    argv += list(spec.extra_args)
    return argv


def parse_usernet_port(info: str, guest_port: int = 22) -> int:
    """The host port of the ``hostfwd`` to ``guest_port`` in HMP ``info usernet`` output.

    :raises ConfigError: if no such forward is listed.
    """
    for line in info.splitlines():
        fields = line.split()
        if len(fields) >= 7 and fields[0].startswith("TCP[HOST_FORWARD]"):
            try:
                src_port, dst_port = int(fields[3]), int(fields[5])
            except ValueError:
                continue
            if dst_port == guest_port:
                return src_port
    raise ConfigError(f"no host forward to guest port {guest_port} in 'info usernet'",
                      fix="start the machine with ssh_forward=True")
