"""The package's import graph (read from the sources with `ast`, nothing imported): no import cycle among
mole_exp's modules, and each package imports only the packages its layer allows.

Every import statement counts: at module level, inside functions, and under `if TYPE_CHECKING:` (a type-only
import is a dependency of the design all the same). Importing `mole_exp.a.b` from outside package `a` also
runs `mole_exp/a/__init__.py`, so it counts as an import of that package's `__init__` too.

The layering, lowest first (a package may import itself and the packages listed for it):

    files                       results files written atomically (mole_exp/files.py)
    base        <- files        frozen base models, model families, the Hub
    evaluation  <- files        generation and scoring
    tasks       <- base, evaluation
    experts     <- base, tasks, files
    mole        <- base, experts                       the mechanism (no task, no composer, no training)
    composers   <- base, experts, mole
    training    <- the core below it (never reporting, never tools)
    reporting   <- files, evaluation                   reads results files; never runs a model or training
    harness     <- the core (training included)        lm-eval on composed models; imported only by tools
    tools       <- anything; nothing imports tools (the core never does)
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import ROOT

PACKAGE = ROOT / "mole_exp"
CORE_BELOW_TRAINING = {"files", "base", "evaluation", "tasks", "experts", "mole", "composers"}
ALLOWED: dict[str, set[str]] = {
    "files": set(),
    "base": {"files"},
    "evaluation": {"base", "files"},  # generation reads prompts in the model family's text format (base/text_format.py)
    "tasks": {"base", "evaluation", "files"},
    "experts": {"base", "tasks", "files"},
    "mole": {"base", "experts"},
    "composers": {"base", "experts", "mole"},
    "training": CORE_BELOW_TRAINING,
    "reporting": {"files", "evaluation"},
    "harness": CORE_BELOW_TRAINING | {"training"},
    "tools": CORE_BELOW_TRAINING | {"training", "reporting", "harness"},
}
KNOWN_CYCLES: list[list[str]] = []  # none


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def is_package(name: str, known: dict[str, Path]) -> bool:
    return known[name].name == "__init__.py"


def imported_modules(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The mole_exp modules `name` imports anywhere in its source (package `__init__`s included, see above)."""
    own_package = name if is_package(name, known) else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from .x import y
                base = own_package.split(".")[: len(own_package.split(".")) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            targets = [f"{module}.{alias.name}" if f"{module}.{alias.name}" in known else module for alias in node.names]
        for target in targets:
            if not target.startswith("mole_exp"):
                continue
            while target not in known and "." in target:  # `from mole_exp.a.b import some_function`
                target = target.rpartition(".")[0]
            parts = target.split(".")
            for depth in range(2, len(parts)):  # the packages the import runs, from outside them
                package = ".".join(parts[:depth])
                if not (name == package or name.startswith(package + ".")):
                    found.add(package)
            found.add(target)
    found.discard(name)
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imported_modules(name, path, known) for name, path in known.items()}


def layer(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else "mole_exp"


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one module (Tarjan), each as a sorted list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in sorted(edges.get(node, ())):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_the_graph_reader_sees_every_kind_of_import(tmp_path):
    """The checks below can fail: the reader finds function-level, type-only and package imports."""
    known = {"mole_exp.a": tmp_path / "a" / "__init__.py", "mole_exp.a.x": tmp_path / "a" / "x.py",
             "mole_exp.b": tmp_path / "b" / "__init__.py", "mole_exp.b.y": tmp_path / "b" / "y.py",
             "mole_exp.b.z": tmp_path / "b" / "z.py"}
    source = tmp_path / "b" / "y.py"
    source.parent.mkdir(parents=True)
    source.write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from mole_exp.a.x import Thing\n"
        "def f():\n    from mole_exp.b import z\n    from . import z as again\n    return z, again\n"
    )
    assert imported_modules("mole_exp.b.y", source, known) == {"mole_exp.a", "mole_exp.a.x", "mole_exp.b.z"}
    assert cycles({"p": {"q"}, "q": {"r"}, "r": {"p"}, "s": {"p"}}) == [["p", "q", "r"]]


def test_no_import_cycle_among_the_packages_modules():
    assert cycles(graph()) == KNOWN_CYCLES


def test_every_module_sits_in_a_layer():
    layers = {layer(name) for name in modules()} - {"mole_exp", "resources"}
    assert layers == set(ALLOWED), f"packages without a layer: {sorted(layers - set(ALLOWED))}"
    root_modules = sorted(name for name in modules() if name.count(".") == 1 and not is_package(name, modules()))
    assert root_modules == ["mole_exp.files"], "a module at the root of the package needs a place in the layering"


def test_each_package_imports_only_what_its_layer_allows():
    upward = []
    for name, targets in graph().items():
        own = layer(name)
        for target in sorted(targets):
            other = layer(target)
            if other not in (own, "mole_exp") and other not in ALLOWED.get(own, set()):
                upward.append(f"{name} imports {target} ({own} may import {sorted(ALLOWED.get(own, set()))})")
    assert not upward, "\n".join(upward)


def test_the_core_never_imports_tools_and_the_layering_is_an_order():
    for name, targets in graph().items():
        if layer(name) != "tools":
            assert not [t for t in targets if layer(t) == "tools"], name
    # the allowed imports between packages have no cycle, so the layers can be stacked
    assert cycles({package: set(allowed) for package, allowed in ALLOWED.items()}) == []


def test_package_docstrings_say_what_lives_there():
    for init in sorted(PACKAGE.rglob("__init__.py")):
        docstring = ast.get_docstring(ast.parse(init.read_text()))
        assert docstring, f"{init.relative_to(ROOT)} has no docstring"
