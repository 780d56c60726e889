"""Fault matrix, configuration side: bad configuration files, CLI values and
paths given to the real ``pveoi`` command. Each exits 2 with one line on
stderr naming the cause and the fix, before anything boots."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.bzimage import bzimage_bytes
from tests.helpers.terminal import clean_stderr_lines

REPO = Path(__file__).resolve().parents[2]


def pveoi(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "e2e.cli", "-q", *args], capture_output=True, text=True,
                          timeout=120, cwd=REPO, env={**os.environ, **(env or {})})


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = clean_stderr_lines(proc.stderr)
    assert len(lines) == 1, f"not one line: {proc.stderr!r}"
    line = lines[0]
    assert line.startswith("pveoi: error: ") and "; fix: " in line, line
    for needle in needles:
        assert needle in line, line
    return line


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_arms_file_not_toml(tmp_path: Path) -> None:
    bad = write(tmp_path / "arms.toml", "[[arm]\nname = on\n")
    assert_one_line_error(pveoi("ab", "--arms", str(bad)), f"cannot read arms file {bad}", "TOML")


def test_arms_file_missing(tmp_path: Path) -> None:
    assert_one_line_error(pveoi("ab", "--arms", str(tmp_path / "nope.toml")), "cannot read arms file")


@pytest.mark.parametrize("text, needle", [
    ('[[arm]]\nname = "a"\n', "at least two arms"),
    ('[[arm]]\nname = "a"\n[[arm]]\nname = "b"\npv_eoi = false\n[[arm]]\nname = "c"\n',
     "a and c are the same experiment"),
    ('[[arm]]\nname = "a"\npv_eoi = "yes"\n[[arm]]\nname = "b"\npv_eoi = false\n', "pv_eoi must be true or false"),
    ('[[arm]]\nname = "a"\ncolour = 1\n[[arm]]\nname = "b"\n', "unknown keys ['colour']"),
    ('[[arm]]\nname = "a"\nkernel = "/nonexistent/bzImage"\n[[arm]]\nname = "b"\npv_eoi = false\n', "not found"),
], ids=["one-arm", "identical-arms", "pv_eoi-type", "unknown-key", "kernel-missing"])
def test_arms_file_bad_content(tmp_path: Path, text: str, needle: str) -> None:
    assert_one_line_error(pveoi("ab", "--arms", str(write(tmp_path / "arms.toml", text))), needle)


@pytest.mark.parametrize("args, needle", [
    (["ab", "--runs", "0"], "--runs must be at least 1"),
    (["ab", "--threshold", "nonsense"], "bad --threshold 'nonsense'"),
    (["ab", "--threshold", "no_such_key=1"], "unknown threshold 'no_such_key'"),
    (["ab", "--json", "/proc/pveoi-nope/ab.json"], "cannot create /proc/pveoi-nope"),
    (["boot", "--accel", "tcg", "--kernel", "/nonexistent/bzImage", "--", "true"],
     "kernel /nonexistent/bzImage not found"),
    (["vhost"], "no command given"),
], ids=["runs-0", "threshold-syntax", "threshold-key", "json-unwritable", "kernel-missing", "vhost-no-cmd"])
def test_bad_cli_values(args: list[str], needle: str) -> None:
    assert_one_line_error(pveoi(*args), needle)


def test_image_dir_that_is_not_an_entry(tmp_path: Path) -> None:
    kernel = tmp_path / "bzImage"
    kernel.write_bytes(bzimage_bytes())
    for image, needle in ((tmp_path, f"{tmp_path} is not a pveoi image entry"),
                          (tmp_path / "nope", f"image {tmp_path / 'nope'} not found"),
                          (kernel, f"{kernel} is a file, not a pveoi image entry")):
        proc = pveoi("boot", "--accel", "tcg", "--kernel", str(kernel), "--image", str(image), "--", "true")
        assert_one_line_error(proc, needle)


@pytest.mark.parametrize("kernel, needle", [
    ("/etc/passwd", "/etc/passwd is not an x86 bzImage: no boot-sector signature 0x55AA"),
    ("/bin/true", "/bin/true is an ELF file (a vmlinux?), not a bzImage"),
    ("/tmp", "/tmp is a directory, not a kernel file"),
], ids=["text-file", "elf", "directory"])
@pytest.mark.parametrize("command", [["boot", "--accel", "tcg"], ["ab"]], ids=["boot", "ab"])
def test_a_kernel_that_is_not_a_bzimage_is_refused_before_any_qemu(kernel: str, needle: str, command: list[str],
                                                                   tmp_path: Path) -> None:
    """Refused in one line before anything starts: no QEMU (not even the doctor's probe boot, which
    `ab` runs to choose the host), no build, no result file. QEMU is wrapped first on PATH so that
    any start of it is seen. (How fast: tests/bench_*, not a timed assertion.)"""
    shim = tmp_path / "bin"
    shim.mkdir()
    started = tmp_path / "qemu-started"
    for name in ("qemu-system-x86_64", "perf"):
        (shim / name).write_text(f"#!/bin/sh\necho {name} >> {started}\nexec /usr/bin/{name} \"$@\"\n")
        (shim / name).chmod(0o755)
    out = tmp_path / "ab.json"
    extra = ["--json", str(out)] if command == ["ab"] else ["--", "true"]
    proc = pveoi(*command, "--kernel", kernel, *extra, env={"PATH": f"{shim}:{os.environ['PATH']}"})
    assert_one_line_error(proc, needle)
    assert not started.exists(), f"started before refusing the kernel: {started.read_text()}"
    assert not out.exists()


def test_cache_dir_unusable(tmp_path: Path) -> None:
    blocker = write(tmp_path / "cache-is-a-file", "")
    line = assert_one_line_error(pveoi("image", "build", env={"PVEOI_CACHE": str(blocker)}))
    assert str(blocker) in line


@pytest.mark.parametrize("args, needle", [
    (["ab", "--runs", "three"], "argument --runs: invalid int value: 'three'"),
    (["ab", "--workload", "nosuch"], "argument --workload: invalid choice: 'nosuch'"),
    (["boot", "--pv-eoi", "maybe"], "argument --pv-eoi: invalid choice: 'maybe'"),
], ids=["runs-type", "workload", "pv-eoi"])
def test_argparse_rejects_bad_values_with_usage_and_one_error_line(args: list[str], needle: str) -> None:
    proc = pveoi(*args)
    assert proc.returncode == 2
    last = clean_stderr_lines(proc.stderr)[-1]
    assert last.startswith("pveoi ") and ": error: " in last and needle in last, last


# What a pveoi process's libraries say when SSH or QMP fail, with pveoi's logging set up at a verbosity:
# paramiko's "Error reading SSH protocol banner" traceback (a peer that hangs up at once) and
# qemu.qmp's "Negotiation failed: EOFError" (a QMP peer that greets, then hangs up), and a thread
# that dies of an exception (Python would print "Exception in thread ..." and its traceback).
NOISY = r'''
import json, socket, sys, threading
from pathlib import Path
import paramiko
from qemu.qmp.legacy import QEMUMonitorProtocol
from e2e import cli
from e2e.errors import PveoiError
from e2e.util.logs import run_log_file
from e2e.vm.ssh import GuestSsh

cli.setup_logging(int(sys.argv[1]))
server = socket.socket()
server.bind(("127.0.0.1", 0))
server.listen()

def hang_up():
    while True:
        conn, _ = server.accept()
        conn.close()

threading.Thread(target=hang_up, daemon=True).start()
key = paramiko.ECDSAKey.generate()
key.write_private_key_file(sys.argv[2])
try:
    GuestSsh(server.getsockname()[1], Path(sys.argv[2]), f"{key.get_name()} {key.get_base64()}").connect(timeout=1)
except PveoiError as err:
    print("ssh failed:", err)
ours, theirs = socket.socketpair()
theirs.sendall(json.dumps({"QMP": {"version": {}, "capabilities": []}}).encode() + b"\n")
threading.Thread(target=lambda: (theirs.recv(4096), theirs.close())).start()
try:
    QEMUMonitorProtocol(ours).connect(negotiate=True)
except Exception as err:
    print("qmp failed:", type(err).__name__)
def boom():
    raise RuntimeError("boom")

thread = threading.Thread(target=boom, name="pveoi-test-thread")
thread.start()
thread.join()
print(run_log_file())
'''


@pytest.mark.parametrize("verbose", [0, 1, 2], ids=["-q", "default", "-vv"])
def test_library_noise_goes_to_the_run_log_not_the_terminal(tmp_path: Path, verbose: int) -> None:
    proc = subprocess.run([sys.executable, "-c", NOISY, str(verbose), str(tmp_path / "id")], capture_output=True,
                          text=True, timeout=120, cwd=REPO, env={**os.environ, "PVEOI_CACHE": str(tmp_path / "c")})
    assert proc.returncode == 0, proc.stderr
    assert "ssh failed: no SSH to the guest" in proc.stdout and "qmp failed: ConnectError" in proc.stdout
    run_log = Path(proc.stdout.strip().splitlines()[-1])
    assert run_log.parent == tmp_path / "c" / "logs" and run_log.name.startswith("pveoi-")
    logged = run_log.read_text()
    assert "Error reading SSH protocol banner" in logged and "Traceback" in logged
    assert "Negotiation failed: EOFError" in logged
    assert "in boom\nRuntimeError: boom" in logged  # the thread's traceback
    if verbose < 2:
        # pveoi's own one line for the dead thread, nothing of the libraries
        assert clean_stderr_lines(proc.stderr) == [
            "pveoi: unexpected error in thread pveoi-test-thread: RuntimeError: boom"], proc.stderr
    else:  # -vv shows them
        assert "Error reading SSH protocol banner" in proc.stderr and "Negotiation failed" in proc.stderr


def test_an_error_names_the_run_log_which_holds_its_traceback(tmp_path: Path) -> None:
    proc = pveoi("ab", "--runs", "0", env={"PVEOI_CACHE": str(tmp_path)})
    assert proc.returncode == 2
    line = proc.stderr.strip().splitlines()[-1]
    assert line.endswith(".log)") and " (log: " in line, line
    run_log = Path(line.rsplit(" (log: ", 1)[1][:-1])
    assert run_log.parent == tmp_path / "logs"
    assert "--runs must be at least 1" in run_log.read_text() and "Traceback" in run_log.read_text()
    assert clean_stderr_lines(proc.stderr) == [line.rsplit(" (log: ", 1)[0]]


def test_an_unusable_cache_means_no_run_log_and_still_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "cache-is-a-file"
    blocker.write_text("")
    proc = pveoi("ab", "--runs", "0", env={"PVEOI_CACHE": str(blocker)})
    lines = assert_one_line_error(proc, "--runs must be at least 1")
    assert "(log: " not in lines
