"""The direction of imports, read from the source with ast (nothing is imported, so nothing can hide a cycle).

cli → ops → (providers via the registry | remote | ssh) → models/errors; ops/ use cases share their plumbing through
ops/instances.py and never reach into each other's private names; ssh/ is handed what it needs from ops/; the
on-instance agent is standard-library only. In-function imports count (they run, only later); imports under
``if TYPE_CHECKING:`` and ``if __name__ == "__main__":`` do not.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "nbcloud"
CONCRETE = ("nbcloud.providers.aws", "nbcloud.providers.ssh", "nbcloud.providers.sandbox")

@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    target: str  # the module named (``from pkg import mod`` → pkg.mod when mod is a module)
    names: tuple[str, ...]
    line: int


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _skipped(node: ast.If) -> bool:
    test = node.test
    type_checking = (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")
    main = (isinstance(test, ast.Compare) and isinstance(test.left, ast.Name) and test.left.id == "__name__")
    return type_checking or main


def _nodes(node: ast.AST) -> Iterator[ast.AST]:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _skipped(child):
            continue
        yield child
        yield from _nodes(child)


def _resolve(package: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = package.split(".")
    return ".".join([*base[: len(base) - node.level + 1], *([node.module] if node.module else [])])


def imports_of(module: str) -> list[Import]:
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = []
    for node in _nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [Import(module, alias.name, (), node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(package, node)
            names = tuple(alias.name for alias in node.names)
            subs = [f"{target}.{n}" for n in names if f"{target}.{n}" in MODULES]
            out += [Import(module, sub, (), node.lineno) for sub in subs]
            rest = tuple(n for n in names if f"{target}.{n}" not in MODULES)
            if rest or not subs:
                out.append(Import(module, target, rest, node.lineno))
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module"):
            out.append(Import(module, node.args[0].value, (), node.lineno))  # importlib.import_module("literal")
    return out


def _in(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_the_reader_sees_imports() -> None:
    """The rules below are only as good as this reader: it must see relative and in-function imports."""
    lifecycle = imports_of("nbcloud.ops.lifecycle")
    assert any(i.target == "nbcloud.ops.instances" and "refresh" in i.names for i in lifecycle)
    assert any(i.target == "nbcloud.ops.cluster" for i in lifecycle)  # inside down_unlocked
    assert any(i.target == "nbcloud.providers.aws.session" for i in imports_of("nbcloud.providers.registry"))
    assert any(i.target == "nbcloud.ops.tunnels" for i in imports_of("nbcloud.ops.gateway"))


def test_use_cases_import_no_other_modules_private_names() -> None:
    bad = [f"{i.module}:{i.line} imports {i.target}.{name}"
           for module in MODULES if _in(module, "nbcloud.ops")
           for i in imports_of(module) if _in(i.target, "nbcloud.ops") and i.target != module
           for name in i.names if name.startswith("_")]
    assert bad == [], "share it through ops/instances.py under a public name:\n" + "\n".join(bad)


def test_ssh_never_imports_ops() -> None:
    bad = [f"{i.module}:{i.line} imports {i.target}" for module in MODULES if _in(module, "nbcloud.ssh")
           for i in imports_of(module) if _in(i.target, "nbcloud.ops")]
    assert bad == [], "pass what ssh/ needs in (the tunnel's resolver is a 'module:function' argument):\n" + \
        "\n".join(bad)


def test_the_agent_is_standard_library_only() -> None:
    """It runs on the instance with the system python3: nbcloud is not installed there."""
    bad = [f"{i.module}:{i.line} imports {i.target}" for module in MODULES if _in(module, "nbcloud.remote.agent")
           for i in imports_of(module) if _in(i.target, "nbcloud") and not _in(i.target, "nbcloud.remote.agent")]
    assert bad == []  # its own files ship beside it (nbcloud_activity.py, imported as a sibling script)


def test_only_providers_import_a_concrete_provider() -> None:
    """No exceptions left: `prices refresh` asks ``registry.price_source``, the cluster ``registry.cluster_machines``,
    adoption uses ``ssh.target`` and ``remote.adopted`` (ssh client and on-host scripts, not the provider's)."""
    found = sorted(f"{i.module}:{i.line} imports {i.target}" for module in MODULES
                   if not _in(module, "nbcloud.providers")
                   for i in imports_of(module) if any(_in(i.target, c) for c in CONCRETE))
    assert found == [], "go through providers.registry or the Provider interface:\n" + "\n".join(found)


def test_money_has_one_home() -> None:
    """Price table, cost arithmetic and quotes live in nbcloud/money/; the AWS Price List edge stays in
    providers/aws/pricing.py. money/ sits low: it imports no use case, no CLI, no concrete provider, no ssh."""
    assert "nbcloud.money.cost" in MODULES and "nbcloud.money.pricing" in MODULES and "nbcloud.money.quotes" in MODULES
    assert not {"nbcloud.cost", "nbcloud.pricing"} & set(MODULES), "money's modules belong in nbcloud/money/"
    bad = [f"{i.module}:{i.line} imports {i.target}" for module in MODULES if _in(module, "nbcloud.money")
           for i in imports_of(module)
           if any(_in(i.target, up) for up in ("nbcloud.ops", "nbcloud.cli", "nbcloud.ssh", "nbcloud.providers",
                                                "nbcloud.remote", "nbcloud.sandbox", "nbcloud.cluster"))]
    assert bad == []


def test_the_interface_says_which_part_a_provider_is() -> None:
    """Machines (every provider) and CloudResources (clouds only) are separate parts of the interface."""
    tree = ast.parse(MODULES["nbcloud.providers.base"].read_text())
    classes = {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}
    assert {"Machines", "CloudResources", "Provider", "ClusterMachines", "PriceSource"} <= set(classes)
    assert [ast.unparse(b) for b in classes["Provider"].bases] == ["Machines", "CloudResources", "Protocol"]

    def methods(name: str) -> set[str]:
        return {n.name for n in classes[name].body if isinstance(n, ast.FunctionDef)}

    assert {"find", "list_instances", "terminate"} <= methods("Machines")
    assert {"run_instance", "create_volume", "create_image", "import_key_pair"} <= methods("CloudResources")
    assert not methods("Machines") & methods("CloudResources")


def test_ops_makes_no_cloud_call_itself() -> None:
    """EC2 calls live in providers/: ops/ never calls ``<provider>.session.call``/``paginate``."""
    bad = []
    for module in MODULES:
        if not _in(module, "nbcloud.ops"):
            continue
        for node in ast.walk(ast.parse(MODULES[module].read_text())):
            if (isinstance(node, ast.Attribute) and node.attr in {"call", "paginate", "client"}
                    and isinstance(node.value, ast.Attribute) and node.value.attr == "session"):
                bad.append(f"{module}:{node.lineno}")
    assert bad == [], "add it to the provider (or ClusterMachines) interface"


def _cycles(prefixes: tuple[str, ...]) -> list[list[str]]:
    graph = {m: {i.target for i in imports_of(m) if i.target in MODULES and i.target != m and i.target.startswith(
        prefixes)} for m in MODULES if m.startswith(prefixes)}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        for succ in graph[node]:
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_no_import_cycle_in_ops_and_ssh() -> None:
    """Imports inside functions included: a cycle dodged by a late import is still a cycle."""
    assert _cycles(("nbcloud.ops", "nbcloud.ssh")) == []


def test_no_import_cycle_anywhere() -> None:
    """The whole package, the cluster's engine/renderers included (engines.py lists the engines; onhost.py holds
    the paths and program text they share)."""
    assert _cycles(("nbcloud",)) == []


def test_the_spot_notice_probe_is_written_once() -> None:
    """The worker's launcher and its watchdog embed cluster/onhost.py's SPOT_NOTICE_PROBE."""
    url = "http://169.254.169.254/latest/meta-data/spot/instance-action"
    holders = [m for m in MODULES if _in(m, "nbcloud.cluster") and url in MODULES[m].read_text()]
    assert holders == ["nbcloud.cluster.onhost"]


def test_no_function_over_80_lines() -> None:
    """A long function is steps waiting for names (the design's limit; ssh.supervisor's relay attempt was 85)."""
    long = [f"{module}.{node.name}: {node.end_lineno - node.lineno + 1} lines" for module, path in MODULES.items()
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno is not None
            and node.end_lineno - node.lineno + 1 > 80]
    assert long == []


def test_the_machine_root_knobs_are_spelled_once() -> None:
    """``NBCLOUD_ROOT``/``NBCLOUD_JUPYTER_IP`` read in shell (``${NBCLOUD_…``) or Python (``environ.get(…)``) are
    remote/machine_root.py's ``SH_ROOT``, ``SH_JUPYTER_IP``, ``py_rooted``; only the stdlib-only agent, the
    shipped templates and the emulator that sets them spell them out."""
    spellings = [f"{pre}{knob}" for knob in ("NBCLOUD_ROOT", "NBCLOUD_JUPYTER_IP", "NBCLOUD_SSH_PORT")
                 for pre in ("${", "${{", "environ.get('", 'environ.get("')]
    exempt = ("nbcloud.remote.machine_root", "nbcloud.remote.agent", "nbcloud.remote.templates", "nbcloud.sandbox")
    bad = [module for module, path in MODULES.items()
           if not any(_in(module, e) for e in exempt) and any(s in path.read_text() for s in spellings)]
    assert bad == []


def test_no_leftovers_the_review_named() -> None:
    """``InstanceSpec.with_`` had no caller; `down` read its kept data volumes back out of its own display lines."""
    models = ast.parse(MODULES["nbcloud.models"].read_text())
    spec = next(n for n in models.body if isinstance(n, ast.ClassDef) and n.name == "InstanceSpec")
    assert "with_" not in {n.name for n in spec.body if isinstance(n, ast.FunctionDef)}
    lifecycle = MODULES["nbcloud.ops.lifecycle"].read_text()
    assert 'startswith("data volume")' not in lifecycle and "split()[-1]" not in lifecycle


def test_no_module_over_600_lines() -> None:
    """The design's limit (the sandbox daemon was 772, the agent 714: split along their seams)."""
    big = [f"{module}: {path.read_text().count(chr(10))} lines" for module, path in MODULES.items()
           if path.read_text().count("\n") > 600]
    assert big == []
