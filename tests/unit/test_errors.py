"""pveoi's errors: every one defined in e2e/errors.py and listed in its docstring's tree, and complete when
raised (what an error knows is passed to its constructor; one that learns more is raised again as a new one)."""

from __future__ import annotations

import ast
import importlib
import inspect
import re
from pathlib import Path

import pytest

import e2e.errors as errors
from e2e.errors import GuestTimeout, Kind, PveoiError, QemuExited, QmpCommandError

PACKAGE = Path(errors.__file__).resolve().parent


def docstring_tree() -> dict[str, str | None]:
    """``{class name: its parent's name}`` as the module docstring's tree draws it (the root's parent None)."""
    doc = errors.__doc__ or ""
    lines = doc[doc.index("    PveoiError\n"):].split("\n\n", 1)[0].splitlines()
    parents: dict[str, str | None] = {"PveoiError": None}
    at_depth = ["PveoiError"]
    for line in lines[1:]:
        m = re.match(r"^(.*?)\+-- (\w+)", line)
        assert m, f"not a line of the tree: {line!r}"
        depth = (len(m.group(1)) - 5) // 5 + 1  # " +-- " is depth 1, " |    +-- " depth 2, ...
        assert depth <= len(at_depth), f"{m.group(2)} has no parent in the tree"
        del at_depth[depth:]
        assert m.group(2) not in parents, f"{m.group(2)} is in the tree twice"
        parents[m.group(2)] = at_depth[-1]
        at_depth.append(m.group(2))
    return parents


def test_the_docstring_tree_lists_every_error_class_under_its_base() -> None:
    defined = {name: cls for name, cls in vars(errors).items()
               if inspect.isclass(cls) and issubclass(cls, PveoiError) and cls.__module__ == errors.__name__}
    tree = docstring_tree()
    assert set(tree) == set(defined), "the tree in e2e/errors.py's docstring and its classes differ"
    for name, cls in defined.items():
        if name != "PveoiError":
            assert tree[name] == cls.__bases__[0].__name__, f"{name} is drawn under {tree[name]}"


def modules() -> list[str]:
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__main__":
            continue
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def test_no_module_but_errors_defines_an_exception() -> None:
    """Every exception class of pveoi lives in e2e/errors.py: found by import (what a module defines)
    and by reading (a class defined in a function, its base named like an error)."""
    elsewhere = []
    for name in modules():
        if name == errors.__name__:
            continue
        module = importlib.import_module(name)
        elsewhere += [f"{name}.{n}" for n, obj in vars(module).items()
                      if inspect.isclass(obj) and issubclass(obj, Exception) and obj.__module__ == name]
        path = Path(module.__file__ or "")
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ClassDef):
                bases = [ast.unparse(b).rsplit(".", 1)[-1] for b in node.bases]
                if any(b in ("Exception", "BaseException") or b.endswith(("Error", "Exception"))
                       or b in vars(errors) for b in bases):
                    elsewhere.append(f"{name}.{node.name}({', '.join(bases)})")
    assert not sorted(set(elsewhere)), "exception classes outside e2e/errors.py"


def test_what_an_error_knows_is_passed_when_it_is_made() -> None:
    err = PveoiError("m", "f", Kind.INFRASTRUCTURE, cause="guest reset", evidence=["a", "b"],
                     retried=[{"part": "block"}])
    assert (err.cause, err.evidence, err.retried, err.kind) == ("guest reset", ("a", "b"), ({"part": "block"},),
                                                                Kind.INFRASTRUCTURE)
    plain = PveoiError("m")
    assert (plain.cause, plain.evidence, plain.retried) == ("", (), ())
    exited = QemuExited("QEMU exited", "triple fault", ["SHUTDOWN reason guest-reset"], exitcode=0)
    assert (exited.cause, exited.evidence, exited.exitcode) == ("triple fault", ("SHUTDOWN reason guest-reset",), 0)


@pytest.mark.parametrize("err", [
    GuestTimeout("guest not ready after 5s", "wait longer", cause="x", evidence=["e"]),
    QmpCommandError("query-status", {"a": 1}, "GenericError", "timed out", fix="f"),
    QemuExited("QEMU exited", "guest reset", ["SHUTDOWN"], exitcode=1, kind=Kind.FINDING),
])
def test_an_error_that_learns_more_is_a_new_one_of_its_type(err: PveoiError) -> None:
    err.add_note("a note")
    more = err.with_(message=err.message + "; run state paused", evidence=["run state paused"],
                     retried=[{"part": "timer"}])
    assert type(more) is type(err) and more is not err
    assert str(more) == str(err).replace(err.message, err.message + "; run state paused")
    assert (more.evidence, more.retried, more.fix, more.kind, more.cause) == (
        ("run state paused",), ({"part": "timer"},), err.fix, err.kind, err.cause)
    assert more.args == (more.message,)
    assert err.evidence != more.evidence and "; run state paused" not in err.message  # the first one is unchanged
    more.add_note("another")
    assert err.__notes__ == ["a note"] and more.__notes__ == ["a note", "another"]
    assert vars(err.with_()) == vars(err)
