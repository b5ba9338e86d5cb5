#!/usr/bin/env python3
"""The import graph of src/nbcloud, read with ast (nothing is imported): edges, cycles, sizes.

    python3 scripts/import_graph.py [--edges] [--json]

An edge is one module naming another in an import statement, at module level or inside a function (in-function
imports count: they still run, they only run later). ``from pkg import name`` points at ``pkg.name`` when that is
a module, else at ``pkg`` (its ``__init__``). The implicit "importing a.b runs a/__init__" is not an edge, as in
import-linter and pydeps: with it every package whose ``__init__`` re-exports its modules would be a cycle.
Imports under ``if TYPE_CHECKING:`` are left out (they never run), and so are those under
``if __name__ == "__main__":`` (they run in the script, a module apart). ``importlib.import_module("literal")`` counts
as an import where it stands (it is one, spelled so the graph does not show it).
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "src"
MODULE_LINES = 600
FUNCTION_LINES = 80


@dataclass
class Module:
    name: str
    path: Path
    is_package: bool
    lines: int
    #: (target module, imported names, lineno, "module" | "function")
    imports: list[tuple[str, tuple[str, ...], int, str]] = field(default_factory=list)


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _main_block(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Compare) and isinstance(test.left, ast.Name) and test.left.id == "__name__"
            and any(isinstance(c, ast.Constant) and c.value == "__main__" for c in test.comparators))


def _import_module_call(node: ast.AST) -> bool:
    if not (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)):
        return False
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
    return name == "import_module" and isinstance(node.args[0].value, str)


def _walk(node: ast.AST, in_function: bool = False) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _main_block(child):
            continue  # runs only when the file is the script, as a module of its own (__main__), not on import
        if isinstance(child, ast.If) and _type_checking(child):
            for sub in child.orelse:
                yield from _walk(sub, in_function)
            continue
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child, in_function
        elif _import_module_call(child):
            assert isinstance(child, ast.Call) and isinstance(child.args[0], ast.Constant)
            yield ast.Import(names=[ast.alias(name=str(child.args[0].value))], lineno=child.lineno), in_function
        inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        yield from _walk(child, inner)


def resolve(module: Module, node: ast.ImportFrom) -> str:
    """The absolute module an ``ImportFrom`` names (relative levels resolved against ``module``)."""
    if not node.level:
        return node.module or ""
    base = module.name.split(".")
    if not module.is_package:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def load(root: Path = ROOT, package: str = "nbcloud") -> dict[str, Module]:
    modules: dict[str, Module] = {}
    for path in sorted((root / package).rglob("*.py")):
        text = path.read_text()
        modules[module_name(path, root)] = Module(module_name(path, root), path, path.name == "__init__.py",
                                                  text.count("\n"))
    for module in modules.values():
        tree = ast.parse(module.path.read_text(), str(module.path))
        for node, in_function in _walk(tree):
            where = "function" if in_function else "module"
            if isinstance(node, ast.Import):
                for alias in node.names:
                    module.imports.append((alias.name, (), node.lineno, where))
                continue
            target = resolve(module, node)
            names = tuple(alias.name for alias in node.names)
            submodules = [f"{target}.{n}" for n in names if f"{target}.{n}" in modules]
            rest = tuple(n for n in names if f"{target}.{n}" not in modules)
            for sub in submodules:
                module.imports.append((sub, (), node.lineno, where))
            if rest or not submodules:
                module.imports.append((target, rest, node.lineno, where))
    return modules


def edges(modules: dict[str, Module], package: str = "nbcloud") -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for module in modules.values():
        for target, _names, _line, _where in module.imports:
            if target in modules and target != module.name:
                graph[module.name].add(target)
            elif target.startswith(package + ".") and target not in modules:
                # `import nbcloud.x.y.attr`-style names: point at the longest module prefix
                parts = target.split(".")
                while parts and ".".join(parts) not in modules:
                    parts.pop()
                if parts and ".".join(parts) != module.name:
                    graph[module.name].add(".".join(parts))
    return graph


def cycles(graph: dict[str, set[str]], within: tuple[str, ...] = ()) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), optionally restricted to ``within``."""
    nodes = [n for n in graph if not within or n.startswith(within)]
    keep = set(nodes)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    sys.setrecursionlimit(10000)

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in graph[node]:
            if succ not in keep:
                continue
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in nodes:
        if node not in index:
            visit(node)
    return sorted(found)


