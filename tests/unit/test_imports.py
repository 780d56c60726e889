"""Every module of e2e imports on its own, and no two modules import each other,
directly or through others, at module level or inside a function."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "e2e"


def modules_of(package: Path) -> dict[str, tuple[Path, bool]]:
    """``{dotted name: (file, is a package)}`` for every .py file under ``package``."""
    out = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_pkg else parts)] = (path, is_pkg)
    return out


def import_graph(package: Path) -> dict[str, set[str]]:
    """Which modules of ``package`` each module imports (every import statement, nested ones too)."""
    mods = modules_of(package)
    top = package.name
    graph: dict[str, set[str]] = {}
    for name, (path, is_pkg) in mods.items():
        here = name.split(".") if is_pkg else name.split(".")[:-1]
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = ".".join([*here[:len(here) - node.level + 1], node.module or ""]).strip(".")
                else:
                    base = node.module or ""
                # ``from .pkg import mod`` imports the module pkg.mod; ``from .mod import name`` imports mod
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            deps |= {t for t in targets if t.split(".")[0] == top and t in mods and t != name}
        graph[name] = deps
    return graph


def cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_detector_finds_a_cycle_through_a_nested_import(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .sub import c\n")
    (pkg / "sub" / "c.py").write_text("def f():\n    from ..b import g\n")
    (pkg / "b.py").write_text("from . import a\nimport os\n")
    (pkg / "d.py").write_text("from .a import x\n")
    graph = import_graph(pkg)
    assert graph["pkg.a"] == {"pkg.sub.c"} and graph["pkg.sub.c"] == {"pkg.b"} and graph["pkg.d"] == {"pkg.a"}
    assert cycles(graph) == [["pkg.a", "pkg.b", "pkg.sub.c"]]


def test_e2e_has_no_import_cycles() -> None:
    graph = import_graph(PACKAGE)
    assert {"e2e.build.cache", "e2e.util.tmpdirs", "e2e.util.hostid", "e2e.build.image"} <= set(graph)
    assert "e2e.util.hostid" in graph["e2e.build.cache"] and "e2e.util.hostid" in graph["e2e.util.tmpdirs"]
    assert cycles(graph) == []


#: The layers of e2e, lowest first: a subpackage imports only its own modules and those of the
#: layers before it (the same list, in words, opens e2e/__init__.py and each subpackage's docstring).
LAYERS = (("errors", "util"), ("model",), ("build",), ("host",), ("vm",), ("measure",), ("analysis",),
          ("report",), ("run",), ("cli", "pytest_plugin"))


def layer_of(module: str) -> int:
    """The layer of ``e2e.<part>...`` (the package itself, ``e2e``, is below them all)."""
    parts = module.split(".")
    if len(parts) == 1:
        return -1
    return next(i for i, names in enumerate(LAYERS) if parts[1] in names)


def upward_imports(graph: Mapping[str, set[str]]) -> list[str]:
    """Every import of a module of a higher layer, or of a sibling of the same layer, as ``a -> b``."""
    out = []
    for module, deps in sorted(graph.items()):
        for dep in sorted(deps):
            same = module.split(".")[:2] == dep.split(".")[:2]
            if not same and (layer_of(dep) > layer_of(module)
                             or (layer_of(dep) == layer_of(module) and layer_of(module) == len(LAYERS) - 1)):
                out.append(f"{module} -> {dep}")
    return out


def test_every_part_of_e2e_is_in_a_layer_and_the_package_root_holds_only_errors() -> None:
    graph = import_graph(PACKAGE)
    assert all(layer_of(m) >= -1 for m in graph)  # StopIteration for a part in no layer
    top = sorted(p.name for p in PACKAGE.iterdir() if p.suffix == ".py" or (p / "__init__.py").is_file())
    assert top == ["__init__.py", "analysis", "build", "cli", "errors.py", "host", "measure", "model",
                   "pytest_plugin.py", "report", "run", "util", "vm"]


def test_no_layer_imports_one_above_it() -> None:
    assert upward_imports(import_graph(PACKAGE)) == []


def test_the_layer_check_sees_an_upward_import() -> None:
    graph = {"e2e.vm.machine": {"e2e.run.ab", "e2e.util.spawn"}, "e2e.cli.ab": {"e2e.pytest_plugin"},
             "e2e.run.ab": {"e2e.run.boot", "e2e.vm.machine"}}
    assert upward_imports(graph) == ["e2e.cli.ab -> e2e.pytest_plugin", "e2e.vm.machine -> e2e.run.ab"]


@pytest.mark.parametrize("module", sorted(modules_of(PACKAGE)))
def test_each_module_imports_alone(module: str) -> None:
    """In a fresh interpreter, so no other module was imported first."""
    proc = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True,
                          timeout=60, cwd=PACKAGE.parent)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_only_the_cli_imports_argparse() -> None:
    """Command lines are parsed in e2e/cli only; the other layers take typed options (the entry points
    ``python -m e2e.run.inner`` and ``python -m e2e.run.bisect step`` read their fixed argv by hand)."""
    offenders = []
    for name, (path, _) in modules_of(PACKAGE).items():
        if name == "e2e.cli" or name.startswith("e2e.cli."):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            if any(n == "argparse" or n.startswith("argparse.") for n in names):
                offenders.append(f"{name}:{node.lineno}")
    assert offenders == []


def test_the_inner_runner_loads_no_numeric_stack() -> None:
    """The virtual host's inner runner never analyzes; numpy and scipy would cost its emulated CPU seconds."""
    code = ("import sys, e2e.run.inner, e2e.run.ab, e2e.run.boot; "
            "print(sorted(m for m in ('numpy', 'scipy', 'matplotlib', 'jinja2') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60,
                         cwd=PACKAGE.parent).stdout
    assert out.strip() == "[]"
