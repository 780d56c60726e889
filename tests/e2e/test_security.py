"""Security properties of the harness, checked for real where it matters.

* SSH keys: the client key is per cache, 0600 in a 0700 directory; the guest's
  host key lives only in the cache's private image entry; no private key is in git.
* Network: the guest's SSH forward (and the net workload's iperf3 server) listen
  on 127.0.0.1 only; QMP and the console are socketpairs, never socket files.
* Temp dirs: every pveoi temp dir (machine work dirs, perf's FIFOs) and the
  virtual host's control dir are 0700.
* The virtual host: the host's root is read-only in it (QEMU's ``readonly=on``,
  not only the guest's ``ro`` mount: a remount read-write still gets EROFS), the
  results directory is the one writable share, and a results path that would
  split L1's kernel command line is refused.
* Guest commands are argument lists: shell metacharacters reach the guest as
  literal argv elements, through :meth:`GuestSsh.run` and ``pveoi boot --``.
"""

from __future__ import annotations

import errno
import os
import re
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from e2e.build.cache import Cache
from e2e.build.image import READY_PATTERN
from e2e.build.sshkey import ssh_identity
from e2e.errors import ConfigError
from e2e.measure.guest_counters import STATE_COMMAND
from e2e.model.workloads import WORKLOADS
from e2e.util import tmpdirs
from e2e.vm.argv import MachineSpec, qemu_argv
from e2e.vm.machine import Machine
from e2e.vm.vhost import VhostSpec, run_in_vhost, vhost_argv

REPO = Path(__file__).resolve().parents[2]

#: Private key armour of PEM/OpenSSH/PuTTY (the pattern is split so this file does not match itself).
PRIVATE_KEY = re.compile(rb"-----BEGIN (?:[A-Z0-9]+ )*" + rb"PRIVATE KEY-----|PuTTY-User-" + rb"Key-File-")
KEY_FILE_NAMES = re.compile(r"(^|/)(id_(rsa|dsa|ecdsa|ed25519)|.*\.(pem|key|ppk)|dropbear_.*_host_key)$")

#: A word list no shell could pass through unquoted unchanged.
NASTY = ["a b", "$(touch /tmp/pwned)", "`touch /tmp/pwned2`", "; touch /tmp/pwned3", "x && false",
         "'", '"', "\\", "*", "~", "$HOME", "a\nb", "-n", "", "|", ">/tmp/pwned4", "#comment"]
ECHO_ARGS = ["sh", "-c", 'for a in "$@"; do printf "<%s>\\n" "$a"; done', "sh"]
PWNED = ["/tmp/pwned", "/tmp/pwned2", "/tmp/pwned3", "/tmp/pwned4"]


# ---------------------------------------------------------------- keys (no boot)


def test_no_private_key_material_in_git() -> None:
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    names = [n.decode() for n in files.split(b"\0") if n]
    assert len(names) > 20, "git ls-files listed too little to be the checkout"
    offenders = [n for n in names if KEY_FILE_NAMES.search(n)]
    for name in names:
        path = REPO / name
        if path.is_file() and not path.is_symlink() and PRIVATE_KEY.search(path.read_bytes()):
            offenders.append(name)
    assert not offenders, f"private keys (or key-named files) tracked in git: {offenders}"
    assert PRIVATE_KEY.search(b"-----BEGIN OPENSSH " + b"PRIVATE KEY-----\n"), "the scan would find one"
    assert PRIVATE_KEY.search(b"-----BEGIN EC " + b"PRIVATE KEY-----\n")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_ssh_client_key_is_per_cache_0600_in_a_0700_dir(tmp_path: Path) -> None:
    first = ssh_identity(Cache(tmp_path / "one"))
    second = ssh_identity(Cache(tmp_path / "two"))
    assert first.public_line != second.public_line, "each cache generates its own key"
    for ident in (first, second):
        assert _mode(ident.private_key) == 0o600 and _mode(ident.private_key.parent) == 0o700
        assert ident.private_key.stat().st_uid == os.geteuid()
    # Loosened modes are repaired, the key kept.
    first.private_key.chmod(0o644)
    first.private_key.parent.chmod(0o755)
    again = ssh_identity(Cache(tmp_path / "one"))
    assert again.public_line == first.public_line
    assert _mode(again.private_key) == 0o600 and _mode(again.private_key.parent) == 0o700


