"""Tests of host_config/prepare-host.sh and host_config/pin-vcpus.sh against a fake
host tree in tmp_path (``PVEOI_SYSROOT``), with fake ``modprobe``, ``mount`` and
``taskset`` that edit that tree the way the real ones would change the host.

The scripts run under dash (Debian's /bin/sh) so POSIX-only is enforced.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

HOST_CONFIG = Path(__file__).resolve().parents[2] / "host_config"
PREPARE = HOST_CONFIG / "prepare-host.sh"
PIN = HOST_CONFIG / "pin-vcpus.sh"
SHELL = shutil.which("dash") or "/bin/sh"

#: The group tracefs is opened to: a foreign gid as root (chgrp works), our own otherwise.
GROUP = 4242 if os.geteuid() == 0 else os.getgid()

FAKE_MODPROBE = r"""#!/bin/sh
# fake modprobe: log the call (its argv); "modprobe MOD P=V..." loads MOD like the
# real one would: every parameter back to its default (../defaults, taken by
# make_host), then P=V set. $PVEOI_FAKE_MODPROBE_FAIL=1 makes every load fail,
# $PVEOI_FAKE_MODPROBE_REJECT=P a load that passes P (an invalid value, say).
echo "modprobe $*" >> "$PVEOI_SYSROOT/calls.log"
[ "$1" = -r ] && exit 0
[ -z "${PVEOI_FAKE_MODPROBE_FAIL:-}" ] || exit 1
mod=$1; shift
for kv in "$@"; do
    [ "${kv%%=*}" != "${PVEOI_FAKE_MODPROBE_REJECT:-}" ] || exit 1
done
defaults="$PVEOI_SYSROOT/../defaults/$mod/parameters"
if [ -d "$defaults" ]; then cp "$defaults"/* "$PVEOI_SYSROOT/sys/module/$mod/parameters/"; fi
for kv in "$@"; do
    v=${kv#*=}
    case "$v" in 0|N|n) v=N ;; 1|Y|y) v=Y ;; esac
    printf '%s\n' "$v" > "$PVEOI_SYSROOT/sys/module/$mod/parameters/${kv%%=*}"
done
"""

FAKE_MOUNT = r"""#!/bin/sh
# fake mount: "mount -t tracefs nodev DIR" makes DIR/events and lists DIR in proc/mounts
# (fails with $PVEOI_FAKE_MOUNT_FAIL set); "-o remount,gid=G,mode=M DIR" chgrp/chmod
echo "mount $*" >> "$PVEOI_SYSROOT/calls.log"
if [ "$1" = -t ]; then
    [ -z "${PVEOI_FAKE_MOUNT_FAIL:-}" ] || { echo "mount: $4: permission denied" >&2; exit 32; }
    mkdir -p "$4/events"
    echo "nodev $4 tracefs rw,relatime 0 0" >> "$PVEOI_SYSROOT/proc/mounts"
    exit 0
fi
opts=$2 dir=$3
gid=$(printf '%s' "$opts" | sed -n 's/.*gid=\([0-9]*\).*/\1/p')
mode=$(printf '%s' "$opts" | sed -n 's/.*mode=\([0-7]*\).*/\1/p')
chgrp "$gid" "$dir" && chmod "$mode" "$dir"
"""

FAKE_UMOUNT = r"""#!/bin/sh
# fake umount DIR: undoes the fake "mount -t tracefs"; fails like umount on a DIR not in proc/mounts
echo "umount $*" >> "$PVEOI_SYSROOT/calls.log"
grep -q " $1 " "$PVEOI_SYSROOT/proc/mounts" || { echo "umount: $1: not mounted." >&2; exit 32; }
grep -v " $1 " "$PVEOI_SYSROOT/proc/mounts" > "$PVEOI_SYSROOT/mounts.new"
mv "$PVEOI_SYSROOT/mounts.new" "$PVEOI_SYSROOT/proc/mounts"
rm -r "$1/events"
"""

FAKE_TASKSET = r"""#!/bin/sh
# fake taskset -pc LIST TID: rewrite the thread's Cpus_allowed_list
echo "taskset $*" >> "$PVEOI_SYSROOT/calls.log"
for st in "$PVEOI_SYSROOT"/proc/*/task/"$3"/status; do
    sed -i "s/^Cpus_allowed_list:.*/Cpus_allowed_list:\t$2/" "$st"
