"""The package's shape, kept by tests: small files, short functions, imports that point one way.

course_lib is read by learners, so its layout is part of what it teaches. These guards fail with
the file and line to fix, so the shape cannot drift one convenient import at a time.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "course_lib"
MAX_FILE_LINES = 500
MAX_FUNCTION_LINES = 60
# Shared modules (bottom of the graph) and the core stages: none of them may need an appendix or ops.
NOT_CORE = ("course_lib.appendix", "course_lib.ops")


def _name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def _modules() -> dict[str, Path]:
    return {_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


@cache
def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _target(name: str) -> str | None:
    """The course_lib module NAME refers to (``course_lib.data.clean.x`` -> ``course_lib.data.clean``)."""
    modules = _modules()
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str) -> set[str]:
    """Every course_lib module MODULE imports, at its top or inside a function."""
    path = _modules()[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.Import):
            found |= {_target(a.name) for a in node.names if a.name.startswith("course_lib")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package.split(".")[: len(package.split(".")) - node.level + 1], *filter(None, [base])])
            if base.startswith("course_lib"):
                found |= {_target(f"{base}.{a.name}") for a in node.names}
    return found - {None, module}


def _graph() -> dict[str, set[str]]:
    return {module: _imports(module) for module in _modules()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle in GRAPH (module -> the modules it imports), or None."""
    state: dict[str, str] = {}

    def visit(module, stack):
        state[module] = "open"
        for other in sorted(graph.get(module, ())):
            if state.get(other) == "open":
                return [*stack[stack.index(other):], other]
            if other not in state and (found := visit(other, [*stack, other])):
                return found
        state[module] = "done"
        return None

    for module in graph:
        if module not in state and (found := visit(module, [module])):
            return found
    return None


def test_no_import_cycle_between_course_lib_modules():
    """Lazy imports inside functions count too: hiding a cycle in a function does not remove it."""
    cycle = _cycle(_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_core_stages_never_import_the_appendix_or_ops():
    wrong = [f"{m} imports {other}" for m in _modules() if not m.startswith(NOT_CORE)
             for other in _imports(m) if other.startswith(NOT_CORE)]
    assert not wrong, "the core must run without the appendix and the maintainers' tools:\n" + "\n".join(wrong)


def test_the_saved_run_config_is_read_in_runs_only():
    """``course_train.json`` is named in runs.py alone; everyone else asks ``runs.read_config``."""
    named = [f"{path.relative_to(PACKAGE.parent)}:{node.lineno}" for module, path in _modules().items()
             if module != "course_lib.runs" for node in ast.walk(_tree(path))
             if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.strip() == "course_train.json"]
    assert not named, "use course_lib.runs (read_config, TRAIN_FILE) instead of the file name:\n" + "\n".join(named)


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_files_stay_small(path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_FILE_LINES, f"{path.name}: {lines} lines; split it by concern (<= {MAX_FILE_LINES})"


def _long_functions(path: Path):
    """Functions over the limit with no comment just above them saying why they stay whole."""
    source = path.read_text().splitlines()
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            length = node.end_lineno - node.lineno + 1
            first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            explained = first >= 2 and source[first - 2].strip().startswith("#")
            if length > MAX_FUNCTION_LINES and not explained:
                yield f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name} ({length} lines)"


def test_functions_fit_on_a_screen():
    long = [f for path in _modules().values() for f in _long_functions(path)]
    assert not long, (f"over {MAX_FUNCTION_LINES} lines: split them, or say why in a comment above the def:\n"
                      + "\n".join(long))


def test_the_guards_see_what_they_guard():
    """The cycle finder finds a planted cycle, and the graph holds the imports we know of."""
    planted = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycle(planted) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None
    graph = _graph()
    assert "course_lib.runs" in graph["course_lib.engine" if "course_lib.engine" in graph else "course_lib.serve.engine"]
    assert "course_lib.models" in graph["course_lib.runs"]


def test_course_lib_imports_sit_at_the_top():
    """A file's header says what it depends on: no course_lib import hides inside a function."""
    hidden = [f"{path.relative_to(PACKAGE.parent)}:{node.lineno}" for path in _modules().values()
              for function in ast.walk(_tree(path)) if isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef)
              for node in ast.walk(function)
              if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("course_lib"))]
    assert not hidden, "move these imports to the top of their file:\n" + "\n".join(hidden)
