"""The doctor and host_config/prepare-host.sh on this real host: its own facts, a real throwaway
non-root user (each missing permission and its fix), and prepare-host.sh --perf then --restore,
which changes the host's perf_event_paranoid and tracefs mode for the test's duration (restored).

Moved out of tests/unit (which must touch no host state); the doctor's logic on fixture
trees stays in tests/unit/test_doctor.py.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from e2e.host import doctor
from e2e.host.capability import probe_host
from e2e.host.decision import decide


def test_probe_this_host_runs() -> None:
    facts = probe_host()
    assert facts.root == "/"
    decision = decide(facts, None)
    assert decision.host in ("direct", "virtual", "not-measurable")
    checks = doctor.doctor_checks(facts, None, decision)
    assert doctor.format_text(doctor.doctor_report(facts)).count("\n") >= len(checks)


@pytest.mark.skipif(not Path("/sys/module/kvm_pvm").is_dir(),
                    reason="not a kvm_pvm machine (platform.md: the project's machines are)")
def test_this_machine_is_pvm_and_uses_the_virtual_host() -> None:
    facts = probe_host()
    assert facts.backend == "pvm"
    assert not facts.cpu_vmx and not facts.cpu_svm and facts.cpu_hypervisor
    assert facts.kvm_dev
    assert facts.qemu_knows_pv_eoi is True and facts.qemu_has_tcg is True
    assert facts.perf_version is not None
    decision = decide(facts, None)
    assert decision.host == "virtual" and not decision.measurable_direct
    assert "kvm_pvm" in decision.reason


def _can_make_users() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create a throwaway user"
    missing = [t for t in ("useradd", "userdel", "runuser") if shutil.which(t) is None]
    return f"missing {', '.join(missing)}" if missing else None


needs_user = pytest.mark.skipif(_can_make_users() is not None, reason=_can_make_users() or "")


REPO = Path(__file__).resolve().parents[2]


def pveoi_for(user: pwd.struct_passwd) -> list[str]:
    """How *user* can run pveoi: the venv's entry point, or (when the venv's Python is
    a root-only build, e.g. under /root/.pyenv) the system Python of the same version
    with the venv's packages and the checkout on PYTHONPATH."""
    venv_python = Path(sys.executable)
    if as_user(user, [str(venv_python), "-c", "pass"]).returncode == 0:
        return [str(venv_python), "-m", "e2e.cli"]
    system = Path(f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}")
    if system.exists() and as_user(user, [str(system), "-c", "pass"]).returncode == 0:
        return [str(system), "-m", "e2e.cli"]
    pytest.skip(f"{user.pw_name} cannot run {venv_python} (it resolves to {venv_python.resolve()}) and there "
                f"is no {system}")


def user_pythonpath() -> str:
    site = [p for p in sys.path if p.endswith("site-packages") and p.startswith(sys.prefix)]
    return ":".join([str(REPO), *site])