done
"""


@dataclass
class FakeHost:
    root: Path
    state: Path
    env: dict[str, str]

    def run(self, script: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([SHELL, str(script), *args], env=self.env, capture_output=True, text=True,
                              timeout=60, check=False)
        if check and proc.returncode != 0:
            raise AssertionError(f"{script.name} {args} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}")
        return proc

    def prepare(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run(PREPARE, "--state", str(self.state), "--group", str(GROUP), *args, check=check)

    def read(self, rel: str) -> str:
        return (self.root / rel).read_text()

    def write(self, rel: str, text: str) -> None:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    def calls(self) -> list[str]:
        log = self.root / "calls.log"
        return log.read_text().splitlines() if log.exists() else []

    def snapshot(self) -> dict[str, tuple[int, int, bytes]]:
        """Every file and directory under the fake root except the call log: (mode, gid, bytes)."""
        snap = {}
        for path in sorted(self.root.rglob("*")):
            if path.name == "calls.log":
                continue
            st = path.lstat()
            data = path.read_bytes() if stat.S_ISREG(st.st_mode) else b""
            snap[str(path.relative_to(self.root))] = (st.st_mode, st.st_gid, data)
        return snap


GOVERNORS = "conservative ondemand userspace powersave performance schedutil\n"


def make_host(tmp_path: Path, vendor: str | None = "kvm_intel", param_value: str = "Y\n",
              cpus: int = 2, paranoid: str = "3\n") -> FakeHost:
    root = tmp_path / "root"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("modprobe", FAKE_MODPROBE), ("mount", FAKE_MOUNT), ("umount", FAKE_UMOUNT),
                       ("taskset", FAKE_TASKSET)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    host = FakeHost(root, tmp_path / "state" / "host-state", {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "PVEOI_SYSROOT": str(root),
        "PVEOI_MODPROBE": str(bin_dir / "modprobe"), "PVEOI_MOUNT": str(bin_dir / "mount"),
        "PVEOI_UMOUNT": str(bin_dir / "umount"), "PVEOI_TASKSET": str(bin_dir / "taskset"),
    })
    host.write("sys/module/kvm/parameters/halt_poll_ns", "200000\n")
    if vendor == "kvm_intel":
        host.write("sys/module/kvm_intel/parameters/enable_apicv", param_value)
        host.write("sys/module/kvm_intel/refcnt", "0\n")
    elif vendor == "kvm_amd":
        host.write("sys/module/kvm_amd/parameters/avic", param_value)
        host.write("sys/module/kvm_amd/refcnt", "0\n")
    elif vendor == "kvm_pvm":
        host.write("sys/module/kvm_pvm/parameters/pvm_native", "N\n")
    host.write("proc/sys/kernel/perf_event_paranoid", paranoid)
    host.write("proc/mounts", "proc /proc proc rw,nosuid,nodev,noexec,relatime 0 0\n")
    tracefs = root / "sys/kernel/tracing"
    (tracefs / "events/kvm/kvm_exit").mkdir(parents=True)
    (tracefs / "events/kvm/kvm_exit/id").write_text("1234\n")
    tracefs.chmod(0o700)
    for cpu in range(cpus):
        host.write(f"sys/devices/system/cpu/cpu{cpu}/cpufreq/scaling_governor", "powersave\n")
        host.write(f"sys/devices/system/cpu/cpu{cpu}/cpufreq/scaling_available_governors", GOVERNORS)
    shutil.copytree(root / "sys/module", tmp_path / "defaults")  # what the fake modprobe loads a module with
    return host


def changes(out: str, word: str = "change:") -> list[str]:
    return [line for line in out.splitlines() if line.startswith(word)]


# ---------------------------------------------------------------- prepare-host.sh


def test_dry_run_changes_nothing_and_prints_each_change(tmp_path: Path) -> None:
    host = make_host(tmp_path)
    before = host.snapshot()
    out = host.prepare("--dry-run").stdout
    assert host.snapshot() == before
    assert not host.state.exists()
    assert host.calls() == []
    planned = changes(out, "would change:")
    assert any("APICv: kvm_intel.enable_apicv Y -> N" in line for line in planned), out
    assert any("kernel.perf_event_paranoid: 3 -> 1" in line for line in planned), out
    assert any(f"tracefs: group 0 -> {GROUP}, mode 700 -> 750" in line for line in planned) or GROUP == 0, out
    assert sum("governor: powersave -> performance" in line for line in planned) == 2, out
    assert "would run: " in out and "-r kvm_intel" in out, "the module reload command is shown"
    assert changes(out) == [], "a dry run claims no change"


def test_apply_changes_the_values_and_records_the_old_ones(tmp_path: Path) -> None:
    host = make_host(tmp_path)
    out = host.prepare().stdout
    assert host.read("sys/module/kvm_intel/parameters/enable_apicv") == "N\n"
    assert host.read("proc/sys/kernel/perf_event_paranoid") == "1\n"
    tracefs = (host.root / "sys/kernel/tracing").stat()
    assert stat.S_IMODE(tracefs.st_mode) == 0o750 and tracefs.st_gid == GROUP
    for cpu in (0, 1):
        assert host.read(f"sys/devices/system/cpu/cpu{cpu}/cpufreq/scaling_governor") == "performance\n"
    calls = host.calls()
    assert calls[:3] == ["modprobe -r kvm_intel", "modprobe kvm halt_poll_ns=200000",
                         "modprobe kvm_intel enable_apicv=N"]
    assert any(c.startswith(f"mount -o remount,gid={GROUP},mode=0750 ") for c in calls)
    state = host.state.read_text()
    assert "module|kvm_intel/enable_apicv|Y\n" in state
    assert f"sysctl|{host.root}/proc/sys/kernel/perf_event_paranoid|3\n" in state
    assert len(changes(out)) >= 4, out
    assert "--restore" in out


def test_restore_puts_back_every_byte(tmp_path: Path) -> None:
    host = make_host(tmp_path)
    before = host.snapshot()
    host.prepare()
    assert host.snapshot() != before
    out = host.prepare("--restore").stdout
    assert host.snapshot() == before, out
    assert not host.state.exists()
    assert "modprobe kvm_intel enable_apicv=Y" in host.calls()


def test_restore_dry_run_changes_nothing(tmp_path: Path) -> None:
    host = make_host(tmp_path)
    host.prepare()
    after = host.snapshot()
    state = host.state.read_text()
    out = host.prepare("--restore", "--dry-run").stdout
    assert host.snapshot() == after and host.state.read_text() == state
    assert "would change: restore kvm_intel.enable_apicv N -> Y" in out
    assert "would change: restore sysctl: 1 -> 3" in out


def test_running_twice_is_idempotent(tmp_path: Path) -> None:
    host = make_host(tmp_path)
    before = host.snapshot()
    host.prepare()
    prepared, state, calls = host.snapshot(), host.state.read_text(), host.calls()
    out = host.prepare().stdout
    assert changes(out) == [], out
    assert host.snapshot() == prepared
    assert host.state.read_text() == state, "the second run must not record the prepared values"
    assert host.calls() == calls, "no module reload or remount the second time"
    host.prepare("--restore")
    assert host.snapshot() == before
    assert "nothing to restore" in host.prepare("--restore").stdout


def test_already_prepared_host_needs_nothing(tmp_path: Path) -> None:
    host = make_host(tmp_path, param_value="N\n", paranoid="1\n", cpus=1)
    host.write("sys/devices/system/cpu/cpu0/cpufreq/scaling_governor", "performance\n")
    out = host.prepare("--apicv", "--governor").stdout
    assert changes(out) == [] and not host.state.exists()
    assert "ok: APICv is off (kvm_intel.enable_apicv=N)" in out


@pytest.mark.parametrize("vendor", [None, "kvm_pvm"])
def test_no_kvm_intel_or_amd_says_so(tmp_path: Path, vendor: str | None) -> None:
    host = make_host(tmp_path, vendor=vendor)
    out = host.prepare("--apicv").stdout
    assert "neither kvm_intel nor kvm_amd is loaded" in out
    if vendor:
        assert "kvm_pvm" in out
    assert changes(out) == [] and host.calls() == []


def test_amd_turns_avic_off_and_back(tmp_path: Path) -> None:
    host = make_host(tmp_path, vendor="kvm_amd", param_value="Y\n")
    before = host.snapshot()
    out = host.prepare("--apicv").stdout
    assert "AVIC: kvm_amd.avic Y -> N" in out
    assert host.read("sys/module/kvm_amd/parameters/avic") == "N\n"
    host.prepare("--restore")
    assert host.calls()[-1] == "modprobe kvm_amd avic=Y"
    assert host.snapshot() == before


def test_refuses_to_reload_while_vms_run(tmp_path: Path) -> None:
    host = make_host(tmp_path)
    host.write("sys/module/kvm_intel/refcnt", "2\n")
    fd_dir = host.root / "proc/4321/fd"
    fd_dir.mkdir(parents=True)
    (fd_dir / "9").symlink_to("/dev/kvm")
    before = host.snapshot()
    proc = host.prepare(check=False)
    assert proc.returncode == 1
    assert "refusing to reload kvm_intel with enable_apicv=N" in proc.stderr
    assert "in use by 2 VM(s)" in proc.stderr and "4321" in proc.stderr
    assert host.snapshot() == before and host.calls() == [], "nothing changed, not even perf or governors"
    assert not host.state.exists()


def test_restore_refuses_to_reload_while_vms_run(tmp_path: Path) -> None:
    host = make_host(tmp_path)
    host.prepare()
    host.write("sys/module/kvm_intel/refcnt", "1\n")
    prepared, state = host.snapshot(), host.state.read_text()
    proc = host.prepare("--restore", check=False)
    assert proc.returncode == 1 and "refusing to reload kvm_intel with enable_apicv=Y" in proc.stderr
    assert host.snapshot() == prepared and host.state.read_text() == state


def test_permanent_writes_config_files_and_restore_removes_them(tmp_path: Path) -> None:
    host = make_host(tmp_path)
    before = host.snapshot()
    host.prepare("--permanent")
    assert host.read("etc/modprobe.d/pveoi-kvm.conf") == "options kvm_intel enable_apicv=0\n"
    assert host.read("etc/sysctl.d/60-pveoi-perf.conf") == "kernel.perf_event_paranoid = 1\n"
    host.prepare("--restore")
    assert not (host.root / "etc/modprobe.d/pveoi-kvm.conf").exists()
    assert not (host.root / "etc/sysctl.d/60-pveoi-perf.conf").exists()
    assert {k: v for k, v in host.snapshot().items() if not k.startswith("etc")} == before


def test_permanent_keeps_a_previous_config_file(tmp_path: Path) -> None:
    host = make_host(tmp_path)
    host.write("etc/modprobe.d/pveoi-kvm.conf", "options kvm_intel nested=1\n")
    before = host.snapshot()
    host.prepare("--apicv", "--permanent")
    assert host.read("etc/modprobe.d/pveoi-kvm.conf") == "options kvm_intel enable_apicv=0\n"
    host.prepare("--restore")
    assert host.snapshot() == before


def test_tracefs_not_mounted_is_mounted_and_unmounted_on_restore(tmp_path: Path) -> None:
    host = make_host(tmp_path)
    shutil.rmtree(host.root / "sys/kernel/tracing/events")
    before = host.snapshot()
    tracefs = f"{host.root}/sys/kernel/tracing"
    host.prepare("--perf")
    assert f"mount -t tracefs nodev {tracefs}" in host.calls()
    assert f"mount|{tracefs}|unmounted\n" in host.state.read_text()
    out = host.prepare("--restore", "--dry-run").stdout
    assert f"would run: {host.env['PVEOI_UMOUNT']} {tracefs}" in out, "umount is $PVEOI_UMOUNT, like mount"
    host.prepare("--restore")
    assert f"umount {tracefs}" in host.calls()
    assert host.snapshot() == before


def test_failed_mount_is_not_recorded_and_restore_completes(tmp_path: Path) -> None:
    host = make_host(tmp_path)
    shutil.rmtree(host.root / "sys/kernel/tracing/events")
    before = host.snapshot()
    proc = host.run(PREPARE, "--state", str(host.state), "--group", str(GROUP), "--perf", check=False)
    assert proc.returncode == 0  # sanity: this one mounts
    host.prepare("--restore")
    assert host.snapshot() == before

    host.env["PVEOI_FAKE_MOUNT_FAIL"] = "1"
    proc = host.prepare("--perf", check=False)
    assert proc.returncode == 1 and "cannot mount tracefs" in proc.stderr
    assert "mount|" not in host.state.read_text(), "a mount that failed is nothing to unmount"
    del host.env["PVEOI_FAKE_MOUNT_FAIL"]
    calls = len(host.calls())
    out = host.prepare("--restore").stdout
    assert host.read("proc/sys/kernel/perf_event_paranoid") == "3\n", out
    assert not any(c.startswith("umount") for c in host.calls()[calls:])
    assert host.snapshot() == before and not host.state.exists()


def test_restore_skips_a_mount_that_is_gone(tmp_path: Path) -> None:
    host = make_host(tmp_path)
    shutil.rmtree(host.root / "sys/kernel/tracing/events")
    host.prepare("--perf")
    host.write("proc/mounts", "proc /proc proc rw,nosuid,nodev,noexec,relatime 0 0\n")  # unmounted by hand
    calls = len(host.calls())
    out = host.prepare("--restore").stdout
    assert "is not mounted (any more); nothing to unmount" in out
    assert not any(c.startswith("umount") for c in host.calls()[calls:])
    assert host.read("proc/sys/kernel/perf_event_paranoid") == "3\n" and not host.state.exists()


def test_restore_resumes_where_a_failed_restore_stopped(tmp_path: Path) -> None:
    host = make_host(tmp_path)
    host.write("etc/modprobe.d/pveoi-kvm.conf", "options kvm_intel nested=1\n")
    (host.root / "etc/sysctl.d").mkdir()
    before = host.snapshot()
    host.prepare("--permanent")
    host.env["PVEOI_FAKE_MODPROBE_FAIL"] = "1"  # the module reload fails: the last entry restored
    proc = host.prepare("--restore", check=False)
    assert proc.returncode == 1 and "cannot load kvm" in proc.stderr, proc.stdout + proc.stderr
    assert host.read("etc/modprobe.d/pveoi-kvm.conf") == "options kvm_intel nested=1\n", "restored before it died"
    left = host.state.read_text()
    assert "module|kvm_intel/enable_apicv|Y\n" in left
    assert "sysctl|" not in left and "file|" not in left and "governor|" not in left, "restored lines are gone"
    del host.env["PVEOI_FAKE_MODPROBE_FAIL"]
    out = host.prepare("--restore").stdout
    assert "modprobe kvm_intel enable_apicv=Y" in host.calls(), out
    assert host.snapshot() == before and not host.state.exists()


def test_restore_skips_a_missing_backup_and_goes_on(tmp_path: Path) -> None:
    host = make_host(tmp_path)
    host.write("etc/modprobe.d/pveoi-kvm.conf", "options kvm_intel nested=1\n")
    host.prepare("--permanent")
    backups = [line.split("|")[2] for line in host.state.read_text().splitlines() if line.startswith("file|")
               and not line.endswith("|-")]
    assert len(backups) == 1
    Path(backups[0]).unlink()
    proc = host.prepare("--restore", check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"skip: the backup {backups[0]} of {host.root}/etc/modprobe.d/pveoi-kvm.conf is missing" in proc.stdout
    assert host.read("sys/module/kvm_intel/parameters/enable_apicv") == "Y\n", "the entries after it are restored"
    assert host.read("proc/sys/kernel/perf_event_paranoid") == "3\n" and not host.state.exists()


def hand_set_module_parameters(host: FakeHost) -> None:
    """Parameters set by hand after the load (defaults: nested=N, halt_poll_ns=200000), and one that
    cannot be passed back as one word."""
    host.write("sys/module/kvm_intel/parameters/nested", "Y\n")
    host.write("sys/module/kvm_intel/parameters/ept", "Y\n")
    host.write("sys/module/kvm_intel/parameters/vmentry_l1d_flush", "not required\n")
    defaults = host.root.parent / "defaults"
    for name, value in (("nested", "N\n"), ("ept", "Y\n"), ("vmentry_l1d_flush", "not required\n")):
        (defaults / "kvm_intel/parameters" / name).write_text(value)
    host.write("sys/module/kvm/parameters/halt_poll_ns", "50000\n")


def test_reload_keeps_the_other_module_parameters(tmp_path: Path) -> None:
    host = make_host(tmp_path)
    hand_set_module_parameters(host)
    before = host.snapshot()
    proc = host.prepare("--apicv")
    assert host.calls() == ["modprobe -r kvm_intel", "modprobe kvm halt_poll_ns=50000",
                            "modprobe kvm_intel enable_apicv=N ept=Y nested=Y"]
    assert host.read("sys/module/kvm_intel/parameters/enable_apicv") == "N\n"
    assert host.read("sys/module/kvm_intel/parameters/nested") == "Y\n"
    assert host.read("sys/module/kvm/parameters/halt_poll_ns") == "50000\n"
    assert "kvm_intel.vmentry_l1d_flush=not required is not passed back" in proc.stderr
    state = host.state.read_text()
    assert "params|kvm|halt_poll_ns=50000\n" in state and "params|kvm_intel|ept=Y nested=Y\n" in state
    out = host.prepare("--restore").stdout
    assert host.calls()[-2:] == ["modprobe kvm halt_poll_ns=50000", "modprobe kvm_intel enable_apicv=Y ept=Y nested=Y"]
    assert host.snapshot() == before, out


def test_reload_falls_back_to_the_one_parameter_if_the_others_are_refused(tmp_path: Path) -> None:
    host = make_host(tmp_path)
    hand_set_module_parameters(host)
    host.env["PVEOI_FAKE_MODPROBE_REJECT"] = "nested"
    out = host.prepare("--apicv").stdout
    assert "warning: cannot load kvm_intel with its previous parameters (ept=Y nested=Y)" in out
    assert host.calls()[-1] == "modprobe kvm_intel enable_apicv=N"
    assert host.read("sys/module/kvm_intel/parameters/enable_apicv") == "N\n"


def test_module_left_unloaded_names_its_parameters(tmp_path: Path) -> None:
    host = make_host(tmp_path)
    hand_set_module_parameters(host)
    host.prepare("--apicv")
    shutil.rmtree(host.root / "sys/module/kvm_intel")  # unloaded by someone since
    out = host.prepare("--restore").stdout
    assert ("kvm_intel is not loaded; load it with: modprobe kvm halt_poll_ns=50000 && "
            "modprobe kvm_intel enable_apicv=Y ept=Y nested=Y") in out
    assert not host.state.exists()


def test_unknown_group_is_refused_before_any_change(tmp_path: Path) -> None:
    host = make_host(tmp_path)
    before = host.snapshot()
    proc = host.run(PREPARE, "--state", str(host.state), "--group", "no-such-group-pveoi", check=False)
    assert proc.returncode == 1 and "group no-such-group-pveoi does not exist" in proc.stderr
    assert host.snapshot() == before


def test_no_cpufreq_says_so(tmp_path: Path) -> None:
    host = make_host(tmp_path, cpus=0)
    out = host.prepare("--governor").stdout
    assert "no cpufreq" in out and changes(out) == []


def test_governor_without_performance_is_left_alone(tmp_path: Path) -> None:
    host = make_host(tmp_path, cpus=1)
    host.write("sys/devices/system/cpu/cpu0/cpufreq/scaling_available_governors", "powersave\n")
    out = host.prepare("--governor").stdout
    assert "no performance governor" in out and changes(out) == []


def test_usage_errors(tmp_path: Path) -> None:
    host = make_host(tmp_path)
    proc = host.run(PREPARE, "--bogus", check=False)
    assert proc.returncode == 2 and "unknown option --bogus" in proc.stderr
    assert "--dry-run" in host.run(PREPARE, "--help", check=False).stderr


def test_scripts_are_posix_sh() -> None:
    for script in (PREPARE, PIN, HOST_CONFIG / "install-deps.sh"):
        subprocess.run([SHELL, "-n", str(script)], check=True)
        assert os.access(script, os.X_OK), f"{script} is not executable"


# ---------------------------------------------------------------- pin-vcpus.sh


def make_qemu(host: FakeHost, pid: int = 777, vcpus: int = 2, isolated: str = "2-3\n") -> None:
    threads = {pid: "qemu-system-x86", pid + 1: "IO mon_iothread"}
    threads.update({pid + 2 + i: f"CPU {i}/KVM" for i in range(vcpus)})
    for tid, comm in threads.items():
        host.write(f"proc/{pid}/task/{tid}/comm", comm + "\n")
        host.write(f"proc/{pid}/task/{tid}/status", f"Name:\t{comm}\nCpus_allowed_list:\t0-3\nVoluntary: 1\n")
    host.write("sys/devices/system/cpu/isolated", isolated)


def test_pin_vcpus_dry_run_apply_restore(tmp_path: Path) -> None:
    host = make_host(tmp_path)
    make_qemu(host)
    state = tmp_path / "pin-state"
    before = host.snapshot()
    out = host.run(PIN, "--dry-run", "--state", str(state), "777").stdout
    assert "would change: vCPU 0 (thread 779): CPUs 0-3 -> 2" in out
    assert "would change: vCPU 1 (thread 780): CPUs 0-3 -> 3" in out
    assert host.snapshot() == before and not state.exists()

    host.run(PIN, "--state", str(state), "777")
    assert "Cpus_allowed_list:\t2\n" in host.read("proc/777/task/779/status")
    assert "Cpus_allowed_list:\t3\n" in host.read("proc/777/task/780/status")
    assert "Cpus_allowed_list:\t0-3\n" in host.read("proc/777/task/777/status"), "only vCPU threads move"
    assert host.calls() == ["taskset -pc 2 779", "taskset -pc 3 780"]

    host.run(PIN, "--restore", "--state", str(state), "777")
    assert host.snapshot() == before and not state.exists()


def test_pin_vcpus_warns_about_cpus_that_are_not_isolated(tmp_path: Path) -> None:
    host = make_host(tmp_path)
    make_qemu(host, vcpus=1, isolated="\n")
    proc = host.run(PIN, "--dry-run", "777", check=False)
    assert proc.returncode == 1 and "no isolated CPUs" in proc.stderr
    out = host.run(PIN, "--dry-run", "777", "1").stdout
    assert "warning: CPU 1 is not isolated" in out


def test_pin_vcpus_refuses_a_process_without_vcpus(tmp_path: Path) -> None:
    host = make_host(tmp_path)
    make_qemu(host, vcpus=0)
    proc = host.run(PIN, "--state", str(tmp_path / "s"), "777", check=False)
    assert proc.returncode == 1 and "has no 'CPU n/KVM' threads" in proc.stderr
    assert host.run(PIN, "12345", check=False).returncode == 1


@pytest.fixture
def user_host(tmp_path: Path) -> Iterator[tuple[FakeHost, list[str]]]:
    """A fake host a non-root user can use, and the argv prefix that runs a script as that user:
    as root, user nobody in a world-accessible dir (pytest's tmp_path is 0700 root); else ourselves."""
    if os.geteuid() != 0:
        yield make_host(tmp_path), []
        return
    if not shutil.which("setpriv"):
        pytest.skip("setpriv (util-linux) is needed to run the script as a user")
    base = Path(tempfile.mkdtemp(prefix="pintest-"))
    try:
        base.chmod(0o755)
        yield make_host(base), ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    finally:
        shutil.rmtree(base)


def test_pin_vcpus_state_of_a_user_defaults_to_their_state_dir(user_host: tuple[FakeHost, list[str]]) -> None:
    host, as_user = user_host
    make_qemu(host)
    home = host.root.parent / "home"
    home.mkdir()
    subprocess.run(["chmod", "-R", "a+rwX", str(host.root.parent)], check=True)  # the user's fake host
    env = {**host.env, "HOME": str(home)}
    env.pop("XDG_STATE_HOME", None)

    def pin(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([*as_user, SHELL, str(PIN), *args], env={**env, **extra}, capture_output=True,
                              text=True, timeout=60, check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc

    def contents() -> dict[str, bytes]:  # the fake taskset's sed -i makes files of the user's: compare bytes
        return {name: data for name, (_, _, data) in host.snapshot().items()}

    before = contents()
    pin("777")
    state = home / ".local/state/pveoi/pin-777"
    assert state.is_file() and "Cpus_allowed_list:\t2\n" in host.read("proc/777/task/779/status")
    assert not (host.root / "var/lib/pveoi").exists()
    pin("--restore", "777")
    assert not state.exists() and contents() == before

    xdg = home / "xdg"
    pin("777", XDG_STATE_HOME=str(xdg))
    assert (xdg / "pveoi/pin-777").is_file()
    pin("--restore", "777", XDG_STATE_HOME=str(xdg))
    assert not (xdg / "pveoi/pin-777").exists() and contents() == before


def test_pin_vcpus_help_names_both_default_state_files(tmp_path: Path) -> None:
    text = make_host(tmp_path).run(PIN, "--help", check=False).stderr
    assert "/var/lib/pveoi/pin-PID" in text and "${XDG_STATE_HOME:-$HOME/.local/state}/pveoi/pin-PID" in text
