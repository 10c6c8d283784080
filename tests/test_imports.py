"""Every module of ``newllm`` imports on its own, and the package's imports form no cycle.

A module that only imports after another one was imported first (a cycle that happens to
resolve in one order), or a cycle hidden in a function-local import, shows here rather
than in the one workflow script that imports the modules in the unlucky order.
"""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "newllm"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
"""Every module of the package by dotted name (a package by its ``__init__.py``)."""


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(tree: ast.Module, local: bool) -> list[ast.stmt]:
    """The import statements a module runs when it is imported (module level, inside
    ``if``/``try`` blocks but not ``if TYPE_CHECKING``), or with ``local`` also those in
    function and class bodies."""
    found, stack = [], list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        elif isinstance(node, ast.If) and not _is_type_checking(node):
            stack += node.body + node.orelse
        elif isinstance(node, ast.Try):
            stack += node.body + node.orelse + node.finalbody + [s for h in node.handlers for s in h.body]
        elif isinstance(node, (ast.With, ast.For, ast.While)):
            stack += node.body
        elif local:
            stack += [child for child in ast.iter_child_nodes(node) if isinstance(child, ast.stmt)]
    return found


def _targets(module: str, node: ast.stmt) -> set[str]:
    """The ``newllm`` modules an import statement of ``module`` loads by name: ``from P
    import X`` loads ``P.X`` when that is a module, else ``P``."""
    if isinstance(node, ast.Import):
        names = {alias.name for alias in node.names}
    else:
        base = node.module or ""
        if node.level:
            package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
            for _ in range(node.level - 1):
                package = package.rpartition(".")[0]
            base = f"{package}.{base}".rstrip(".")
        names = {f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names}
    return {name for name in names if name in MODULES and name != module}


def import_graph(local: bool = False) -> dict[str, set[str]]:
    """``{module: the newllm modules it imports}`` from the source alone (nothing is run)."""
    graph = {}
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        graph[module] = set().union(*(_targets(module, node) for node in _import_nodes(tree, local)))
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as ``[a, b, …, a]``, or ``None`` (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_on_small_graphs():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"a"}}) == ["a", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set(), "d": {"e"}, "e": {"d"}}) == ["d", "e", "d"]


def test_the_graph_resolves_absolute_relative_and_submodule_imports():
    graph = import_graph()
    assert "newllm.analysis.runs" in graph["newllm.analysis.comparisons"]  # from newllm.analysis.runs import …
    assert "newllm.study" in graph["newllm.analysis.runs"]  # from newllm import study
    assert {"newllm.analysis.verdicts", "newllm.analysis.windows"} <= graph["newllm.analysis"]
    assert "newllm.analysis" in graph["newllm.cli"] and "newllm.scaling" in graph["newllm.cli"]


def test_top_level_imports_form_no_cycle():
    assert find_cycle(import_graph()) is None


def test_function_local_imports_close_no_cycle():
    assert find_cycle(import_graph(local=True)) is None


def _says_no_torch(path: Path) -> bool:
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    return "No torch import" in doc


_IMPORT_EACH = """
import importlib, json, sys, traceback

def purge():
    for name in [n for n in sys.modules if n == "newllm" or n.startswith("newllm.")]:
        del sys.modules[name]

report = {}
for module in sys.argv[1:]:
    purge()
    before = "torch" in sys.modules
    try:
        importlib.import_module(module)
        error = None
    except BaseException:
        error = traceback.format_exc()
    report[module] = {"error": error, "torch_before": before, "torch_after": "torch" in sys.modules}
print(json.dumps(report))
"""
"""Imports each named module with no ``newllm`` module loaded (every ``newllm.*`` entry of
``sys.modules`` is dropped before each), in one interpreter: third-party packages stay
loaded, so 48 modules cost one torch import rather than 48."""


@pytest.fixture(scope="module")
def imported_alone() -> dict[str, dict]:
    """``{module: {"error", "torch_before", "torch_after"}}`` for every module, the ones
    whose docstring says "No torch import" first (so torch is not yet loaded for them)."""
    order = sorted(MODULES, key=lambda m: (not _says_no_torch(MODULES[m]), m))
    result = subprocess.run(
        [sys.executable, "-c", _IMPORT_EACH, *order], capture_output=True, text=True, cwd=PACKAGE.parent, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.splitlines()[-1])


def test_purging_newllm_modules_imports_a_module_afresh():
    """The fixture's premise: after the purge a module's body runs again (a fresh module
    object), so a module that needs another imported first fails as in a new interpreter."""
    code = (
        "import sys, newllm.study as a\n"
        "[sys.modules.pop(n) for n in list(sys.modules) if n.split('.')[0] == 'newllm']\n"
        "import newllm.study as b\nprint(a is not b, a.RunId is not b.RunId)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PACKAGE.parent, timeout=300)
    assert result.stdout.split() == ["True", "True"], result.stderr[-2000:]


@pytest.mark.parametrize("module", sorted(MODULES))
def test_each_module_imports_alone(module, imported_alone):
    """``import newllm.X`` with no other ``newllm`` module loaded: a module that needs
    another one imported first fails here; one whose docstring says "No torch import" must
    not load torch (checked in a fresh interpreter when torch was already loaded)."""
    found = imported_alone[module]
    assert found["error"] is None, f"import {module} failed:\n{found['error'][-3000:]}"
    if not _says_no_torch(MODULES[module]):
        return
    if found["torch_before"]:  # an earlier module loaded torch: ask a fresh interpreter
        code = f"import sys, {module}; print('torch' in sys.modules)"
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PACKAGE.parent, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        loads_torch = result.stdout.strip() == "True"
    else:
        loads_torch = found["torch_after"]
    assert not loads_torch, f"{module} says 'No torch import' but loads torch"
