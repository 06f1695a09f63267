"""Lint: no import cycle inside the proxynas_fast package, and no import inside a function that dodges one.

Every module under proxynas_fast/ is parsed with `ast` (nothing is imported). Its imports are collected at any
depth: module level, class bodies, function bodies, and `importlib.import_module("...")` / `__import__("...")`
with a literal name. Imports under `if TYPE_CHECKING:` are not edges: they never run.

Edges:
- `import a.b.c` is an edge to `a.b.c`; `from a.b import c` is an edge to `a.b.c` when that is a module, else to
  `a.b`; relative imports are resolved against the importing module. An edge to a package means its __init__.py.
- Importing `a.b.c` first runs the __init__ of each package above it (`a`, `a.b`). Those runs are edges too,
  except for the packages above the importing module itself: Python has already started their __init__ before
  the importing module runs, so importing them again is a no-op.
- The rule on parent packages: a module that *names* its own parent package (`from proxynas_fast.darts import X`
  inside `proxynas_fast/darts/pcdarts.py`, or `from . import X` where X is not a submodule) has an edge to that
  package's __init__.py. If that __init__ imports the module back, that IS a cycle: the module runs while its
  parent's __init__ is half done and gets whatever names exist at that moment. Naming a sibling module
  (`from proxynas_fast.darts.operations import X`, `from . import operations`) is an edge to the sibling only.

Test 1 fails on any cycle of that graph. Test 2 fails on each import inside a function whose edge lies on a cycle
once function bodies count (the import is there to dodge the cycle); imports inside functions of modules outside
the package (torch, matplotlib, tqdm, PIL, scipy, nvidia.dali...), deferred so that `--help` stays fast, and of
internal modules that close no cycle are fine. Each failure lists the cycle as a chain of modules with the
file:line of each edge. The detector is checked on small synthetic packages, so it cannot silently pass.
"""
from __future__ import annotations

import ast
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Set

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "proxynas_fast"
NATIVE_SUFFIXES = (".so", ".pyd")


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    where: str  # file:line of the import statement
    in_function: bool
    implicit: bool  # the run of a package __init__ that a deeper import triggers

    def describe(self) -> str:
        notes = [self.where] + (["in a function"] if self.in_function else [])
        notes += ["runs the package __init__ first"] if self.implicit else []
        return f"{self.source} -> {self.target}  ({', '.join(notes)})"


def find_modules(root: Path, package: str) -> Dict[str, Optional[Path]]:
    """Module name -> source file for every .py under root/package (a package is its __init__.py); native
    extension modules (`_C.cpython-*.so`) are modules without source (None)."""
    modules: Dict[str, Optional[Path]] = {}
    for path in sorted((root / package).rglob("*")):
        parts = list(path.relative_to(root).parent.parts)
        if path.suffix == ".py":
            name = ".".join(parts if path.stem == "__init__" else parts + [path.stem])
            modules[name] = path
        elif path.suffix in NATIVE_SUFFIXES and path.is_file():
            modules.setdefault(".".join(parts + [path.name.split(".")[0]]), None)
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _literal_import_call(node: ast.Call) -> Optional[str]:
    """The module named by `import_module("x")`, `importlib.import_module("x")` or `__import__("x")`."""
    func = node.func
    name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
    if name in ("import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant) \
            and isinstance(node.args[0].value, str):
        return node.args[0].value
    return None


class ImportCollector(ast.NodeVisitor):
    """Collects the internal edges of one module (see the module docstring for the rules)."""

    def __init__(self, module: str, path: Path, root: Path, modules: Dict[str, Optional[Path]], package: str):
        self.module, self.modules, self.package = module, modules, package
        self.file = path.relative_to(root).as_posix()
        self.is_package = path.name == "__init__.py"
        # the importing module and the packages above it are already running when its imports execute
        parts = module.split(".")
        self.running = {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
        self.function_depth = 0
        self.edges: List[Edge] = []

    def _resolve_relative(self, level: int, name: Optional[str]) -> str:
        parts = self.module.split(".")
        base = parts if self.is_package else parts[:-1]
        base = base[:len(base) - (level - 1)]
        return ".".join(base + ([name] if name else []))

    def _known(self, name: str) -> Optional[str]:
        """The longest prefix of `name` that is a module of the package (None outside it)."""
        parts = name.split(".")
        for i in range(len(parts), 0, -1):
            if ".".join(parts[:i]) in self.modules:
                return ".".join(parts[:i])
        return None

    def _add(self, name: str, line: int) -> None:
        if name != self.package and not name.startswith(self.package + "."):
            return
        target = self._known(name)
        if target is None:
            return
        where, in_function = f"{self.file}:{line}", self.function_depth > 0
        parts = target.split(".")
        for i in range(1, len(parts)):
            parent = ".".join(parts[:i])
            if parent not in self.running and parent in self.modules:
                self.edges.append(Edge(self.module, parent, where, in_function, implicit=True))
        if target != self.module:
            self.edges.append(Edge(self.module, target, where, in_function, implicit=False))

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, node.lineno)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = self._resolve_relative(node.level, node.module) if node.level else node.module or ""
        for alias in node.names:
            submodule = f"{base}.{alias.name}"
            self._add(submodule if submodule in self.modules else base, node.lineno)

    def visit_Call(self, node: ast.Call) -> None:
        name = _literal_import_call(node)
        if name is not None:
            self._add(name, node.lineno)
        self.generic_visit(node)

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):
            for child in node.orelse:
                self.visit(child)
        else:
            self.generic_visit(node)

    def _visit_function(self, node) -> None:
        # decorators, defaults and annotations run when the `def` runs; the body runs when the function is called
        for child in node.decorator_list + [node.args] + ([node.returns] if node.returns else []):
            self.visit(child)
        self.function_depth += 1
        for child in node.body:
            self.visit(child)
        self.function_depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = _visit_function

    def visit_Lambda(self, node: ast.Lambda) -> None:
        self.visit(node.args)
        self.function_depth += 1
        self.visit(node.body)
        self.function_depth -= 1


