"""The shape of the code, checked: no import cycles between realms' modules, every module
importable on its own, none over ~500 lines."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from realms.store import Store

SOURCE = Path(__file__).resolve().parents[2] / "src"
PACKAGE = SOURCE / "realms"
MAX_LINES = 520


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SOURCE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(module: str) -> set[str]:
    """The realms modules that ``module`` imports, at any depth of its code (a lazy import
    inside a function is still a dependency), except under ``if TYPE_CHECKING``."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for branch in node.orelse:
                visit(branch)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    return {name for name in found if name in MODULES and name != module}


def _cycle() -> list[str] | None:
    graph = {module: _imports(module) for module in MODULES}
    # A package's __init__ importing its own submodules is how packages re-export: not a cycle.
    for module, targets in graph.items():
        if MODULES[module].name == "__init__.py":
            graph[module] = {t for t in targets if not t.startswith(module + ".")}
    state: dict[str, int] = {}
    stack: list[str] = []

    def walk(module: str) -> list[str] | None:
        state[module] = 1
        stack.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                return [*stack[stack.index(target) :], target]
            if target not in state and (found := walk(target)):
                return found
        stack.pop()
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state and (found := walk(module)):
            return found
    return None


def test_no_import_cycles() -> None:
    cycle = _cycle()
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


# Declarations read top to bottom (one entry per command), not behaviour to find one's way in.
DECLARATION_TABLES = {"realms.cli.table": 900}


def test_no_module_is_too_long() -> None:
    long = {
        name: lines
        for name, path in MODULES.items()
        if (lines := len(path.read_text().splitlines())) > DECLARATION_TABLES.get(name, MAX_LINES)
    }
    assert not long, f"modules over {MAX_LINES} lines: {long}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_every_module_imports_on_its_own(module: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", f"import {module}"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


STOP_PATH = (
    "realms.cli.entry",
    "realms.cli.realm_handlers",
    "realms.api",
    "realms.lifecycle.control",
)
"""What ``realms stop`` loads; a ``realms run`` that joins a running realm adds its module."""
JOIN = ("realms.lifecycle.join",)
START_PATH = ("realms.lifecycle.supervisor", "realms.realm", "realms.container", "realms.network")
"""What ``realms start`` and the supervisor it forks load besides (they read realm configs:
TOML)."""


def _loaded(modules: tuple[str, ...], root: Path, watched: tuple[str, ...]) -> list[str]:
    program = (
        f"import sys; from pathlib import Path; import {', '.join(modules)}; "
        f"from realms.store import Store; Store.open(Path({str(root)!r})); "
        f"print(' '.join(m for m in {watched!r} if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def test_lifecycle_commands_start_lean(store: Store) -> None:
    # Issue 13's start and stop are timed against nspawn alone. On Python 3.11 a dataclass
    # costs about 1 ms to make (a NamedTuple a seventh of that) and its module 10 ms to import,
    # tomllib 5 ms: the records on these paths are NamedTuples, and the store's marker is read
    # without TOML.
    assert _loaded(STOP_PATH, store.root, ("dataclasses", "tomllib", "subprocess")) == []
    assert _loaded(STOP_PATH + JOIN, store.root, ("dataclasses", "tomllib")) == []
    assert _loaded(STOP_PATH + START_PATH, store.root, ("dataclasses",)) == []
