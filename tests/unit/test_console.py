"""The console watcher on a real socketpair (no QEMU): init errors are fatal at once."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from e2e.build.image import READY_PATTERN
from e2e.errors import GuestInitError, GuestPanic, GuestTimeout
from e2e.vm.console import Console


@pytest.fixture
def wire(tmp_path: Path) -> Iterator[tuple[socket.socket, Console]]:
    guest, ours = socket.socketpair()
    console = Console(ours, tmp_path / "console.log", READY_PATTERN)
    try:
        yield guest, console
    finally:
        guest.close()
        console.close()


def test_an_init_error_before_the_ready_line_fails_the_wait(wire: tuple[socket.socket, Console]) -> None:
    guest, console = wire
    guest.sendall(b"booting\r\npveoi-guest-error: no eth0 (is a virtio-net device attached?)\r\n"
                  b"pveoi-guest-ready uptime=1.20\r\n")
    with pytest.raises(GuestInitError) as err:
        console.wait_ready(10)
    assert err.value.line == "pveoi-guest-error: no eth0 (is a virtio-net device attached?)"
    assert str(err.value).startswith("the guest's init failed: pveoi-guest-error: no eth0 (is a virtio-net")
    with pytest.raises(GuestInitError):
        console.check()


def test_a_clean_boot_is_ready(wire: tuple[socket.socket, Console]) -> None:
    guest, console = wire
    guest.sendall(b"pveoi-guest-pveoi: unavailable\r\npveoi-guest-ready uptime=1.20\r\n")
    assert console.wait_ready(10).startswith("pveoi-guest-ready uptime=1.20")
    console.check()
    console.pause(0.01)


def test_pause_and_listeners_end_at_once_on_an_init_error(wire: tuple[socket.socket, Console]) -> None:
    guest, console = wire
    called = threading.Event()
    timer = threading.Timer(0.3, guest.sendall, [b"pveoi-guest-error: cannot mount /proc\r\n"])
    with console.on_failure(called.set):
        timer.start()
        start = time.monotonic()
        with pytest.raises(GuestInitError, match="cannot mount /proc"):
            console.pause(30)
    assert time.monotonic() - start < 10
    assert called.is_set()
    late = threading.Event()
    with console.on_failure(late.set):  # registered after the failure: called at once
        assert late.is_set()


def test_no_error_pattern_means_the_line_is_only_logged(tmp_path: Path) -> None:
    guest, ours = socket.socketpair()
    console = Console(ours, tmp_path / "console.log", READY_PATTERN, error_pattern=None)
    try:
        guest.sendall(b"pveoi-guest-error: no eth0\r\n")
        with pytest.raises(GuestTimeout):
            console.wait_ready(0.5)
    finally:
        guest.close()
        console.close()


def test_a_panic_still_wins(wire: tuple[socket.socket, Console]) -> None:
    guest, console = wire
    guest.sendall(b"Kernel panic - not syncing: VFS: Unable to mount root fs\r\n")
    guest.close()
    with pytest.raises(GuestPanic):
        console.wait_ready(10)


def test_an_error_line_arriving_in_pieces_is_quoted_whole(wire: tuple[socket.socket, Console]) -> None:
    """The serial console delivers a line in pieces: the quote must be the whole line, not its first piece."""
    guest, console = wire
    guest.sendall(b"pveoi-guest-error: no eth0 (is a vir")
    timer = threading.Timer(0.7, guest.sendall, [b"tio-net device attached?)\r\n"])
    timer.start()
    with pytest.raises(GuestInitError) as err:
        console.wait_ready(10)
    timer.join()
    assert err.value.line == "pveoi-guest-error: no eth0 (is a virtio-net device attached?)"