def test_the_caches_own_key_is_private() -> None:
    key = Cache().root / "ssh" / "id_ecdsa"
    if not key.exists():
        pytest.skip(f"no SSH key in this cache yet ({key})")
    assert _mode(key) == 0o600 and _mode(key.parent) == 0o700


def test_guest_host_key_is_only_in_a_private_image_entry(guest_image) -> None:  # type: ignore[no-untyped-def]
    """The initramfs carries the guest's private host key: its entry must be ours alone."""
    entry = guest_image.path
    assert _mode(entry) & 0o077 == 0 or _mode(guest_image.initrd) & 0o077 == 0, \
        f"{entry} ({_mode(entry):o}) and {guest_image.initrd} ({_mode(guest_image.initrd):o}) are readable by others"


def test_pveoi_temp_dirs_are_0700_even_with_umask_0(tmp_path: Path) -> None:
    """Machine work dirs, perf's control FIFOs, image and A/B scratch all come from e2e.util.tmpdirs."""
    old = os.umask(0)
    try:
        made = tmpdirs.mkdtemp("security", tmp_path)
        with tmpdirs.tempdir("security", tmp_path) as ctx:
            assert _mode(ctx) == 0o700
    finally:
        os.umask(old)
    assert _mode(made) == 0o700 and made.stat().st_uid == os.geteuid()


# ---------------------------------------------------------------- argv (no boot)


def test_qemu_and_vhost_argv_expose_nothing(tmp_path: Path) -> None:
    argv = qemu_argv(MachineSpec(kernel=Path("/k")), 3, 4)
    joined = " ".join(argv)
    assert "hostfwd=tcp:127.0.0.1:0-:22" in joined
    assert "0.0.0.0" not in joined and "unix:" not in joined and "-qmp" not in argv, \
        "QMP and console go over inherited socketpairs, no socket files or TCP"
    varg = vhost_argv(VhostSpec(kernel=Path("/k")), tmp_path, 3, 4, 5)
    fsdevs = [varg[i + 1] for i, a in enumerate(varg) if a == "-fsdev"]
    assert len(fsdevs) == 2
    root = next(f for f in fsdevs if "path=/," in f)
    assert "readonly=on" in root.split(",")
    writable = [f for f in fsdevs if "readonly=on" not in f.split(",")]
    assert writable == [f"local,id=results,path={tmp_path},security_model=none,multidevs=remap"]
    assert "-netdev" not in varg, "the virtual host has no network at all"


@pytest.mark.parametrize("bad", ["/tmp/a b", "/tmp/x\tinit=/bin/evil", '/tmp/q"uote', "/tmp/back\\slash"])
def test_vhost_refuses_a_results_path_that_would_split_its_kernel_command_line(bad: str) -> None:
    with pytest.raises(ConfigError, match="kernel command line"):
        vhost_argv(VhostSpec(kernel=Path("/k")), Path(bad), 3, 4, 5)


def test_guest_commands_are_argument_lists() -> None:
    assert isinstance(STATE_COMMAND, list) and all(isinstance(a, str) for a in STATE_COMMAND)
    for workload in WORKLOADS.values():
        assert isinstance(workload.command, tuple | list), workload.name
        if workload.host_server:
            server = list(workload.host_server)
            assert server[server.index("-B") + 1] == "127.0.0.1", f"{workload.name}'s host server binds loopback"


# ---------------------------------------------------------------- a real guest (TCG)


