"""The package's import graph: a one-way stack without cycles.

`custom_layers` -> `apps.common` -> the apps: the library knows nothing of the
apps, the shared plumbing knows no app and no app's CLI, and no two modules
import each other (directly or round a longer circle). Read from the source
with `ast`, so every import counts, also those inside functions (but not a
module's `if __name__ == "__main__":` script entry).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("custom_layers", "apps")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_main_block(node) -> bool:
    return (
        isinstance(node, ast.If)
        and isinstance(node.test, ast.Compare)
        and isinstance(node.test.left, ast.Name)
        and node.test.left.id == "__name__"
    )


def _import_graph() -> dict[str, set[str]]:
    modules = {
        _module_name(p): p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))
    }
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        tree = ast.parse(path.read_text(encoding="utf-8"))
        # A module's `if __name__ == "__main__":` block is its script entry point,
        # not something importing the module runs: leave it out.
        tree.body = [node for node in tree.body if not _is_main_block(node)]
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # Relative import.
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                # `from pkg import module` imports the module when there is one.
                found = [f"{base}.{alias.name}" for alias in node.names] + [base]
            else:
                continue
            for target in found:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    targets.add(target)
        graph[name] = targets
    return graph


def _cycles(graph):
    """Every import circle, each as the list of modules round it (Tarjan's SCCs)."""
    index, low, stack, on_stack, result = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph[node]):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                result.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return result


def _is_package_init_edge(source, target):
    # A package's __init__ importing its own submodules is how packages are built.
    return target.startswith(source + ".")


def test_the_graph_is_read():
    graph = _import_graph()
    assert "custom_layers.layers.conv" in graph["custom_layers.layers.pooling"] or (
        "custom_layers.layers.conv_arithmetic" in graph["custom_layers.layers.pooling"]
    )
    assert "apps.common.errors" in graph["apps.common.cli"]


def test_no_import_cycles():
    graph = _import_graph()
    graph = {
        source: {t for t in targets if not _is_package_init_edge(source, t)}
        for source, targets in graph.items()
    }
    # Submodules importing `custom_layers` (the package) for registration are fine
    # as long as the package's own imports do not lead back to them.
    assert _cycles(graph) == []


def test_the_library_and_the_shared_plumbing_import_no_app_and_no_cli():
    graph = _import_graph()
    offenders = []
    for source, targets in graph.items():
        if source.startswith("custom_layers"):
            offenders += [(source, t) for t in targets if t.startswith("apps")]
        if source.startswith("apps.common"):
            offenders += [
                (source, t)
                for t in targets
                if (t.startswith("apps.") and not t.startswith("apps.common"))
                or t.endswith(".cli")
                and not t.startswith("apps.common")
            ]
    assert offenders == []