def long_functions(modules: dict[str, Module], limit: int = FUNCTION_LINES) -> list[tuple[str, str, int]]:
    out = []
    for module in modules.values():
        tree = ast.parse(module.path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                size = (node.end_lineno or node.lineno) - node.lineno + 1
                if size > limit:
                    out.append((module.name, node.name, size))
    return sorted(out, key=lambda row: -row[2])


def in_function_counts(modules: dict[str, Module], package: str = "nbcloud") -> dict[str, int]:
    """In-function imports of nbcloud modules, per top-level subpackage."""
    counts: dict[str, int] = {}
    for module in modules.values():
        sub = module.name.split(".")[1] if "." in module.name else module.name
        for target, _names, _line, where in module.imports:
            if where == "function" and target.startswith(package):
                counts[sub] = counts.get(sub, 0) + 1
    return dict(sorted(counts.items()))


def private_imports(modules: dict[str, Module], package: str = "nbcloud.ops") -> list[str]:
    """``from <sibling> import _name`` between modules of ``package``: one use case reaching into another."""
    out = []
    for module in modules.values():
        if not module.name.startswith(package):
            continue
        for target, names, line, _where in module.imports:
            if target.startswith(package) and target != module.name:
                out += [f"{module.name}:{line} {target}.{n}" for n in names if n.startswith("_")]
    return sorted(out)


def concrete_provider_imports(modules: dict[str, Module], package: str = "nbcloud") -> list[str]:
    """Imports of providers.aws/ssh/sandbox from outside providers/."""
    concrete = tuple(f"{package}.providers.{p}" for p in ("aws", "ssh", "sandbox"))
    out = []
    for module in modules.values():
        if module.name.startswith(f"{package}.providers"):
            continue
        for target, _names, line, _where in module.imports:
            if target == concrete or target.startswith(concrete):
                out.append(f"{module.name}:{line} {target}")
    return sorted(set(out))


def report(modules: dict[str, Module]) -> dict[str, object]:
    graph = edges(modules)
    ops_ssh = [m for m in modules.values() if m.name.startswith(("nbcloud.ops", "nbcloud.ssh"))]
    return {
        "modules": len(modules),
        "lines": sum(m.lines for m in modules.values()),
        "edges": sum(len(v) for v in graph.values()),
        "cycles_all": cycles(graph),
        "cycles_ops_ssh": cycles(graph, ("nbcloud.ops", "nbcloud.ssh")),
        "in_function_imports": in_function_counts(modules),
        "ops_in_function_imports_of_ops": sum(1 for m in ops_ssh if m.name.startswith("nbcloud.ops")
                                              for t, _n, _l, w in m.imports if w == "function"
                                              and t.startswith("nbcloud.ops")),
        "ops_private_cross_imports": private_imports(modules),
        "ssh_imports_of_ops": sorted(f"{m.name}:{line} {t}" for m in modules.values() if m.name.startswith(
            "nbcloud.ssh") for t, _n, line, _w in m.imports if t.startswith("nbcloud.ops")),
        "concrete_provider_imports_outside_providers": concrete_provider_imports(modules),
        "modules_over_600": sorted(((m.name, m.lines) for m in modules.values() if m.lines > MODULE_LINES),
                                   key=lambda row: -row[1]),
        "functions_over_80": long_functions(modules),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edges", action="store_true", help="print every edge inside ops/ and ssh/ too")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--root", type=Path, default=ROOT, help="the src/ directory to read (another checkout)")
    args = parser.parse_args()
    modules = load(args.root)
    result = report(modules)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{result['modules']} modules, {result['lines']} lines, {result['edges']} edges")
    print(f"in-function imports of nbcloud modules: {result['in_function_imports']}")
    print(f"in-function imports of ops/ modules inside ops/: {result['ops_in_function_imports_of_ops']}")
    for label in ("cycles_all", "cycles_ops_ssh"):
        found = result[label]
        assert isinstance(found, list)
        print(f"{label}: {len(found)}")
        for component in found:
            print(f"  ({len(component)}) " + " ".join(component))
    for label in ("ops_private_cross_imports", "ssh_imports_of_ops", "concrete_provider_imports_outside_providers"):
        rows = result[label]
        assert isinstance(rows, list)
        print(f"{label}: {len(rows)}")
        for row in rows:
            print(f"  {row}")
    print(f"modules over {MODULE_LINES} lines: {result['modules_over_600']}")
    print(f"functions over {FUNCTION_LINES} lines:")
    for name, func, size in result["functions_over_80"]:  # type: ignore[attr-defined]
        print(f"  {size:4d} {name}.{func}")
    if args.edges:
        graph = edges(modules)
        for name in sorted(graph):
            if name.startswith(("nbcloud.ops", "nbcloud.ssh")):
                inner = sorted(t for t in graph[name] if t.startswith(("nbcloud.ops", "nbcloud.ssh")))
                if inner:
                    print(f"{name} -> {', '.join(inner)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
