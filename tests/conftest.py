"""Shared fixtures: kernels and the image (built once, cached by content hash), and
a guard that fails any test leaving a qemu-system process behind."""

from __future__ import annotations

import os
import re
import select
import shutil
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest

# Every process this test session starts inherits this tag, so the orphan guard
# sees only our own QEMUs, never those of another pveoi run on the same machine.
SESSION_TAG = f"PVEOI_TEST_SESSION={uuid.uuid4().hex}"
os.environ["PVEOI_TEST_SESSION"] = SESSION_TAG.split("=", 1)[1]


#: What must never reach pveoi's terminal at default verbosity (it goes to the run's log file, and
#: shows with -vv): tracebacks and the noise of the libraries below pveoi.
TERMINAL_NOISE = (
    "Traceback", "Error reading SSH protocol banner", "Negotiation failed", "Failed to establish session",
    "--- Logging error ---", "Exception in thread", "Task exception was never retrieved", "Exception ignored in",
)
_LOG_NOTE = re.compile(r" \(log: (/\S+\.log)\)$")


def clean_stderr_lines(stderr: str) -> list[str]:
    """pveoi's stderr as lines, checked: no traceback and no library noise anywhere in it.

    The one-line error may end with `` (log: FILE)``, the run's log file: it
    must exist; it is removed, and the note stripped from the returned line.
    Every fault-matrix test reads pveoi's stderr through this.
    """
    for noise in TERMINAL_NOISE:
        assert noise not in stderr, f"{noise!r} reached the terminal:\n{stderr}"
    lines = stderr.strip().splitlines()
    note = _LOG_NOTE.search(lines[-1]) if lines else None
    if note is not None:
        run_log = Path(note.group(1))
        assert run_log.is_file(), f"the error names a run log that does not exist: {run_log}"
        run_log.unlink()
        lines[-1] = lines[-1][:note.start()]
    return lines


#: Set (to anything but 0) where a test must not skip because PV EOI is not measurable: CI and the nightly.
REQUIRE_MEASURABLE = "PVEOI_REQUIRE_MEASURABLE"


def not_measurable(reason: str) -> NoReturn:
    """Skip a test because PV EOI is not measurable here, or fail it under ``PVEOI_REQUIRE_MEASURABLE=1``.

    Every test that would skip on "not measurable" calls this, so a CI runner
    that lost its KVM (or its perf) turns red instead of silently green.

    :param reason: why it is not measurable (the verdict's reason, the capability error).
    """
    if os.environ.get(REQUIRE_MEASURABLE, "") not in ("", "0"):
        pytest.fail(f"PV EOI is not measurable here, and {REQUIRE_MEASURABLE} is set: {reason}", pytrace=False)
    pytest.skip(f"PV EOI is not measurable here: {reason}")


