"""The code base keeps its shape: no import circles, no oversized modules, every module says why.

Static checks over the source (``ast``, nothing is imported), so they are fast and cannot be
fooled by import order. Imports under ``if TYPE_CHECKING:`` are annotations only and do not
count; imports inside functions do (a lazy import that closes a circle is still a circle).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("edge", "trainer")
MAX_LINES = 400

# Modules over MAX_LINES today, with their size when this list was written. They may shrink,
# not grow (by more than GROWTH lines); take an entry out once the module is split (the test
# says when).
OVERSIZED: dict[str, int] = {}
GROWTH = 20

# Import circles that exist today (each as its sorted module set). Fix, then delete the entry.
KNOWN_CIRCLES: list[set[str]] = []


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            rel = path.relative_to(ROOT).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    skip = _type_checking_lines(tree)
    is_pkg = path.name == "__init__.py"
    found: set[str] = set()

    def add(target: str) -> None:
        while target and target not in modules:  # `import a.b.c` of a name inside a.b
            target = target.rpartition(".")[0]
        if target and target != name:
            found.add(target)

    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base if is_pkg else base[:-1]
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join([*base, node.module] if node.module else base)
            else:
                mod = node.module or ""
            for alias in node.names:  # `from pkg import module` imports the module
                if f"{mod}.{alias.name}" in modules:
                    add(f"{mod}.{alias.name}")
                else:
                    add(mod)
    return found


def _circles(graph: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[set[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(comp)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def test_the_checker_finds_a_circle():
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]


def test_no_import_circles():
    """A package importing the package it is imported by (e.g. edge.models.__init__) counts too."""
    circles = _circles(import_graph())
    new = [sorted(c) for c in circles if c not in KNOWN_CIRCLES]
    assert not new, f"import circles: {new}"
    fixed = [sorted(c) for c in KNOWN_CIRCLES if c not in circles]
    assert not fixed, f"these circles are gone, delete them from KNOWN_CIRCLES: {fixed}"


def test_no_module_over_the_line_limit():
    sizes = {
        str(p.relative_to(ROOT)): len(p.read_text().splitlines())
        for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")
    }
    over = {f: n for f, n in sizes.items() if n > MAX_LINES and n > OVERSIZED.get(f, 0) + GROWTH}
    assert not over, f"modules over {MAX_LINES} lines (split them): {over}"
    split = [f for f in OVERSIZED if sizes.get(f, 0) <= MAX_LINES]
    assert not split, f"these modules are within {MAX_LINES} lines now, delete them from OVERSIZED: {split}"


def test_every_module_says_why_it_exists():
    missing = [
        str(p.relative_to(ROOT)) for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")
        if p.read_text().strip() and not ast.get_docstring(ast.parse(p.read_text()))
    ]
    assert not missing, f"modules without a docstring: {missing}"
