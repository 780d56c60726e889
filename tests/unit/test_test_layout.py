"""The test suite's own layout: what tests share lives in tests/helpers/, never in a conftest or in
another test module; and tests/unit builds and boots nothing (tests/e2e does).

Read from the source (the AST, so code in a string, a pytester project, counts for nothing):
nothing here imports or runs the modules it checks.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
UNIT = TESTS / "unit"

#: Fixtures that build a kernel or an image, or boot a guest (tests/conftest.py, e2e/pytest_plugin.py).
BUILDING_FIXTURES = frozenset({"guest_kernel", "host_kernel", "guest_image", "pveoi_kernel", "pveoi_image",
                               "pveoi_boot", "pveoi_guest", "pveoi_ab"})
#: Markers of tests that boot QEMU, need KVM, build kernels or images, or soak (pyproject.toml).
BOOTING_MARKERS = frozenset({"qemu", "kvm", "slow", "soak"})
#: Helpers that build for real (tests/e2e only).
BUILDING_HELPERS = frozenset({"tests.helpers.kernels"})
#: Functions that build a kernel or an image, or boot a guest or an A/B, and the class that starts QEMU.
BUILDING_CALLS = frozenset({"build_kernel", "build_image", "fixture_kernel", "run_plan", "run_guest", "run_once",
                            "Machine"})


def python_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)


def imported_modules(path: Path, tests: Path = TESTS) -> list[tuple[int, str]]:
    """``(line, dotted name)`` of every module ``path`` (under ``tests``) imports, at any depth, relative
    imports resolved against where the file lies. For ``from M import n`` both ``M`` and ``M.n`` are
    listed: ``n`` may be a module (``from tests.unit import test_report``)."""
    package = list(path.relative_to(tests.parent).parent.parts)
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *(node.module.split(".") if node.module else [])])
            found.append((node.lineno, module))
            found += [(node.lineno, f"{module}.{a.name}") for a in node.names if a.name != "*"]
    return found


def shared_from_a_test_module(module: str) -> bool:
    """Does importing ``module`` take something from a conftest or from a ``test_*`` module?"""
    return any(part == "conftest" or part.startswith("test_") for part in module.split("."))


def test_no_module_imports_from_a_conftest_or_another_test_module() -> None:
    found = {f"{path.relative_to(TESTS.parent)}:{line}": f"imports {module}"
             for path in python_files(TESTS) for line, module in reversed(imported_modules(path))
             if shared_from_a_test_module(module)}  # one per import statement: its module, not each name
    offenders = [f"{where}: {what}" for where, what in sorted(found.items())]
    assert not offenders, ("move what tests share into tests/helpers/ and import it from there:\n"
                           + "\n".join(offenders))


@pytest.mark.parametrize(("source", "module"), [
    ("from tests.conftest import bzimage_bytes", "tests.conftest"),
    ("from ..conftest import not_measurable", "tests.conftest"),
    ("from . import conftest", "tests.unit.conftest"),
    ("import conftest", "conftest"),
    ("from tests.e2e.test_ab import screenshot", "tests.e2e.test_ab"),
    ("from .test_report import make_doc", "tests.unit.test_report"),
    ("from tests.unit import test_report", "tests.unit.test_report"),
    ("def f():\n    from test_attempts import setup_in\n", "test_attempts"),
])
def test_the_check_sees_every_spelling(tmp_path: Path, source: str, module: str) -> None:
    path = tmp_path / "tests" / "unit" / "test_x.py"
    path.parent.mkdir(parents=True)
    path.write_text(source + "\n")
    modules = [m for _, m in imported_modules(path, tmp_path / "tests")]
    assert module in modules and shared_from_a_test_module(module)
    assert not shared_from_a_test_module("tests.helpers.results") and not shared_from_a_test_module("make_golden")


def markers_used(tree: ast.AST) -> set[str]:
    """The ``pytest.mark.<name>`` names a module's code uses (decorators, ``pytestmark``, ``pytest.param``)."""
    return {node.attr for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
            and node.value.attr == "mark" and isinstance(node.value.value, ast.Name)
            and node.value.value.id == "pytest"}


def requested_fixtures(tree: ast.AST) -> set[str]:
    """The parameter names of a module's tests (``test*`` functions) and fixtures: the fixtures they request."""
    def is_fixture(node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
        return any("fixture" in ast.unparse(d) for d in node.decorator_list)

    return {a.arg for node in ast.walk(tree) if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            and (node.name.startswith("test") or is_fixture(node))
            for a in (*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs)}


def called(tree: ast.AST) -> set[str]:
    """The names a module's code calls or subclasses (``f(...)``, ``mod.f(...)``, ``class X(Machine)``)."""
    names = set()
    for node in ast.walk(tree):
        for target in ([node.func] if isinstance(node, ast.Call) else
                       node.bases if isinstance(node, ast.ClassDef) else []):
            if isinstance(target, ast.Name):
                names.add(target.id)
            elif isinstance(target, ast.Attribute):
                names.add(target.attr)
    return names


def test_unit_tests_build_and_boot_nothing() -> None:
    """No unit test is marked as one that boots or builds, requests a fixture that builds a kernel or
    an image or boots a guest, calls what builds or boots (or starts QEMU), or uses a helper that
    builds: those are tests/e2e. (A fake passed in its stead, ``monkeypatch.setattr(ab, "run_guest",
    fake)``, is not a call.)"""
    offenders = []
    for path in python_files(UNIT):
        tree = ast.parse(path.read_text(), str(path))
        where = path.relative_to(TESTS.parent)
        offenders += [f"{where}: marked {m}" for m in sorted(markers_used(tree) & BOOTING_MARKERS)]
        offenders += [f"{where}: requests {f}" for f in sorted(requested_fixtures(tree) & BUILDING_FIXTURES)]
        offenders += [f"{where}: calls {f}" for f in sorted(called(tree) & BUILDING_CALLS)]
        offenders += [f"{where}:{line}: imports {m}" for line, m in imported_modules(path)
                      if any(m == h or m.startswith(h + ".") for h in BUILDING_HELPERS)]
    assert not offenders, "tests/unit builds and boots nothing; move these to tests/e2e:\n" + "\n".join(offenders)
