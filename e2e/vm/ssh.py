"""
SSH to the guest with paramiko: key-only, host key pinned, deadlines everywhere.

Commands are argument lists, quoted with :func:`shlex.join`; a plain string is
accepted only as a whole shell command the caller wrote (never built from user
input).
"""

from __future__ import annotations

import base64
import logging
import shlex
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import paramiko

from ..errors import CommandFailed, CommandTimeout, GuestError, SshError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CommandResult:
    argv: str
    exit_status: int
    stdout: str
    stderr: str
    seconds: float

    def check(self) -> CommandResult:
        """Raise :class:`~e2e.errors.CommandFailed` (an SshError) unless the command exited 0."""
        if self.exit_status != 0:
            tail = (self.stderr or self.stdout).strip().splitlines()[-1:] or ["no output"]
            raise CommandFailed(f"guest command `{self.argv}` exited {self.exit_status}: {tail[0]}")
        return self


class GuestWatch(Protocol):
    """What the SSH wait needs from the guest's console (:class:`e2e.vm.console.Console`)."""

    def check(self) -> None:
        """Raise if the guest failed (a panic, an init error)."""

    def pause(self, seconds: float) -> None:
        """Wait ``seconds``; raise at once if the guest fails meanwhile."""

    def on_failure(self, callback: Callable[[], None]) -> AbstractContextManager[None]:
        """Call ``callback`` if the guest fails while inside."""


