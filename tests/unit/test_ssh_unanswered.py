"""A guest whose SSH server takes the connection but never answers the request to run a
command: paramiko alone would wait for ever; pveoi gives up within the channel deadline."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import paramiko
import pytest

from e2e.errors import SshError
from e2e.vm.ssh import GuestSsh


class Mute(paramiko.ServerInterface):
    """Accepts pveoi's key and a session, then sits on the exec request."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        return paramiko.AUTH_SUCCESSFUL

    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_channel_request(self, kind: str, chanid: int) -> int:
        return paramiko.OPEN_SUCCEEDED

    def check_channel_exec_request(self, channel: paramiko.Channel, command: bytes) -> bool:
        self.release.wait(60)  # the hang: no answer
        return False


def test_an_unanswered_exec_request_is_an_error_not_a_hang(tmp_path: Path) -> None:
    host_key = paramiko.ECDSAKey.generate()
    client_key = paramiko.ECDSAKey.generate()
    client_key.write_private_key_file(str(tmp_path / "id"))
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    server = Mute()
    transports: list[paramiko.Transport] = []

    def serve() -> None:
        conn, _ = listener.accept()
        t = paramiko.Transport(conn)
        t.add_server_key(host_key)
        transports.append(t)
        t.start_server(server=server)

    threading.Thread(target=serve, daemon=True).start()
    ssh = GuestSsh(listener.getsockname()[1], tmp_path / "id", f"{host_key.get_name()} {host_key.get_base64()}")
    try:
        ssh.connect(timeout=20)
        started = time.monotonic()
        with pytest.raises(SshError, match=r"the guest did not answer the request to run `true` within 2s"):
            ssh.run(["true"], timeout=2)
        assert time.monotonic() - started < 10
    finally:
        server.release.set()
        ssh.close()
        for t in transports:
            t.close()
        listener.close()
