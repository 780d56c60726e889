"""The one runner of short host commands: output, a deadline, and one typed error naming the command."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from e2e.errors import CommandError, ConfigError
from e2e.util.command import run, run_bytes


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


def test_output_as_bytes_and_input_for_data() -> None:
    done = run_bytes(["sh", "-c", "cat; echo err >&2; exit 1"], input=b"\x7fELF\x00\xff", check=False)
    assert (done.returncode, done.stdout, done.stderr) == (1, b"\x7fELF\x00\xff", "err\n")
    assert run_bytes(["cat"]).stdout == b""  # no input: stdin is /dev/null
    with pytest.raises(CommandError, match=r"exit 1\): err"):
        run_bytes(["sh", "-c", "echo err >&2; exit 1"])


def test_cwd_and_env_reach_the_command(tmp_path: Path) -> None:
    done = run(["sh", "-c", 'pwd; echo "$PVEOI_TEST_VAR"; test -n "$PATH"'], cwd=tmp_path,
               env={"PVEOI_TEST_VAR": "x"})
    assert done.stdout.split() == [str(tmp_path), "x"]


PACKAGE = Path(__file__).resolve().parents[2] / "e2e"
#: What runs a command without the runner (e2e.util.command) or spawn (e2e.util.spawn).
FORBIDDEN = {"subprocess": {"run", "call", "check_call", "check_output", "getoutput", "getstatusoutput", "Popen"},
             "os": {"system", "popen", "posix_spawn", "posix_spawnp", "spawnl", "spawnle", "spawnlp", "spawnlpe",
                    "spawnv", "spawnve", "spawnvp", "spawnvpe"},
             "asyncio": {"create_subprocess_exec", "create_subprocess_shell"}}
#: The functions that may start a child with subprocess.Popen themselves (not spawn's: a child that dies
#: with its pipe, whose output is read line by line as it comes).
ALLOWED_POPEN = {
    "_make_logged": "make with progress, its output streamed to the build log (e2e/build/kernel.py)",
}


def direct_commands(path: Path) -> list[str]:
    """``line: call`` for every command ``path`` runs past the runner and spawn."""
    tree = ast.parse(path.read_text(), str(path))
    modules: dict[str, str] = {}  # local name -> the module it is (import subprocess as sp)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules |= {a.asname or a.name: a.name for a in node.names if a.name in FORBIDDEN}
        elif isinstance(node, ast.ImportFrom) and node.module in FORBIDDEN:
            found += [f"{node.lineno}: from {node.module} import {a.name}" for a in node.names
                      if a.name in FORBIDDEN[node.module]]
    allowed_lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name in ALLOWED_POPEN:
            allowed_lines |= {n.lineno for n in ast.walk(node) if isinstance(n, ast.Call)}
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name) and node.func.value.id in modules):
            module, name = modules[node.func.value.id], node.func.attr
            if name in FORBIDDEN[module] and not (name == "Popen" and node.lineno in allowed_lines):
                found.append(f"{node.lineno}: {module}.{name}")
    return found


def test_every_command_goes_through_the_runner_or_spawn() -> None:
    """No module of e2e outside e2e/util/ runs a command itself: short ones through
    :func:`e2e.util.command.run`, long-lived children through :func:`e2e.util.spawn.popen`."""
    offenders = {str(p.relative_to(PACKAGE.parent)): calls for p in sorted(PACKAGE.rglob("*.py"))
                 if p.relative_to(PACKAGE).parts[0] != "util" and (calls := direct_commands(p))}
    assert not offenders, "commands run past e2e.util.command and e2e.util.spawn"


def test_the_command_check_sees_a_direct_call(tmp_path: Path) -> None:
    mod = tmp_path / "m.py"
    mod.write_text("import subprocess as sp\nimport os\nfrom subprocess import check_output\n"
                   "def f():\n    sp.run(['x'])\n    os.system('x')\n    sp.Popen(['x'])\n"
                   "def _make_logged():\n    sp.Popen(['make'])\n")
    assert direct_commands(mod) == ["3: from subprocess import check_output", "5: subprocess.run",
                                    "6: os.system", "7: subprocess.Popen"]