def collect_edges(root: Path, package: str) -> List[Edge]:
    modules = find_modules(root, package)
    edges: List[Edge] = []
    for module, path in modules.items():
        if path is None:
            continue
        collector = ImportCollector(module, path, root, modules, package)
        collector.visit(ast.parse(path.read_text(), filename=str(path)))
        edges.extend(collector.edges)
    return list(dict.fromkeys(edges))  # `from m import a, b` is one edge per statement, not one per name


def adjacency(edges: List[Edge]) -> Dict[str, List[str]]:
    graph: Dict[str, List[str]] = {}
    for edge in edges:
        graph.setdefault(edge.source, []).append(edge.target)
        graph.setdefault(edge.target, [])
    return graph


def strongly_connected(edges: List[Edge]) -> List[Set[str]]:
    """Tarjan's algorithm (iterative); only components that hold a cycle (more than one module)."""
    graph = adjacency(edges)
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    components: List[Set[str]] = []

    def enter(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        work.append((node, iter(graph[node])))

    for start in sorted(graph):
        if start in index:
            continue
        work: List[tuple] = []
        enter(start)
        while work:
            node, successors = work[-1]
            successor = next(successors, None)
            if successor is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:  # node is the root of a component: pop it off the stack
                    component = set(stack[stack.index(node):])
                    del stack[stack.index(node):]
                    components += [component] if len(component) > 1 else []
            elif successor not in index:
                enter(successor)
            elif successor in stack:
                low[node] = min(low[node], index[successor])
    return components


def shortest_path(edges: List[Edge], start: str, goal: str, within: Set[str]) -> List[Edge]:
    """The fewest edges from start to goal through modules of `within` (breadth first; first edge per pair)."""
    successors: Dict[str, Dict[str, Edge]] = {}
    for edge in edges:
        if edge.source in within and edge.target in within:
            successors.setdefault(edge.source, {}).setdefault(edge.target, edge)
    came_by: Dict[str, Edge] = {}
    queue = deque([start])
    seen = {start}
    while queue:
        node = queue.popleft()
        if node == goal:
            break
        for target, edge in sorted(successors.get(node, {}).items()):
            if target not in seen:
                seen.add(target)
                came_by[target] = edge
                queue.append(target)
    path: List[Edge] = []
    node = goal
    while node != start:
        path.append(came_by[node])
        node = came_by[node].source
    return path[::-1]


def find_cycles(edges: List[Edge]) -> List[List[Edge]]:
    """For every edge inside a strongly connected component, the shortest cycle through it (each cycle once):
    every edge that holds a cycle together shows up in the report."""
    cycles: Dict[tuple, List[Edge]] = {}
    for component in strongly_connected(edges):
        first_edges: Dict[tuple, Edge] = {}
        for edge in edges:
            if edge.source in component and edge.target in component:
                first_edges.setdefault((edge.source, edge.target), edge)
        for (source, target), edge in sorted(first_edges.items()):
            if source == target:
                continue
            cycle = [edge] + shortest_path(edges, target, source, component)
            names = [e.source for e in cycle]
            turn = names.index(min(names))
            cycles.setdefault(tuple(names[turn:] + names[:turn]), cycle[turn:] + cycle[:turn])
    return [cycles[key] for key in sorted(cycles)]


def describe_cycle(cycle: List[Edge]) -> str:
    chain = " -> ".join([e.source for e in cycle] + [cycle[0].source])
    return "\n".join([f"cycle: {chain}"] + [f"    {edge.describe()}" for edge in cycle])


def cycle_dodging_imports(edges: List[Edge]) -> List[str]:
    """Each import inside a function whose edge lies on a cycle of the graph with function bodies counted."""
    components = strongly_connected(edges)
    reports = []
    for edge in edges:
        component = next((c for c in components if edge.source in c and edge.target in c), None)
        if edge.in_function and component is not None:
            back = shortest_path(edges, edge.target, edge.source, component)
            reports.append(f"{edge.where}: an import inside a function closes a cycle\n"
                           + describe_cycle([edge] + back))
    return reports


# Which stage packages each stage package may import (the pipeline's order: data -> scoring -> selection ->
# search -> training; ops, the compiled kernels, serve any stage (the loaders' augmentation kernel, the search
# cells); darts is the search's building block). Root modules (atomic, registry, distributed, run_folder...) are
# for everyone. scoring -> selection: a scorer's training counts forgetting events (selection.forgetting) for the
# forgetting baseline.
STAGE_IMPORTS = {
    "ops": set(),
    "data": set(),
    "loaders": {"data", "ops"},
    "darts": {"ops"},
    "selection": {"data"},
    "scoring": {"data", "loaders", "ops", "selection"},
    "search": {"darts", "data", "loaders", "ops", "scoring", "selection"},
    "train": {"darts", "data", "loaders", "ops"},
}


def layering_violations(edges: List[Edge], package: str, rules: Dict[str, Set[str]]) -> List[str]:
    """Each import from one stage package into another that `rules` does not allow."""
    def stage(module: str) -> Optional[str]:
        parts = module.split(".")
        return parts[1] if len(parts) > 1 and parts[0] == package and parts[1] in rules else None

    reports = []
    for edge in edges:
        source, target = stage(edge.source), stage(edge.target)
        if source and target and source != target and target not in rules[source] and not edge.implicit:
            reports.append(f"{edge.where}: {package}.{source} may not import {package}.{target} "
                           f"({edge.source} -> {edge.target})")
    return reports


# ---- the lint on the package ------------------------------------------------------------------------------------

def test_the_scan_sees_every_module_of_the_package():
    modules = find_modules(REPO, PACKAGE)
    sources = sorted(p for p in (REPO / PACKAGE).rglob("*.py"))
    assert sorted(p for p in modules.values() if p is not None) == sources
    edges = collect_edges(REPO, PACKAGE)
    importers = {e.source for e in edges}
    # the pipeline's packages import their own modules: an empty or near-empty graph means the scan broke
    for package in ("darts", "search", "selection", "loaders", "data", "scoring"):
        assert f"{PACKAGE}.{package}" in importers, f"no import found in {PACKAGE}/{package}/__init__.py"


def test_no_import_cycle_in_the_package():
    cycles = find_cycles(collect_edges(REPO, PACKAGE))
    if cycles:
        pytest.fail(f"{len(cycles)} import cycle(s) in {PACKAGE}:\n" + "\n".join(map(describe_cycle, cycles)),
                    pytrace=False)


def test_no_import_inside_a_function_to_dodge_a_cycle():
    reports = cycle_dodging_imports(collect_edges(REPO, PACKAGE))
    if reports:
        pytest.fail("\n".join(reports), pytrace=False)


def test_stage_packages_import_only_earlier_stages():
    """E.g. scoring runs before search: it takes the process group from proxynas_fast.distributed, not from
    proxynas_fast.search."""
    reports = layering_violations(collect_edges(REPO, PACKAGE), PACKAGE, STAGE_IMPORTS)
    if reports:
        pytest.fail("\n".join(reports), pytrace=False)


# ---- the detector on synthetic packages --------------------------------------------------------------------------

def write_package(root: Path, files: Dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def cycle_chains(root: Path) -> List[str]:
    return [" -> ".join(e.source for e in cycle) for cycle in find_cycles(collect_edges(root, "pkg"))]


def test_detector_catches_a_cycle_closed_by_an_import_inside_a_function(tmp_path):
    root = write_package(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "from pkg.b import helper\n\nA = 1\n",
        "pkg/b.py": "def helper():\n    from .a import A  # dodges the cycle\n    return A\n",
    })
    cycles = find_cycles(collect_edges(root, "pkg"))
    assert [" -> ".join(e.source for e in c) for c in cycles] == ["pkg.a -> pkg.b"]
    assert "pkg/a.py:1" in describe_cycle(cycles[0]) and "pkg/b.py:2, in a function" in describe_cycle(cycles[0])
    reports = cycle_dodging_imports(collect_edges(root, "pkg"))
    assert len(reports) == 1 and reports[0].startswith("pkg/b.py:2: an import inside a function closes a cycle")


def test_detector_allows_lazy_heavy_and_acyclic_imports(tmp_path):
    root = write_package(tmp_path, {
        "pkg/__init__.py": "from .a import A\n",
        "pkg/a.py": "import os\n\nA = 1\n\ndef plot():\n    import torch\n    from matplotlib import pyplot\n"
                    "    from nvidia import dali\n    from pkg.b import heavy  # deferred, closes no cycle\n",
        "pkg/b.py": "import torch\n\ndef heavy():\n    return torch.zeros(1)\n",
        "pkg/sub/__init__.py": "from .leaf import X\n",
        "pkg/sub/leaf.py": "from pkg.sub.other import Y  # a sibling, not the parent's __init__\nX = Y\n",
        "pkg/sub/other.py": "from . import leaf2\nY = 2\n",
        "pkg/sub/leaf2.py": "import pkg.a\n",
    })
    assert cycle_chains(root) == []
    assert cycle_dodging_imports(collect_edges(root, "pkg")) == []
    edges = collect_edges(root, "pkg")
    assert any(e.source == "pkg.a" and e.target == "pkg.b" and e.in_function for e in edges)
    assert not any(e.target in ("torch", "matplotlib", "nvidia.dali") for e in edges)


def test_detector_ignores_type_checking_imports(tmp_path):
    root = write_package(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "from pkg.b import B\n",
        "pkg/b.py": "from typing import TYPE_CHECKING\nimport typing\nif TYPE_CHECKING:\n    from pkg.a import A\n"
                    "if typing.TYPE_CHECKING:\n    import pkg.a\nelse:\n    import os\nB = 1\n",
    })
    assert cycle_chains(root) == []