@pytest.fixture
def throwaway_user() -> Iterator[pwd.struct_passwd]:
    """A fresh user without a home and without any group but its own; deleted afterwards."""
    name = f"pveoi-t{os.getpid()}"
    subprocess.run(["useradd", "--no-create-home", "--user-group", "--shell", "/bin/sh", name], check=True,
                   capture_output=True)
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", name], check=True, capture_output=True)
        assert name not in {p.pw_name for p in pwd.getpwall()}


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A temp dir another user can reach (tmp_path's parents are 0700)."""
    path = Path(tempfile.mkdtemp(prefix="pveoi-nonroot-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path)


def as_user(user: pwd.struct_passwd, argv: Sequence[str], **env: str) -> subprocess.CompletedProcess[str]:
    clean = {"PATH": f"{Path(sys.executable).parent}:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/nonexistent",
             "LC_ALL": "C", "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPATH": user_pythonpath(), **env}
    return subprocess.run(["runuser", "-u", user.pw_name, "--", "env", "-i",
                           *(f"{k}={v}" for k, v in clean.items()), *argv],
                          capture_output=True, text=True, timeout=120, check=False, cwd="/")


def doctor_as(user: pwd.struct_passwd, cache: Path) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    proc = as_user(user, [*pveoi_for(user), "doctor", "--json", "--no-probe"], PVEOI_CACHE=str(cache))
    assert proc.returncode in (0, 2), proc.stderr
    report = json.loads(proc.stdout)
    return report, {f["name"]: f for f in report["findings"]}


def root_cache(base: Path) -> Path:
    """A cache owned by root as pveoi leaves it: ssh/ 0700, the key 0600."""
    cache = base / "root-cache"
    (cache / "ssh").mkdir(parents=True)
    (cache / "ssh").chmod(0o700)
    (cache / "ssh/id_ecdsa").write_text("-----BEGIN " + "EC PRIVATE KEY-----\nnot a key\n")
    (cache / "ssh/id_ecdsa").chmod(0o600)
    return cache


@needs_user
def test_doctor_as_a_non_root_user_names_each_missing_permission(
        throwaway_user: pwd.struct_passwd, shared_dir: Path) -> None:
    user = throwaway_user.pw_name
    report, found = doctor_as(throwaway_user, root_cache(shared_dir))
    facts = report["facts"]
    assert facts["is_root"] is False and facts["user"] == user and facts["cap_perfmon"] is False

    kvm = Path("/dev/kvm")
    if kvm.exists() and not os.stat(kvm).st_mode & 0o006:
        assert facts["kvm_access"] is False
        assert f"not readable and writable by {user}" in found["/dev/kvm"]["detail"]
        if facts["backend"] in ("vmx", "svm"):
            assert f"usermod -aG kvm {user}" in found["/dev/kvm"]["fix"]

    perm = found["perf permissions"]
    paranoid = int(Path("/proc/sys/kernel/perf_event_paranoid").read_text())
    if paranoid > 1:
        assert f"perf_event_paranoid={paranoid} stops {user} counting kernel-mode events" in perm["detail"]
        assert "sysctl -w kernel.perf_event_paranoid=1" in perm["fix"]
    tracing = Path("/sys/kernel/tracing")
    if tracing.is_dir() and not os.stat(tracing).st_mode & 0o005:
        assert facts["tracefs_listable"] is False
        assert f"/sys/kernel/tracing is not readable by {user}" in perm["detail"]
        assert "root-only" in found["kvm tracepoints"]["detail"]
    if paranoid > 1 or not facts["tracefs_readable"]:
        assert "host_config/prepare-host.sh --perf" in perm["fix"]

    cache = found["cache"]
    assert cache["status"] == "fail"
    assert f"{user} cannot read the cache's SSH client key" in cache["detail"]
    assert "PVEOI_CACHE" in cache["fix"]
    if facts["backend"] == "pvm":
        assert report["decision"]["host"] == "virtual", "a non-root user can still use the virtual host"


@needs_user
def test_doctor_as_a_non_root_user_with_its_own_cache(throwaway_user: pwd.struct_passwd, shared_dir: Path) -> None:
    cache = shared_dir / "own"
    cache.mkdir()
    os.chown(cache, throwaway_user.pw_uid, throwaway_user.pw_gid)
    _, found = doctor_as(throwaway_user, cache / "pveoi")
    assert found["cache"]["status"] == "ok"
    assert found["cache"]["detail"] == f"{cache / 'pveoi'} is writable by {throwaway_user.pw_name}"


@needs_user
@pytest.mark.skipif(not Path("/sys/kernel/tracing/events/kvm/kvm_exit").exists() or shutil.which("perf") is None,
                    reason="needs perf and the kvm:kvm_exit tracepoint on this host")
def test_prepare_host_perf_lets_a_non_root_user_count_tracepoints(
        throwaway_user: pwd.struct_passwd, shared_dir: Path) -> None:
    """The real script on the real host: after --perf the user's perf counts kvm:kvm_exit and
    the doctor finds no perf permission missing; --restore puts sysctl and tracefs back."""
    paranoid = Path("/proc/sys/kernel/perf_event_paranoid")
    tracing = Path("/sys/kernel/tracing")
    before = (paranoid.read_text(), os.stat(tracing).st_gid, stat.S_IMODE(os.stat(tracing).st_mode))
    state = shared_dir / "host-state"
    perf = ["perf", "stat", "-x;", "-e", "kvm:kvm_exit", "--", "/bin/true"]
    prepare = [str(REPO / "host_config/prepare-host.sh"), "--perf", "--group", str(throwaway_user.pw_gid),
               "--state", str(state)]
    try:
        subprocess.run(prepare, check=True, capture_output=True, text=True, timeout=60)
        counted = as_user(throwaway_user, perf)
        assert counted.returncode == 0, counted.stderr
        row = [line for line in counted.stderr.splitlines() if ";kvm:kvm_exit;" in line]
        assert row and row[0].split(";")[0].isdigit(), counted.stderr
        _, found = doctor_as(throwaway_user, shared_dir / "c")
        assert found["perf permissions"]["status"] == "ok", found["perf permissions"]
        assert "readable tracefs" in found["perf permissions"]["detail"]
    finally:
        restored = subprocess.run([*prepare[:1], "--restore", "--state", str(state)], capture_output=True,
                                  text=True, timeout=60, check=False)
        after = (paranoid.read_text(), os.stat(tracing).st_gid, stat.S_IMODE(os.stat(tracing).st_mode))
        if after != before:  # never leave the host changed, even if the script failed
            paranoid.write_text(before[0])
            subprocess.run(["mount", "-o", f"remount,gid={before[1]},mode={before[2]:04o}", str(tracing)],
                           check=False)
        assert restored.returncode == 0, restored.stderr
        assert after == before
    if int(before[0]) > 1:
        denied = as_user(throwaway_user, perf)
        assert denied.returncode != 0 or ";kvm:kvm_exitu;" in denied.stderr, "restored: the user is refused again"