def interruptible() -> None:
    """``preexec_fn`` for a child a test will SIGINT: the default disposition.

    Started from a background job of a non-interactive shell (``nohup tox &``,
    CI wrappers), this process ignores SIGINT and its children inherit SIG_IGN,
    so a Ctrl-C sent by the test would never reach them.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def ended_within(pidfd: int, pid: int, timeout: float = 10.0) -> bool:
    """Did process ``pid`` (held by ``pidfd``, which this closes) end within ``timeout``? If it did
    not, it is SIGKILLed here, so no test leaves it behind."""
    try:
        ended = bool(select.select([pidfd], [], [], timeout)[0])
        if not ended:
            os.kill(pid, signal.SIGKILL)
        return ended
    finally:
        os.close(pidfd)


def qemu_pids() -> set[int]:
    """PIDs of the qemu-system-* processes started by this test session."""
    pids = set()
    tag = SESSION_TAG.encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            comm = Path(f"/proc/{entry}/comm").read_text().strip()
            if comm.startswith("qemu-system") and tag in Path(f"/proc/{entry}/environ").read_bytes().split(b"\0"):
                pids.add(int(entry))
        except OSError:
            continue
    return pids


def wait_no_new_qemu(before: set[int], timeout: float = 15.0) -> set[int]:
    """Wait until no qemu-system process outside ``before`` exists; return survivors."""
    deadline = time.monotonic() + timeout
    while True:
        left = qemu_pids() - before
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


@pytest.fixture(scope="session", autouse=True)
def nothing_left_at_session_end() -> Iterator[None]:
    """After the whole session: no qemu-system process and no pveoi temp dir of this session remains.

    Both are recognised by the session tag: QEMUs by their environment, temp
    dirs by the owner file pveoi writes into each (``e2e.util.tmpdirs``). Dirs of a
    pveoi a test SIGKILLed on purpose are first reaped as the next pveoi start
    would (only dead owners'); the tests' own process is checked after every
    test (``no_own_temp_dirs``). Whatever is left is removed, then reported as
    an error of the last test.
    """
    from e2e.util.tmpdirs import reap_stale, session_dirs

    yield
    from e2e.build.cache import cache_root

    # Guests that fail on purpose in this process keep their logs for the error to name; not in the cache.
    for kept in (cache_root() / "logs" / "failed").glob(f"*-pveoi-vm-{os.getpid()}-*"):
        shutil.rmtree(kept, ignore_errors=True)
    tag = SESSION_TAG.split("=", 1)[1]
    reap_stale()
    survivors = wait_no_new_qemu(set())
    for pid in survivors:
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
    dirs = session_dirs(tag)
    for path in dirs:
        shutil.rmtree(path, ignore_errors=True)
    assert not survivors and not dirs, (
        f"the test session left qemu-system processes {sorted(survivors)} and temp dirs {[str(d) for d in dirs]}")


@pytest.fixture(autouse=True)
def no_own_temp_dirs() -> Iterator[None]:
    """No test may leave a pveoi temp dir made by the test process itself (Machine, PerfStat, ...)."""
    from e2e.util.tmpdirs import session_dirs

    def own() -> set[Path]:
        return {p for p in session_dirs(SESSION_TAG.split("=", 1)[1]) if f"-{os.getpid()}-" in p.name}

    before = own()
    yield
    left = own() - before
    for path in left:
        shutil.rmtree(path, ignore_errors=True)
    assert not left, f"test left pveoi temp dirs behind: {sorted(map(str, left))}"


@pytest.fixture(autouse=True)
def no_orphan_qemu(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every test must leave no QEMU behind (checked only for tests that boot)."""
    if not any(request.node.get_closest_marker(m) for m in ("qemu", "kvm")):
        yield
        return
    before = qemu_pids()
    yield
    survivors = wait_no_new_qemu(before)
    for pid in survivors:
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
    assert not survivors, f"test left qemu-system processes running: {sorted(survivors)}"


@pytest.fixture(scope="session")
def guest_kernel(pveoi_kernel: Path) -> Path:
    """pveoi's patched guest kernel: the pytest plugin's ``pveoi_kernel`` (``--pveoi-kernel``, else
    built on first use, then a cache hit)."""
    return pveoi_kernel


@pytest.fixture(scope="session")
def host_kernel() -> Path:
    """The virtual KVM host's kernel."""
    from e2e.build import kernel

    return kernel.build_kernel(kernel.default_spec("host")).file("bzImage")


@pytest.fixture(scope="session")
def guest_image(pveoi_image):  # type: ignore[no-untyped-def]
    """The guest image: the pytest plugin's ``pveoi_image`` (``--pveoi-image``, else pveoi's, cached)."""
    return pveoi_image


FIXTURES = Path(__file__).resolve().parent / "fixtures"


def fixture_patches(fixture: str, base: str = "6.1") -> list[Path]:
    """A guest fixture's planted patches for ``base``: for 6.1 (where the fixtures began) the
    ``*.patch`` of ``tests/fixtures/<fixture>/``, for another base those of its ``<base>/``."""
    where = FIXTURES / fixture if base == "6.1" else FIXTURES / fixture / base
    found = sorted(where.glob("*.patch"))
    assert found, f"no {base} patches in {where}"
    return found


def fixture_patch_dir(fixture: str, tmp: Path, base: str = "6.1") -> Path:
    """The base's guest series in order, then the fixture's patches for that base, as one quilt
    dir of symlinks (the cache key hashes names and contents: every build is one key)."""
    from e2e.build.kernel import base_named, load_series

    d = tmp / f"{fixture}-{base}-patches"
    d.mkdir()
    names = []
    for path in [p.path for p in load_series(base_named(base).series_dir)] + fixture_patches(fixture, base):
        (d / path.name).symlink_to(path)
        names.append(path.name)
    (d / "series").write_text("\n".join(names) + "\n")
    return d


def fixture_kernel(fixture: str, tmp: Path, base: str = "6.1") -> Path:
    """A guest kernel of ``base`` with a planted bug from ``tests/fixtures/<fixture>/`` (a cache hit
    once built)."""
    from e2e.build import kernel

    spec = kernel.default_spec("guest", patches_dir=fixture_patch_dir(fixture, tmp, base), base=base)
    return kernel.build_kernel(spec).file("bzImage")


def bzimage_bytes(payload: bytes | None = None, version: bytes | None = b"6.1.192 (pveoi@pveoi) #1 SMP pveoi",
                  protocol: int = 0x020F, setup_sects: int = 4) -> bytes:
    """A well-formed x86 bzImage as QEMU and pveoi read it: boot signature, ``HdrS`` header, boot
    protocol ``protocol``, version string, and ``payload`` (default: a gzip-compressed ELF stub)
    where the header says. It boots nothing."""
    import gzip
    import struct

    if payload is None:
        payload = gzip.compress(b"\x7fELF" + b"\0" * 60, mtime=0)
    setup = bytearray((setup_sects + 1) * 512)
    setup[0x1F1] = setup_sects
    setup[0x1FE:0x200] = b"\x55\xaa"
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", setup, 0x206, protocol)
    if version is not None:
        struct.pack_into("<H", setup, 0x20E, 0x400 - 0x200)
        setup[0x400:0x400 + len(version) + 1] = version + b"\0"
    kernel = bytearray(0x100) + payload
    kernel += b"\0" * (-len(kernel) % 16)
    struct.pack_into("<I", setup, 0x1F4, len(kernel) // 16)
    struct.pack_into("<II", setup, 0x248, 0x100, len(payload))
    return bytes(setup + kernel)