def _listening_sockets(pid: int) -> list[tuple[str, str, int]]:
    """(family, address hex, port) of every TCP socket of *pid* in LISTEN state."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    for family in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{family}").read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and inode in inodes:
                addr, port = local.split(":")
                found.append((family, addr, int(port, 16)))
    return found


@pytest.fixture(scope="module")
def booted(guest_kernel: Path, guest_image) -> Iterator[Machine]:  # type: ignore[no-untyped-def]
    spec = MachineSpec(kernel=guest_kernel, initrd=guest_image.initrd, accel="tcg", name="pveoi-security")
    with Machine(spec, READY_PATTERN) as m:
        m.wait_ready(120)
        yield m


@pytest.mark.qemu
def test_hostfwd_listens_on_loopback_only(booted: Machine) -> None:
    port = booted.ssh_port()
    listening = _listening_sockets(booted.pid)
    assert ("tcp", "0100007F", port) in listening, f"SSH forward {port} not on 127.0.0.1: {listening}"
    assert all(family == "tcp" and addr == "0100007F" for family, addr, _ in listening), \
        f"QEMU listens beyond loopback: {listening}"
    # And from the outside: another address of this host is refused.
    outside = [a for a in _host_addresses() if not a.startswith("127.") and a != "::1"]
    for addr in outside:
        family = socket.AF_INET6 if ":" in addr else socket.AF_INET
        with socket.socket(family) as s:
            s.settimeout(2)
            assert s.connect_ex((addr, port)) != 0, f"{addr}:{port} accepted a connection"


def _host_addresses() -> list[str]:
    out = subprocess.run(["hostname", "-I"], capture_output=True, text=True, check=False).stdout
    return out.split()


@pytest.mark.qemu
def test_machine_work_dir_is_0700(booted: Machine) -> None:
    assert _mode(booted.workdir) == 0o700
    assert booted.workdir.stat().st_uid == os.geteuid()


@pytest.mark.qemu
def test_shell_metacharacters_reach_the_guest_as_literal_argv(booted: Machine, guest_image) -> None:  # type: ignore[no-untyped-def]
    ssh = booted.ssh(guest_image.identity.private_key, guest_image.host_key_line)
    res = ssh.run([*ECHO_ARGS, *NASTY], timeout=60).check()
    assert res.stdout == "".join(f"<{a}>\n" for a in NASTY)
    for path in PWNED:
        assert ssh.run(["test", "-e", path], timeout=30).exit_status == 1, f"{path} was created in the guest"
    # A single word with spaces is one program name, not a command line.
    assert ssh.run(["true; echo injected"], timeout=30).stdout == ""


@pytest.mark.qemu
def test_cli_boot_passes_arguments_literally(guest_kernel: Path, guest_image) -> None:  # type: ignore[no-untyped-def]
    args = ["a;b", "$(id)", "`id`", "c d", "*"]
    proc = subprocess.run([sys.executable, "-m", "e2e.cli", "boot", "--accel", "tcg", "--",
                           "printf", "<%s>\\n", *args], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout == "".join(f"<{a}>\n" for a in args)


# ---------------------------------------------------------------- the virtual KVM host


VHOST_PROBE = r"""
set -u
try() {  # try PATH: create a file there; WROTE, or the error (strerror) of touch
    if touch "$1" 2>/tmp/err; then echo WROTE; else cat /tmp/err; fi
}
echo "root=$(try /pveoi-ro-probe)"
echo "repo=$(try "$REPO/.pveoi-ro-probe")"
echo "hostview=$(try /run/pveoi-host/pveoi-ro-probe)"
mount -o remount,rw / 2>/dev/null && echo remounted=yes || echo remounted=no
echo "after_remount=$(try /pveoi-ro-probe)"
echo "results=$(try "$RESULTS/written-in-l1")"
stat -c 'ctl=%a' "$RESULTS/.pveoi-vhost"
"""


@pytest.mark.kvm
def test_vhost_shares_root_read_only_and_only_results_writable(host_kernel: Path, tmp_path: Path) -> None:
    results = tmp_path / "results"
    results.mkdir()
    out = bytearray()
    rc, _ = run_in_vhost(["sh", "-c", VHOST_PROBE], host_kernel, results=results, sink=out.extend, timeout=300,
                         env={"REPO": str(REPO), "RESULTS": str(results)})
    text = out.decode(errors="replace")
    assert rc == 0, text
    seen = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    erofs = os.strerror(errno.EROFS)  # "Read-only file system"
    assert seen["root"].endswith(erofs), text
    assert seen["repo"].endswith(erofs), text
    assert seen["hostview"].endswith(erofs), text
    assert seen["remounted"] == "yes", "L1 could remount / read-write: the write below then reaches QEMU"
    assert seen["after_remount"].endswith(erofs), f"QEMU's readonly=on must hold even after a remount: {text}"
    assert seen["results"] == "WROTE", text
    assert seen["ctl"] == "700", text
    assert (results / "written-in-l1").is_file(), "the results share writes through to the host"
    assert not Path("/pveoi-ro-probe").exists() and not (REPO / ".pveoi-ro-probe").exists()
