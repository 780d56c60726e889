"""The one runner of short host commands: output, a deadline, and one typed error naming the command."""

from __future__ import annotations

import pytest

from e2e.errors import CommandError, ConfigError
from e2e.util.command import run


def test_output_is_returned() -> None:
    done = run(["sh", "-c", "echo out; echo err >&2"])
    assert (done.returncode, done.stdout, done.stderr) == (0, "out\n", "err\n")


def test_a_failure_carries_the_command_its_status_and_its_output_tail() -> None:
    with pytest.raises(CommandError) as err:
        run(["sh", "-c", "echo 1 >&2; echo 2 >&2; echo 3 >&2; echo 4 >&2; exit 3"], what="the probe", fix="do x")
    e = err.value
    assert isinstance(e, ConfigError) and e.exit_code == 2
    assert (e.returncode, e.tail, e.argv[0]) == (3, ("2", "3", "4"), "sh")
    assert str(e) == "the probe failed (exit 3): 2 | 3 | 4; fix: do x"
    assert run(["sh", "-c", "exit 4"], check=False).returncode == 4


def test_a_missing_program_and_a_deadline_are_the_same_error() -> None:
    with pytest.raises(CommandError, match="pveoi-no-such-program not found"):
        run(["pveoi-no-such-program"])
    with pytest.raises(CommandError, match=r"ran past its 0\.2 s deadline") as err:
        run(["sleep", "5"], timeout=0.2)
    assert err.value.returncode is None
