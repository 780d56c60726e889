"""QMP errors keep the failed command, its arguments and QEMU's error (a real QEMU, TCG, paused)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from e2e.errors import PveoiError, QmpCommandError
from e2e.vm.argv import MachineSpec, base_argv
from e2e.vm.machine import Machine

pytestmark = [pytest.mark.qemu,
              pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="needs qemu-system-x86_64")]


class BareMachine(Machine):
    """A QEMU with no kernel, paused (-S): enough to talk QMP to."""

    def _build_argv(self, qmp_fd: int, console_fd: int) -> list[str]:
        return [*base_argv("qemu-system-x86_64", self.spec.name, "tcg", "max", 1, 64, qmp_fd, console_fd), "-S"]


def test_a_refused_qmp_command_names_itself_its_arguments_and_qemus_error(tmp_path: Path) -> None:
    kernel = tmp_path / "unused-bzImage"
    kernel.write_bytes(b"")
    with BareMachine(MachineSpec(kernel=kernel, name="qmp-errors"), r"never") as m:
        assert m.status() == "prelaunch"
        with pytest.raises(QmpCommandError) as err:
            m.qmp("qom-get", path="/machine/no-such-object", property="kvm-pv-eoi")
        e = err.value
        assert isinstance(e, PveoiError)
        assert (e.command, e.arguments) == ("qom-get", {"path": "/machine/no-such-object", "property": "kvm-pv-eoi"})
        assert e.error_class == "DeviceNotFound" and "/machine/no-such-object" in e.desc
        text = str(e)
        assert "\n" not in text
        assert text.startswith('QMP qom-get {"path": "/machine/no-such-object", "property": "kvm-pv-eoi"} failed: '
                               f"DeviceNotFound: {e.desc}; fix: check qom-get and its arguments"), text
        # An unknown command is QEMU's CommandNotFound, named the same way.
        with pytest.raises(QmpCommandError, match=r"^QMP no-such-command \{\} failed: CommandNotFound: "):
            m.qmp("no-such-command")
        assert m.status() == "prelaunch", "the machine is still usable after a refused command"


class HookedMachine(BareMachine):
    """Records the lifecycle hooks; its extra socket is what QEMU would inherit."""

    def __init__(self, *args: object, fail_argv: bool = False, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.calls: list[str] = []
        self.fail_argv = fail_argv

    def _pre_launch(self) -> None:
        import socket

        self.calls.append("pre")
        ours, theirs = socket.socketpair()
        self.ours = ours
        self._extra_theirs = [theirs]

    def _post_launch(self) -> None:
        self.calls.append(f"post:{self.status()}")

    def _post_shutdown(self) -> None:
        self.calls.append("down")
        self.ours.close()

    def _build_argv(self, qmp_fd: int, console_fd: int) -> list[str]:
        if self.fail_argv:
            raise PveoiError("no argv for you")
        return super()._build_argv(qmp_fd, console_fd)


def test_lifecycle_hooks_run_once_each_in_order_and_post_shutdown_also_after_a_failed_launch(tmp_path: Path) -> None:
    kernel = tmp_path / "unused-bzImage"
    kernel.write_bytes(b"")
    m = HookedMachine(MachineSpec(kernel=kernel, name="hooks"), r"never")
    with m:
        assert m.calls == ["pre", "post:prelaunch"]
        assert m._extra_theirs[0].fileno() == -1, "pveoi's copy of what QEMU inherits is closed after the launch"
    m.shutdown()  # idempotent: the hook does not run twice
    assert m.calls == ["pre", "post:prelaunch", "down"] and m.ours.fileno() == -1
    bad = HookedMachine(MachineSpec(kernel=kernel, name="hooks-bad"), r"never", fail_argv=True)
    with pytest.raises(PveoiError, match="no argv for you"):
        bad.launch()
    assert bad.calls == ["pre", "down"] and bad.ours.fileno() == -1 and bad._extra_theirs[0].fileno() == -1
