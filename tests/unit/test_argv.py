"""Unit tests for e2e.vm.argv: QEMU command lines from MachineSpec, and ``info usernet`` parsing."""

from __future__ import annotations

from pathlib import Path

import pytest

from e2e.errors import ConfigError
from e2e.vm.argv import (
    DEFAULT_APPEND,
    MachineSpec,
    cpu_arg,
    on_off,
    parse_usernet_port,
    qemu_argv,
    quote_optarg,
)

KERNEL = Path("/k/bzImage")


def spec(**kw: object) -> MachineSpec:
    return MachineSpec(kernel=KERNEL, **kw)  # type: ignore[arg-type]


def value_after(argv: list[str], option: str) -> str:
    """The value following the only occurrence of ``option``."""
    assert argv.count(option) == 1, f"{option} appears {argv.count(option)} times in {argv}"
    return argv[argv.index(option) + 1]


# ---------------------------------------------------------------- helpers


def test_quote_optarg_doubles_commas() -> None:
    assert quote_optarg("plain") == "plain"
    assert quote_optarg("a,b") == "a,,b"
    assert quote_optarg(",,") == ",,,,"


def test_on_off() -> None:
    assert on_off(True) == "on"
    assert on_off(False) == "off"


# ---------------------------------------------------------------- MachineSpec


def test_defaults() -> None:
    s = spec()
    assert s.accel == "tcg"
    assert s.append == DEFAULT_APPEND
    assert s.pv_eoi is None


@pytest.mark.parametrize(
    ("kw", "words"),
    [
        ({"accel": "auto"}, "accel"),
        ({"accel": "KVM"}, "accel"),
        ({"smp": 0}, "smp"),
        ({"smp": 65}, "smp"),
        ({"memory_mb": 63}, "memory"),
        ({"append": "x" * 2048}, "command line"),
    ],
)
def test_invalid_specs_are_config_errors(kw: dict[str, object], words: str) -> None:
    with pytest.raises(ConfigError, match=words) as info:
        spec(**kw)
    assert info.value.fix, "every spec error names a fix"


def test_limits_are_inclusive() -> None:
    spec(smp=1)
    spec(smp=64)
    spec(memory_mb=64)
    spec(append="x" * 2047)


def test_model_follows_accel_unless_given() -> None:
    assert spec(accel="kvm").model == "host"
    assert spec(accel="tcg").model == "max"
    assert spec(accel="kvm", cpu_model="EPYC").model == "EPYC"


def test_spec_is_frozen() -> None:
    s = spec()
    with pytest.raises(AttributeError):
        s.smp = 2  # type: ignore[misc]


# ---------------------------------------------------------------- -cpu


@pytest.mark.parametrize(
    ("pv_eoi", "expected"),
    [(None, "max,svm=off,vmx=off"), (True, "max,kvm-pv-eoi=on,svm=off,vmx=off"),
     (False, "max,kvm-pv-eoi=off,svm=off,vmx=off")],
)
def test_cpu_arg_pv_eoi(pv_eoi: bool | None, expected: str) -> None:
    assert cpu_arg(spec(pv_eoi=pv_eoi)) == expected


def test_cpu_arg_flags_follow_pv_eoi() -> None:
    s = spec(accel="kvm", pv_eoi=False, cpu_flags=("x2apic=on", "kvm-pv-ipi=off"))
    assert cpu_arg(s) == "host,kvm-pv-eoi=off,svm=off,vmx=off,x2apic=on,kvm-pv-ipi=off"


def test_cpu_arg_hides_virtualization_unless_nested_or_an_arm_says() -> None:
    """A guest sees no SVM/VMX (pveoi's kernel then skips KVM's start-up); nested shows them, and an
    arm's own flag comes last, so QEMU lets it win."""
    assert cpu_arg(spec(accel="kvm", nested=True)) == "host"
    assert cpu_arg(spec(accel="kvm", cpu_flags=("svm=on",))) == "host,svm=off,vmx=off,svm=on"


# ---------------------------------------------------------------- qemu_argv


