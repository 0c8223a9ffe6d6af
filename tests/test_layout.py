"""The package's layout keeps its promises (docs/architecture.md): imports go one way
through the pipeline's folders, no module imports itself back through others, and a long
module says at its top why it is long."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "snncompile"
# Leaf modules every folder may import.
BASE = {"errors", "data", "fsutil", "progress"}
# Each folder imports only from folders before it (and from BASE).
ORDER = ["ir", "sim", "calibrate", "passes", "frontend", "tune", "targets", "testing", "measure", "app"]
# What sits on top: the plugins' import path and `python -m snncompile`.
TOP = {"plugin", "__main__"}
LONG = 400


def _modules(package: Path = PACKAGE) -> dict[str, Path]:
    out = {}
    for p in package.rglob("*.py"):
        parts = list(p.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def _imports(mods: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the package modules it imports, at any depth of its code (an import
    inside a function is still a dependency)."""
    edges: dict[str, set[str]] = {}
    for name, path in mods.items():
        here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = here[:len(here) - (node.level - 1)]
                    src = ".".join(base + ([node.module] if node.module else []))
                else:
                    src = node.module or ""
                subs = [f"{src}.{a.name}" for a in node.names if f"{src}.{a.name}" in mods]
                found.update(subs if subs and len(subs) == len(node.names) else [src])
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
        edges[name] = {m for m in found if m in mods and m != name}
    return edges


def _folder(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def wrong_way_imports(package: Path = PACKAGE) -> list[str]:
    """Imports of a folder from a folder after it in ORDER (or of a base module from a folder)."""
    wrong = []
    for src, targets in _imports(_modules(package)).items():
        a = _folder(src)
        if a in TOP or a == "":
            continue
        for dst in targets:
            b = _folder(dst)
            if b == a or b in BASE or b == "":
                continue
            if a in BASE or b in TOP or ORDER.index(b) > ORDER.index(a):
                wrong.append(f"{src} imports {dst}")
    return sorted(wrong)


def import_cycles(package: Path = PACKAGE) -> list[list[str]]:
    """Groups of modules that import each other, directly or through others. The package
    root's imports do not count: it imports the Python API only on attribute access
    (``snncompile.convert``), while modules import it for ``__version__``."""
    edges = _imports(_modules(package))
    edges[package.name] = set()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in edges:
        if v not in index:
            visit(v)
    return cycles


def test_imports_follow_the_pipeline_order():
    wrong = wrong_way_imports()
    assert not wrong, "imports against the layout (docs/architecture.md):\n" + "\n".join(wrong)


def test_no_import_cycle():
    assert not import_cycles(), f"import cycles: {import_cycles()}"


def test_a_long_module_says_why_at_its_top():
    unexplained = []
    for name, path in _modules().items():
        text = path.read_text()
        if text.count("\n") > LONG:
            doc = ast.get_docstring(ast.parse(text)) or ""
            if "Why one module" not in doc:
                unexplained.append(f"{name} ({text.count(chr(10))} lines)")
    assert not unexplained, ("modules over about 400 lines without a 'Why one module' paragraph "
                             f"in their docstring: {unexplained}")


def test_the_checks_find_a_cycle_and_a_wrong_way_import(tmp_path):
    pkg = tmp_path / "snncompile"
    for folder in ("ir", "app"):
        (pkg / folder).mkdir(parents=True)
        (pkg / folder / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "ir" / "nodes.py").write_text("def f():\n    from ..app import cli\n")
    (pkg / "app" / "cli.py").write_text("from ..ir import nodes\n")
    assert wrong_way_imports(pkg) == ["snncompile.ir.nodes imports snncompile.app.cli"]
    assert import_cycles(pkg) == [["snncompile.app.cli", "snncompile.ir.nodes"]]
