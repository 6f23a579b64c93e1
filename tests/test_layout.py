"""The package's shape: a small top level, short modules, no dependency on ``examples``."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import raserec_adapter

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "raserec_adapter"


def test_the_top_level_exports_at_most_20_names_and_all_of_them_exist():
    assert len(raserec_adapter.__all__) <= 20
    assert all(hasattr(raserec_adapter, name) for name in raserec_adapter.__all__)


def test_no_module_over_500_lines_and_the_facade_at_most_400():
    sizes = {p: len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    assert sizes and max(sizes.values()) <= 500, max(sizes.items(), key=lambda kv: kv[1])
    assert sizes[PACKAGE / "augmenter.py"] <= 400


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def test_nothing_in_the_package_tests_or_docs_imports_examples():
    files = [
        *PACKAGE.rglob("*.py"),
        *(ROOT / "tests").rglob("*.py"),
        *(ROOT / "docs").rglob("*.py"),
    ]
    offenders = [p for p in files if any(m.split(".")[0] == "examples" for m in _imports(p))]
    # docstring and docs-page examples too
    pattern = re.compile(r"^\s*(>>> )?(from|import) examples\b", re.M)
    texts = [*PACKAGE.rglob("*.py"), *(ROOT / "docs").rglob("*.md"), ROOT / "README.md"]
    offenders += [p for p in texts if pattern.search(p.read_text())]
    assert not offenders, offenders
    assert not (ROOT / "examples" / "__init__.py").exists()


def test_no_import_cycles_between_the_subpackages():
    """Module-level imports inside the package form no cycle (a reader follows them one way)."""
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(ROOT).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        tree = ast.parse(path.read_text())
        deps = set()
        for node in tree.body:  # module level only: a lazy import inside a function is fine
            module = node.module if isinstance(node, ast.ImportFrom) else None
            if module and module.startswith("raserec_adapter"):
                deps.add(module)
        graph[name] = deps
    seen: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        seen[node] = 1
        for dep in graph.get(node, ()):
            if dep == node or (dep == "raserec_adapter" and node.startswith("raserec_adapter.")):
                continue
            if seen.get(dep) == 1:
                raise AssertionError(" -> ".join([*stack, node, dep]))
            if dep not in seen:
                visit(dep, [*stack, node])
        seen[node] = 2

    for name in graph:
        if name not in seen:
            visit(name, [])