def test_qemu_argv_basic_shape() -> None:
    argv = qemu_argv(spec(), qmp_fd=7, console_fd=9)
    assert all(isinstance(a, str) for a in argv)
    assert argv[0] == "qemu-system-x86_64"
    assert value_after(argv, "-machine") == "q35"
    assert value_after(argv, "-accel") == "tcg,thread=multi"
    assert value_after(argv, "-cpu") == "max,svm=off,vmx=off"
    assert value_after(argv, "-smp") == "1"
    assert value_after(argv, "-m") == "256M"
    assert value_after(argv, "-kernel") == str(KERNEL)
    assert value_after(argv, "-append") == DEFAULT_APPEND
    assert "socket,id=mon,fd=7" in argv
    assert "socket,id=con,fd=9" in argv
    assert value_after(argv, "-serial") == "chardev:con"
    assert value_after(argv, "-mon") == "chardev=mon,mode=control"
    for flag in ("-nodefaults", "-no-user-config", "-no-reboot"):
        assert flag in argv
    assert value_after(argv, "-display") == "none"
    # Defaults: SSH forward on; no initrd, no scratch disk, not paused.
    assert "hostfwd=tcp:127.0.0.1:0-:22" in value_after(argv, "-netdev")
    assert value_after(argv, "-device") == "virtio-net-pci,netdev=net0"
    for absent in ("-initrd", "-drive", "-S"):
        assert absent not in argv


def test_qemu_argv_kvm_and_pv_eoi() -> None:
    argv = qemu_argv(spec(accel="kvm", pv_eoi=True, smp=2, memory_mb=512), 3, 4)
    assert value_after(argv, "-accel") == "kvm"
    assert value_after(argv, "-cpu") == "host,kvm-pv-eoi=on,svm=off,vmx=off"
    assert value_after(argv, "-smp") == "2"
    assert value_after(argv, "-m") == "512M"


def test_qemu_argv_append_is_one_argument() -> None:
    append = "console=ttyS0 no-kvm-pv-eoi foo='a b'"
    argv = qemu_argv(spec(append=append), 3, 4)
    assert value_after(argv, "-append") == append


def test_qemu_argv_optional_parts() -> None:
    s = spec(initrd=Path("/i/initrd.cpio"), scratch_disk=Path("/d/dis,k.img"), ssh_forward=False,
             paused=True, extra_args=("-trace", "kvm_*"), name="a,b", qemu="/opt/qemu")
    argv = qemu_argv(s, 3, 4)
    assert argv[0] == "/opt/qemu"
    assert value_after(argv, "-initrd") == "/i/initrd.cpio"
    drive = value_after(argv, "-drive")
    assert drive.startswith("file=/d/dis,,k.img,if=none,id=scratch,format=raw,")
    assert value_after(argv, "-device") == "virtio-blk-pci,drive=scratch"
    assert "-netdev" not in argv
    assert "-S" in argv
    assert argv[-2:] == ["-trace", "kvm_*"]
    assert value_after(argv, "-name") == "a,,b,debug-threads=on"
    assert "-object" not in argv  # the I/O thread pool is pinned only when asked
    pinned = qemu_argv(spec(scratch_disk=Path("/d/disk.img"), io_workers=4), 3, 4)
    assert value_after(pinned, "-object") == "main-loop,id=main-loop,thread-pool-min=4,thread-pool-max=4"


def test_qemu_argv_is_pure() -> None:
    s = spec(pv_eoi=False, paused=True)
    assert qemu_argv(s, 5, 6) == qemu_argv(s, 5, 6)


# ---------------------------------------------------------------- info usernet

USERNET = """\
Hub -1 (net0):
  Protocol[State]    FD  Source Address  Port   Dest. Address  Port RecvQ SendQ
  UDP[HOST_FORWARD]  15       127.0.0.1 40001       10.0.2.15    53     0     0
  TCP[HOST_FORWARD]  14       127.0.0.1 41235       10.0.2.15    22     0     0
  TCP[ESTABLISHED]   23       10.0.2.15 52012        10.0.2.2  5201     0     0
  TCP[HOST_FORWARD]  16       127.0.0.1 41299       10.0.2.15  8080     0     0
"""


def test_parse_usernet_port() -> None:
    assert parse_usernet_port(USERNET) == 41235
    assert parse_usernet_port(USERNET, guest_port=8080) == 41299


def test_parse_usernet_port_ignores_udp_and_connections() -> None:
    with pytest.raises(ConfigError, match="guest port 53"):
        parse_usernet_port(USERNET, guest_port=53)
    with pytest.raises(ConfigError, match="guest port 5201"):
        parse_usernet_port(USERNET, guest_port=5201)


def test_parse_usernet_port_without_forward() -> None:
    with pytest.raises(ConfigError, match="ssh_forward"):
        parse_usernet_port("Hub -1 (net0):\n  Protocol[State]    FD  Source Address  Port\n")
    with pytest.raises(ConfigError):
        parse_usernet_port("")