def test_detector_parent_package_rule(tmp_path):
    # a submodule naming its parent package while the parent's __init__ imports it: a cycle
    root = write_package(tmp_path / "named", {
        "pkg/__init__.py": "from .sub import X\nY = 1\n",
        "pkg/sub.py": "from pkg import Y\nX = Y\n",
    })
    assert cycle_chains(root) == ["pkg -> pkg.sub"]
    relative = write_package(tmp_path / "relative", {
        "pkg/__init__.py": "from .sub import X\nY = 1\n",
        "pkg/sub.py": "from . import Y\nX = Y\n",
    })
    assert cycle_chains(relative) == ["pkg -> pkg.sub"]


def test_detector_counts_the_package_init_a_deeper_import_runs(tmp_path):
    # importing pkg.x.leaf runs pkg/x/__init__.py first, which imports pkg.y back
    root = write_package(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/x/__init__.py": "from pkg.y import Z\n",
        "pkg/x/leaf.py": "W = 0\n",
        "pkg/y.py": "from pkg.x.leaf import W\nZ = W\n",
    })
    cycles = find_cycles(collect_edges(root, "pkg"))
    assert [" -> ".join(e.source for e in c) for c in cycles] == ["pkg.x -> pkg.y"]
    assert "runs the package __init__ first" in describe_cycle(cycles[0])


