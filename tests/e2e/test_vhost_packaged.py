"""The virtual host on a distribution's packaged kernel (Debian's linux-image-amd64: virtio-PCI, 9p and KVM
as modules), booted with the initramfs that loads them (e2e.build.vhostkernel), and refused in one line
before any boot when it lacks a driver (Debian's cloud kernel has no 9p)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.kvm


def _pveoi(*args: str) -> list[str]:
    return [sys.executable, "-m", "e2e.cli", *args]


def _fetch(package: str) -> Path:
    proc = subprocess.run(_pveoi("kernel", "fetch", "--debian", "--package", package), capture_output=True,
                          text=True, timeout=1800)
    if proc.returncode != 0 and "apt-get download" in proc.stderr:
        pytest.skip(f"Debian's {package} cannot be downloaded here: {proc.stderr.strip()[-300:]}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    return Path(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def packaged_kernel() -> Path:
    return _fetch("linux-image-amd64")


def test_a_packaged_kernel_runs_the_virtual_host_its_modules_loaded_with_their_parameters(
        packaged_kernel: Path, tmp_path: Path) -> None:
    release = json.loads((packaged_kernel.parent / "manifest.json").read_text())["release"]
    # kvm_amd.npt=0 on L1's command line (a trial's) reaches the module through the initramfs's insmod
    env = {**os.environ, "PVEOI_VHOST_APPEND": "kvm_amd.npt=0"}
    proc = subprocess.run(
        _pveoi("vhost", "--kernel", str(packaged_kernel), "--logs", str(tmp_path), "--",
               "sh", "-c", "uname -r; cat /sys/module/kvm_amd/parameters/npt; test -c /dev/kvm && echo kvm-dev; "
                           "grep -qw svm /proc/cpuinfo && echo svm; cut -d' ' -f1 /proc/modules"),
        capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = proc.stdout.split()
    assert lines[0] == release and lines[1] == "N" and "kvm-dev" in lines and "svm" in lines
    assert {"kvm_amd", "kvm", "9p", "9pnet_virtio", "virtio_pci"} <= set(lines[2:])
    assert "npt=N" in proc.stderr  # the virtual host's own report of what its KVM runs on


def test_a_kernel_without_9p_is_refused_in_one_line_before_any_boot(tmp_path: Path) -> None:
    cloud = _fetch("linux-image-cloud-amd64")
    proc = subprocess.run(_pveoi("vhost", "--kernel", str(cloud), "--logs", str(tmp_path), "--", "true"),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("pveoi: error:")]
    assert len(errors) == 1 and "9p neither built in nor as a module" in errors[0], proc.stderr
    assert "linux-image-amd64" in errors[0] and "Traceback" not in proc.stderr
    assert not list(tmp_path.glob("*console*"))  # nothing booted
