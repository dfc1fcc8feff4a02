"""featx's import graph has no cycles: every module imports only the layers below it.

The graph is read from the source with :mod:`ast`, so it sees what a run may import, not only
what one test happened to import: module-level imports, imports inside functions (the lazy
ones that keep ``featx index`` fast), relative imports, and ``importlib.import_module`` with a
literal name. ``from featx.a import b`` is an edge to ``featx.a.b`` when ``b`` is a module,
else to ``featx.a``. The implicit import of a parent package (``featx.x.y`` runs
``featx/x/__init__.py`` first) is not an edge: a package's ``__init__`` importing its own
submodules is how packages work, not a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import featx

PACKAGE_ROOT = Path(featx.__file__).resolve().parent


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(PACKAGE_ROOT.rglob("*.py"))}


def _resolve(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph() -> dict[str, set[str]]:
    """featx module -> the featx modules it imports anywhere in its source."""
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        targets: list[str] = []
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets += [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                source = _resolve(node, name, path.name == "__init__.py")
                for alias in node.names:
                    sub = f"{source}.{alias.name}"
                    targets.append(sub if sub in modules else source)
            elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", ""))
                  == "import_module" and node.args and isinstance(node.args[0], ast.Constant)
                  and isinstance(node.args[0].value, str)):
                targets.append(node.args[0].value)
        for target in targets:
            # "import featx.a.b" binds featx but loads featx.a.b: keep the longest known module.
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name and target != "featx":
                graph[name].add(target)
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_one_cycle(graph, component) for component in components]


def _one_cycle(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """A concrete path a -> b -> ... -> a inside a strongly connected component (for the message)."""
    members = set(component)
    start = component[0]
    path, seen = [start], {start}
    while True:
        nexts = sorted(graph[path[-1]] & members)
        if start in nexts and len(path) > 1:
            return path + [start]
        fresh = [n for n in nexts if n not in seen]
        if not fresh:  # fall back: show the whole component
            return component + [component[0]]
        path.append(fresh[0])
        seen.add(fresh[0])


def test_graph_sees_function_level_and_relative_imports():
    graph = import_graph()
    # featx.extractors.__init__ imports keras_apps inside a function, vgg16 imports .keras_base.
    assert "featx.extractors.base" in graph["featx.extractors.keras_base"]
    assert any(target.startswith("featx.weights") for target in graph["featx.extractors.keras_base"])


def test_find_cycles_reports_a_cycle_it_is_given():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycles(graph) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_featx_has_no_import_cycles():
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles in featx/:\n" + "\n".join(" -> ".join(c) for c in cycles)


STAGES = {f"featx.{name}" for name in ("sweep", "finetune", "scratch", "predict", "report", "imagenet")}
# The CLI and the demo run the whole chain: they are the only modules allowed to import stages. featx.export
# packages what the stages saved (read as predict reads it, built with finetune's builder): it sits above them.
DRIVERS = {"featx.cli", "featx.demo", "featx.__main__", "featx.export"}


def test_no_stage_imports_another_stage_and_no_layer_imports_a_stage():
    graph = import_graph()
    offenders = sorted(f"{module} -> {target}" for module, targets in graph.items() if module not in DRIVERS
                       for target in targets & STAGES)
    assert not offenders, "stage imports outside featx.cli/featx.demo:\n" + "\n".join(offenders)