def test_detector_follows_import_module_with_a_literal_name(tmp_path):
    root = write_package(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "import pkg.b\n",
        "pkg/b.py": "from importlib import import_module\n\ndef load():\n"
                    "    return import_module('pkg.a')\n",
    })
    assert cycle_chains(root) == ["pkg.a -> pkg.b"]
    assert len(cycle_dodging_imports(collect_edges(root, "pkg"))) == 1


def test_detector_reports_every_edge_of_a_three_module_cycle(tmp_path):
    # the darts shape: model_search -> fused -> pcdarts -> model_search, plus a second cycle in the same component
    root = write_package(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/model_search.py": "def backend():\n    from pkg import fused\n",
        "pkg/fused.py": "import pkg.pcdarts\n",
        "pkg/pcdarts.py": "from pkg.model_search import Network\n\ndef shuffle():\n    from pkg.fused import x\n",
    })
    assert cycle_chains(root) == ["pkg.fused -> pkg.pcdarts", "pkg.fused -> pkg.pcdarts -> pkg.model_search"]
    assert len(cycle_dodging_imports(collect_edges(root, "pkg"))) == 2


def test_detector_reports_an_import_against_the_stage_order(tmp_path):
    root = write_package(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/common.py": "X = 1\n",
        "pkg/early/__init__.py": "",
        "pkg/early/a.py": "from pkg.late.b import B\nfrom pkg.common import X\n",
        "pkg/late/__init__.py": "",
        "pkg/late/b.py": "from pkg.early import a\n\nB = 1\n",
    })
    edges = collect_edges(root, "pkg")
    reports = layering_violations(edges, "pkg", {"early": set(), "late": {"early"}})
    assert len(reports) == 1 and "pkg.early may not import pkg.late" in reports[0] and "early/a.py:1" in reports[0]
    assert layering_violations(edges, "pkg", {"early": {"late"}, "late": {"early"}}) == []
