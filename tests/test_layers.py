"""The package's shape (issue 14; docs/design.md, "Layers"): no import circle, no import from a
layer above (the table is latentds/_layers.py), no module over 500 lines.

The import graph comes from grimp, which reads every ``import`` statement of every module
(function bodies included, where the lazy imports live) without importing anything.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import grimp
import pytest

from latentds._layers import LAYERS, layer_name, layer_of

PACKAGE = Path(__file__).resolve().parent.parent / "latentds"
MAX_LINES = 500

#: Modules allowed over MAX_LINES, each with the engineer who splits it (empty since issue 14;
#: an entry that is already short enough only warns).
TOO_LONG_ALLOWED: dict[str, str] = {}

#: Import circles allowed, each with its owner; a circle found must lie inside one of these
#: groups (empty since issue 14).
CYCLES_ALLOWED: dict[frozenset[str], str] = {}


def _graph(exclude_type_checking: bool) -> grimp.ImportGraph:
    return grimp.build_graph("latentds", cache_dir=None, exclude_type_checking_imports=exclude_type_checking)


def _strongly_connected(edges: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative (the graph is small, but recursion depth is not ours to pick).
    Returns every strongly connected component of more than one module, or of one module that
    imports itself."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(edges.get(w, ())))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1 or v in edges.get(v, ()):
                        out.append(sorted(comp))
    return out


def test_strongly_connected_finds_circles() -> None:
    """The circle finder itself: a 3-circle, a self-import and a chain."""
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"d"}, "e": {"f"}, "f": set()}
    assert sorted(_strongly_connected(edges)) == [["a", "b", "c"], ["d"]]


def test_layer_table() -> None:
    assert [name for name, _ in LAYERS] == ["core", "testing", "apps", "cli"]
    assert layer_name("latentds.dataset") == "core"
    assert layer_name("latentds.store.manifest") == "core"  # unnamed modules are core (the strictest)
    assert layer_name("latentds.testing.synthetic") == "testing"
    assert layer_name("latentds.train.vae.run") == "apps"
    assert layer_name("latentds.demo_figure") == "apps"
    assert layer_name("latentds.cli") == "cli"
    assert layer_of("latentds.cli") > layer_of("latentds.sweep") > layer_of("latentds.testing") > layer_of("latentds")


def test_no_import_from_a_layer_above() -> None:
    graph = _graph(exclude_type_checking=False)  # a type-only import is still a dependency
    bad = []
    for importer in sorted(graph.modules):
        for imported in sorted(graph.find_modules_directly_imported_by(importer)):
            if layer_of(imported) > layer_of(importer):
                lines = [d["line_number"] for d in graph.get_import_details(importer=importer, imported=imported)]
                bad.append(f"{importer} ({layer_name(importer)}) imports {imported} ({layer_name(imported)}) "
                           f"at line(s) {lines}")
    assert not bad, ("imports from a layer above (latentds/_layers.py; move the code down or the import up):\n"
                     + "\n".join(bad))


def test_no_import_circle() -> None:
    # TYPE_CHECKING-only imports never run, so they cannot close a circle at import time.
    graph = _graph(exclude_type_checking=True)
    edges = {m: set(graph.find_modules_directly_imported_by(m)) for m in graph.modules}
    circles = _strongly_connected(edges)
    bad = [c for c in circles if not any(set(c) <= allowed for allowed in CYCLES_ALLOWED)]
    assert not bad, "import circles (break them; a lazy import inside a function still counts):\n" + "\n".join(
        " <-> ".join(c) for c in bad)


def test_no_module_over_500_lines() -> None:
    lengths = {p.relative_to(PACKAGE.parent).as_posix(): len(p.read_text(encoding="utf-8").splitlines())
               for p in sorted(PACKAGE.rglob("*.py"))}
    assert lengths, PACKAGE
    too_long = {f: n for f, n in lengths.items() if n > MAX_LINES}
    bad = [f"{f}: {n} lines" for f, n in too_long.items() if f not in TOO_LONG_ALLOWED]
    assert not bad, f"modules over {MAX_LINES} lines (split them by job):\n" + "\n".join(bad)
    stale = sorted(f for f in TOO_LONG_ALLOWED if f not in too_long)
    if stale:
        warnings.warn(f"TOO_LONG_ALLOWED entries now short enough or gone (remove them): {stale}", stacklevel=1)


@pytest.mark.parametrize("code, expect", [
    ("from latentds.testing import synthetic\n", "testing"),
    ("def f():\n    from latentds.sweep import run_sweep\n", "apps"),
])
def test_the_graph_sees_lazy_and_package_imports(tmp_path, monkeypatch, code, expect) -> None:
    """The check would be empty if grimp missed imports inside functions: build a throwaway
    package whose core module imports upward and see the import reported."""
    pkg = tmp_path / "latentds_probe_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "core.py").write_text(code.replace("latentds.", "latentds_probe_pkg."))
    (pkg / "testing").mkdir()
    (pkg / "testing" / "__init__.py").write_text("")
    (pkg / "testing" / "synthetic.py").write_text("")
    (pkg / "sweep.py").write_text("run_sweep = None\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    graph = grimp.build_graph("latentds_probe_pkg", cache_dir=None)
    imported = graph.find_modules_directly_imported_by("latentds_probe_pkg.core")
    assert len(imported) == 1
    (target,) = imported
    assert layer_name(target.replace("latentds_probe_pkg", "latentds")) == expect


def _is_public(path: Path) -> bool:
    parts = path.relative_to(PACKAGE).parts
    return path.name != "__main__.py" and not any(p.startswith("_") and p != "__init__.py" for p in parts)


def test_public_modules_declare_all() -> None:
    """Every public module says what it exports (``_``-prefixed modules are internal)."""
    import ast

    missing = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if not _is_public(path):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        if not any(isinstance(n, (ast.Assign, ast.AnnAssign)) and any(
                getattr(t, "id", None) == "__all__" for t in (n.targets if isinstance(n, ast.Assign) else [n.target]))
                for n in tree.body):
            missing.append(path.relative_to(PACKAGE.parent).as_posix())
    assert not missing, "public modules without __all__ (add one, or prefix the module with _):\n" + "\n".join(missing)


def test_all_names_exist() -> None:
    """``__all__`` lists only names the module has (the top-level package's lazy names included)."""
    import importlib

    import latentds

    assert not [n for n in latentds.__all__ if not hasattr(latentds, n)]
    for name in ("latentds.cli", "latentds.metrics", "latentds.testing.synthetic", "latentds.testing.phantoms",
                 "latentds.canonical", "latentds._layers"):
        module = importlib.import_module(name)
        assert not [n for n in module.__all__ if not hasattr(module, n)], name