def _shut(sock: socket.socket) -> None:
    """End a blocking read on ``sock`` from another thread (the SSH handshake's)."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def _command_string(cmd: Sequence[str] | str) -> str:
    return cmd if isinstance(cmd, str) else shlex.join(cmd)


def _load_key(path: Path) -> paramiko.PKey:
    for cls in (paramiko.ECDSAKey, paramiko.Ed25519Key, paramiko.RSAKey):
        try:
            return cls.from_private_key_file(str(path))
        except (paramiko.SSHException, ValueError):
            continue
    raise SshError(f"cannot load the SSH key {path}", fix="delete it so pveoi regenerates it")


class GuestSsh:
    """One SSH connection to the guest.

    :param port: the loopback port forwarded to the guest's port 22.
    :param private_key: the client key (the guest accepts only it).
    :param host_key_line: the guest's public host key (``type base64``), pinned.
    :param explain_drop: called with what failed, a grace period in seconds and
        when (``mid-command``, ``before SSH answered``) when the connection drops
        or cannot be made; returns the error that says why, e.g. QEMU exited on
        a guest reset (:meth:`e2e.vm.machine.Machine.exit_error`), or None if QEMU
        still runs.
    :param console_log: the guest's console log, named in errors.
    :param watch: the guest's console: the wait for SSH ends at once when it
        shows a panic or an init error (None: wait out the deadline).
    """

    def __init__(self, port: int, private_key: Path, host_key_line: str, host: str = "127.0.0.1",
                 user: str = "root", explain_drop: Callable[[str, float, str], GuestError | None] | None = None,
                 console_log: Path | None = None, watch: GuestWatch | None = None) -> None:
        self.explain_drop = explain_drop
        self.watch = watch
        self._console = f"the guest's console log {console_log}" if console_log else "the guest's console log"
        self.host = host
        self.port = port
        self.user = user
        self._pkey = _load_key(private_key)
        self._host_key_line = host_key_line
        self._client: paramiko.SSHClient | None = None

    def _new_client(self) -> paramiko.SSHClient:
        client = paramiko.SSHClient()
        keytype, b64 = self._host_key_line.split()[:2]
        key = paramiko.PKey.from_type_string(keytype, base64.b64decode(b64))
        client.get_host_keys().add(f"[{self.host}]:{self.port}", keytype, key)
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        return client

    def connect(self, timeout: float = 60.0) -> GuestSsh:
        """Connect, retrying until ``timeout`` seconds have passed.

        With a :attr:`watch`, a panic or init error on the guest's console
        ends the wait at once, even mid-handshake.

        :raises SshError: if no connection succeeded in time (the last cause is named).
        :raises GuestPanic: the console showed a panic (with a watch).
        :raises GuestInitError: the console showed an init error (with a watch).
        """
        deadline = time.monotonic() + timeout
        attempt, last = 0, "no attempt"
        while True:
            attempt += 1
            if self.watch is not None:
                self.watch.check()
            client = self._new_client()
            left = max(1.0, deadline - time.monotonic())
            try:
                sock = socket.create_connection((self.host, self.port), timeout=min(10.0, left))
            except OSError as err:
                client.close()
                last = f"{type(err).__name__}: {err}"
            else:
                try:
                    self._handshake(client, sock, left)
                    transport = client.get_transport()
                    if transport is not None:
                        transport.set_keepalive(5)
                    self._client = client
                    log.debug("ssh connected to %s:%d after %d attempt(s)", self.host, self.port, attempt)
                    return self
                except paramiko.BadHostKeyException as err:
                    client.close()
                    sock.close()
                    raise SshError(f"guest host key mismatch on port {self.port}",
                                   fix="rebuild the image (pveoi image build --force)") from err
                except paramiko.AuthenticationException as err:
                    client.close()
                    sock.close()
                    raise SshError("the guest refused pveoi's SSH key",
                                   fix="rebuild the image so it carries the cache's key") from err
                except (OSError, paramiko.SSHException, EOFError) as err:
                    client.close()
                    sock.close()
                    last = f"{type(err).__name__}: {err}"
                    if self.watch is not None:
                        self.watch.check()  # the handshake was cut short because the guest failed
            gone = self.explain_drop(f"no SSH to the guest on 127.0.0.1:{self.port} ({last})", 0.0,
                                     "before SSH answered") if self.explain_drop else None
            if gone is not None:  # QEMU exited: waiting longer cannot help
                raise gone
            if time.monotonic() >= deadline:
                raise SshError(f"no SSH to the guest on 127.0.0.1:{self.port} within {timeout:.0f}s ({last})",
                               fix=f"check {self._console} for dropbear errors")
            pause = min(0.5, max(0.0, deadline - time.monotonic()))
            if self.watch is not None:
                self.watch.pause(pause)
            else:
                time.sleep(pause)  # a backoff between attempts; nothing to watch

    def _handshake(self, client: paramiko.SSHClient, sock: socket.socket, left: float) -> None:
        """SSH over a connected ``sock``; a guest failure seen meanwhile shuts the socket down."""
        if self.watch is None:
            client.connect(self.host, self.port, username=self.user, pkey=self._pkey, sock=sock,
                           look_for_keys=False, allow_agent=False, timeout=min(10.0, left),
                           banner_timeout=min(15.0, left), auth_timeout=min(15.0, left))
            return
        with self.watch.on_failure(lambda: _shut(sock)):
            client.connect(self.host, self.port, username=self.user, pkey=self._pkey, sock=sock,
                           look_for_keys=False, allow_agent=False, timeout=min(10.0, left),
                           banner_timeout=min(15.0, left), auth_timeout=min(15.0, left))

    @property
    def client(self) -> paramiko.SSHClient:
        if self._client is None:
            raise SshError("not connected", fix="call connect() first")
        return self._client

    def run(
        self,
        cmd: Sequence[str] | str,
        timeout: float = 60.0,
        stdin: bytes | None = None,
        on_output: Callable[[str, bytes], None] | None = None,
    ) -> CommandResult:
        """Run a command; return its status and output.

        :param timeout: seconds for the whole command; past it the channel is closed.
        :param on_output: called with ("stdout"|"stderr", chunk) as output arrives.
        :raises SshError: on timeout or a dropped connection.
        """
        command = _command_string(cmd)
        transport = self.client.get_transport()
        if transport is None or not transport.is_active():
            raise self._dropped(f"SSH connection to the guest is gone before `{command}`")
        start = time.monotonic()
        deadline = start + timeout
        open_timeout = min(10.0, timeout)
        try:
            chan = transport.open_session(timeout=open_timeout)
        except paramiko.SSHException as err:
            if transport.is_active():  # connected, but the guest does not answer
                raise SshError(f"the guest did not open an SSH channel for `{command}` within {open_timeout:.0f}s",
                               fix=f"the guest is hung or overloaded; check {self._console}") from err
            raise self._dropped(f"SSH failed while opening a channel for `{command}`: {err}") from err
        # paramiko waits for the answer to an exec request with no deadline (Channel._wait_for_event):
        # a guest that never answers would hold pveoi for ever. Closing the channel wakes that wait.
        # The lock makes "answered" and "gave up" exclusive: a late timer never closes a live channel.
        answer_lock, answer = threading.Lock(), {"answered": False, "gave_up": False}

        def give_up() -> None:
            with answer_lock:
                if not answer["answered"]:
                    answer["gave_up"] = True
                    chan.close()

        unanswered = threading.Timer(max(0.1, deadline - time.monotonic()), give_up)
        unanswered.daemon = True
        try:
            chan.settimeout(0.2)
            unanswered.start()
            try:
                chan.exec_command(command)
            except paramiko.SSHException:
                if not answer["gave_up"]:
                    raise
            finally:
                with answer_lock:
                    answer["answered"] = True
                unanswered.cancel()
            if answer["gave_up"]:
                raise SshError(f"the guest did not answer the request to run `{command}` within {timeout:.0f}s",
                               fix=f"the guest is hung or overloaded; check {self._console}")
            if stdin is not None:
                chan.sendall(stdin)
            chan.shutdown_write()
            out, errbuf = bytearray(), bytearray()

            def drain() -> None:
                while chan.recv_ready():
                    data = chan.recv(65536)
                    out.extend(data)
                    if on_output:
                        on_output("stdout", data)
                while chan.recv_stderr_ready():
                    data = chan.recv_stderr(65536)
                    errbuf.extend(data)
                    if on_output:
                        on_output("stderr", data)

            while True:
                drain()
                if chan.exit_status_ready():
                    drain()
                    break
                if not transport.is_active() or chan.closed:
                    raise self._dropped(f"SSH connection dropped while running `{command}`")
                if time.monotonic() > deadline:
                    chan.close()
                    raise CommandTimeout(f"guest command `{command}` timed out after {timeout:.0f}s",
                                         fix="raise the workload timeout or check the guest")
                chan.status_event.wait(0.05)
            status = chan.recv_exit_status()
            chan.close()
            if status == -1 and not transport.is_active():  # closed with no exit status: the link died
                raise self._dropped(f"SSH connection dropped while running `{command}`")
        except (paramiko.SSHException, EOFError, OSError) as err:
            raise self._dropped(f"SSH failed while running `{command}`: {err}") from err
        return CommandResult(command, status, out.decode(errors="replace"), errbuf.decode(errors="replace"),
                             time.monotonic() - start)

    def _dropped(self, what: str) -> GuestError:
        """The error for a connection that went away: how QEMU ended if that is why
        (:class:`e2e.errors.QemuExited`, naming the class), else an :class:`SshError`."""
        # QEMU's exit closes the forwarded connection a moment before waitpid can tell.
        gone = self.explain_drop(what, 2.0, "mid-command") if self.explain_drop else None
        if gone is not None:
            return gone
        return SshError(what, fix=f"check {self._console}; the guest may have crashed or dropbear died")

    def put(self, local: Path, remote: str, timeout: float = 60.0) -> None:
        """Copy a local file to the guest (``cat >`` over exec; dropbear has no SFTP here)."""
        self.run(["sh", "-c", 'cat > "$1"', "sh", remote], timeout=timeout, stdin=local.read_bytes()).check()

    def get(self, remote: str, local: Path, timeout: float = 60.0) -> None:
        """Copy a file from the guest."""
        res = self.run(["cat", remote], timeout=timeout).check()
        local.write_text(res.stdout)

    def interactive(self) -> int:
        """An interactive shell on the caller's terminal; returns the shell's exit status."""
        import select
        import termios
        import tty

        chan = self.client.invoke_shell(term="xterm")
        stdin_fd = sys.stdin.fileno()
        old = termios.tcgetattr(stdin_fd) if sys.stdin.isatty() else None
        try:
            if old is not None:
                tty.setraw(stdin_fd)
            while True:
                readable, _, _ = select.select([chan, stdin_fd], [], [])
                if chan in readable:
                    data = chan.recv(4096)
                    if not data:
                        break
                    sys.stdout.buffer.write(data)
                    sys.stdout.flush()
                if stdin_fd in readable:
                    data = sys.stdin.buffer.read1(4096) if hasattr(sys.stdin.buffer, "read1") else b""
                    if not data:
                        chan.shutdown_write()
                    else:
                        chan.sendall(data)
        finally:
            if old is not None:
                termios.tcsetattr(stdin_fd, termios.TCSADRAIN, old)
        return chan.recv_exit_status()

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def __enter__(self) -> GuestSsh:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
