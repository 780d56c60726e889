"""Shared fixtures and hooks: kernels and the image (built once, cached by content hash), and
a guard that fails any test leaving a qemu-system process behind. What tests share besides
fixtures lives in tests/helpers/."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.processes import SESSION, SESSION_ENV, qemu_pids, wait_no_new_qemu

# Every process this test session starts inherits this tag, so the orphan guard
# sees only our own QEMUs, never those of another pveoi run on the same machine.
os.environ[SESSION_ENV] = SESSION


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
    reap_stale()
    survivors = wait_no_new_qemu(set())
    for pid in survivors:
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
    dirs = session_dirs(SESSION)
    for path in dirs:
        shutil.rmtree(path, ignore_errors=True)
    assert not survivors and not dirs, (
        f"the test session left qemu-system processes {sorted(survivors)} and temp dirs {[str(d) for d in dirs]}")


@pytest.fixture(autouse=True)
def no_own_temp_dirs() -> Iterator[None]:
    """No test may leave a pveoi temp dir made by the test process itself (Machine, PerfStat, ...)."""
    from e2e.util.tmpdirs import session_dirs

    def own() -> set[Path]:
        return {p for p in session_dirs(SESSION) if f"-{os.getpid()}-" in p.name}

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

