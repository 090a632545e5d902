"""The import boundaries of docs/ARCHITECTURE.md ("Boundaries"), checked instead of hoped for.

- `.importlinter` holds the forbidden-import contracts (core pure, SQL only in store/, asyncssh only
  in ssh/ and sim/, the CLI fast path); `test_import_contracts_hold` runs import-linter on it.
- No import cycle among the module-level imports of `hybridctl/` (an AST walk; lazy imports inside
  functions are how a cycle is broken on purpose, and `if TYPE_CHECKING:` blocks never run).
- core/ imports the stdlib, core/ itself and nothing else (yaml lazily, for spec.py's YAML).
- The researcher's commands, run for real in a fresh interpreter, never load textual/asyncssh/torch."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "hybridctl"


# ---- import-linter ------------------------------------------------------------------------------


def _lint(config: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    code = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    return subprocess.run([sys.executable, "-c", code, str(config), "--no-cache"], cwd=cwd,
                          env={**os.environ, "PYTHONPATH": str(cwd)}, capture_output=True, text=True, timeout=120)


def test_import_contracts_hold() -> None:
    pytest.importorskip("importlinter", reason="import-linter is in the dev extra: pip install -e .[dev]")
    res = _lint(ROOT / ".importlinter", ROOT)
    assert res.returncode == 0, res.stdout[-6000:] + res.stderr[-2000:]
    assert "BROKEN" not in res.stdout and "KEPT" in res.stdout


def test_a_broken_contract_fails(tmp_path: Path) -> None:
    """The same kind of contract on a package that breaks it: import-linter must say so."""
    pytest.importorskip("importlinter", reason="import-linter is in the dev extra: pip install -e .[dev]")
    pkg = tmp_path / "leaky"
    (pkg / "core").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "core" / "__init__.py").write_text("")
    (pkg / "core" / "pure.py").write_text("def f():\n    import sqlite3  # lazily, still counted\n")
    cfg = tmp_path / "contracts.ini"
    cfg.write_text(textwrap.dedent("""\
        [importlinter]
        root_package = leaky
        include_external_packages = True

        [importlinter:contract:pure]
        name = pure
        type = forbidden
        source_modules = leaky.core
        forbidden_modules = sqlite3
        """))
    res = _lint(cfg, tmp_path)
    assert res.returncode != 0 and "leaky.core.pure -> sqlite3" in res.stdout, res.stdout


# ---- cycles among module-level imports ----------------------------------------------------------


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _top_level_imports(tree: ast.Module, module: str, is_package: bool) -> list[tuple[str, int]]:
    """(imported name, line) for every import that runs when the module is imported: module body,
    class bodies, if/try/with blocks; not function bodies and not `if TYPE_CHECKING:`."""
    out: list[tuple[str, int]] = []

    def visit(stmts: list[ast.stmt]) -> None:
        for node in stmts:
            if isinstance(node, ast.Import):
                out.extend((a.name, node.lineno) for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    pkg = module.split(".") if is_package else module.split(".")[:-1]
                    pkg = pkg[: len(pkg) - (node.level - 1)]
                    base = ".".join(pkg + ([base] if base else []))
                out.extend((f"{base}.{a.name}", node.lineno) for a in node.names)
                out.append((base, node.lineno))
            elif isinstance(node, ast.If):
                if not _is_type_checking(node.test):
                    visit(node.body)
                visit(node.orelse)
            elif isinstance(node, (ast.Try, ast.With, ast.ClassDef)):
                visit(node.body)
                for h in getattr(node, "handlers", []):
                    visit(h.body)
                visit(getattr(node, "orelse", []))
                visit(getattr(node, "finalbody", []))
    visit(tree.body)
    return out


def import_graph(root: Path) -> dict[str, dict[str, int]]:
    """module -> {module it imports at import time: line}, within the package at `root`."""
    files = {_module_name(p, root): p for p in root.rglob("*.py")}
    graph: dict[str, dict[str, int]] = {}
    for mod, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        edges: dict[str, int] = {}
        for name, line in _top_level_imports(tree, mod, path.name == "__init__.py"):
            # `from pkg import name`: an edge to pkg.name if that is a module, else to pkg
            if name in files and name != mod:
                edges.setdefault(name, line)
        graph[mod] = edges
    # `from a import b` also yields an edge to `a` itself; drop it when `a.b` is the module meant
    for mod, edges in graph.items():
        for target in list(edges):
            if any(t.startswith(target + ".") for t in edges) and files[target].name == "__init__.py":
                del edges[target]
    return graph


def find_cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """One cycle (a path a -> b -> ... -> a) per strongly connected component with more than one
    module (or a module importing itself). Tarjan's algorithm, iterative."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    sccs: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work: list[tuple[str, list[str]]] = [(start, sorted(graph[start]))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, todo = work[-1]
            if todo:
                nxt = todo.pop(0)
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, sorted(graph.get(nxt, {}))))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp: list[str] = []
                while True:
                    m = stack.pop()
                    on_stack.discard(m)
                    comp.append(m)
                    if m == node:
                        break
                if len(comp) > 1 or node in graph.get(node, {}):
                    sccs.append(sorted(comp))
    cycles = []
    for comp in sccs:
        members = set(comp)
        # shortest path from comp[0] back to itself inside the component (BFS)
        first = comp[0]
        prev: dict[str, str] = {}
        frontier = [first]
        found = None
        while frontier and found is None:
            nxt_frontier = []
            for n in frontier:
                for m in sorted(graph[n]):
                    if m == first:
                        found = n
                        break
                    if m in members and m not in prev:
                        prev[m] = n
                        nxt_frontier.append(m)
                if found is not None:
                    break
            frontier = nxt_frontier
        path = [first]
        n = found
        while n is not None and n != first:
            path.insert(1, n)
            n = prev.get(n)
        cycles.append(path + [first])
    return cycles


def _describe(graph: dict[str, dict[str, int]], cycle: list[str]) -> str:
    return " -> ".join(f"{a} (l.{graph[a][b]})" for a, b in zip(cycle, cycle[1:])) + f" -> {cycle[-1]}"


def test_no_import_cycle_in_hybridctl() -> None:
    graph = import_graph(PACKAGE)
    cycles = find_cycles(graph)
    assert not cycles, "import cycles among module-level imports:\n" + "\n".join(_describe(graph, c) for c in cycles)


def test_the_cycle_finder_names_a_cycle(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg.sub import b\n")
    (pkg / "sub" / "b.py").write_text("from .. import c\n")
    (pkg / "c.py").write_text("import pkg.a\n")
    (pkg / "d.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pkg.e\n")
    (pkg / "e.py").write_text("def f():\n    import pkg.d\nimport pkg.a\n")
    graph = import_graph(pkg)
    assert find_cycles(graph) == [["pkg.a", "pkg.sub.b", "pkg.c", "pkg.a"]]
    assert "pkg.a (l.1) -> pkg.sub.b (l.1) -> pkg.c (l.1) -> pkg.a" == _describe(graph, find_cycles(graph)[0])


# ---- core/ imports the stdlib and itself only ---------------------------------------------------


def test_core_imports_only_the_stdlib_and_core() -> None:
    allowed_third_party = {"yaml"}  # spec.py, lazily, only when YAML text is parsed
    bad = []
    for path in sorted((PACKAGE / "core").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            for name in names:
                top = name.split(".")[0]
                ok = (top in sys.stdlib_module_names or top == "__future__" or top in allowed_third_party
                      or name == "hybridctl.core" or name.startswith("hybridctl.core."))
                if not ok:
                    bad.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {name}")
    assert not bad, "\n".join(bad)


# ---- the CLI fast path, for real ----------------------------------------------------------------


@pytest.mark.parametrize("argv", [["submit", "--gpus", "1", "--", "true"], ["queue", "--all"], ["show", "1"],
                                  ["cancel", "1"]])
def test_fast_commands_load_nothing_heavy(tmp_path: Path, argv: list[str]) -> None:
    """No controller runs here, so each command gets as far as connecting and exits 1; the
    rendering half of the path is covered by the `cli-fast-path` contract and tests/integration."""
    probe = ("import sys; from hybridctl.cli.main import main; rc = main(sys.argv[1:]); "
             "print('HEAVY', sorted(m for m in ('textual', 'asyncssh', 'torch', 'sqlite_utils') if m in sys.modules), rc)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HYBRIDCTL_")}
    env["HYBRIDCTL_HOME"] = str(tmp_path)
    res = subprocess.run([sys.executable, "-c", probe, *argv], env=env, capture_output=True, text=True, timeout=60,
                         stdin=subprocess.DEVNULL, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines()[-1] == "HEAVY [] 1", (res.stdout, res.stderr)


CLOCK_CALLS = {("time", "time"), ("time", "monotonic"), ("time", "perf_counter"), ("time", "time_ns"),
               ("time", "monotonic_ns"), ("time", "sleep"), ("datetime", "now"), ("datetime", "utcnow"),
               ("datetime", "today"), ("date", "today"), ("random", "random"), ("random", "choice"),
               ("random", "shuffle"), ("random", "randint"), ("os", "urandom")}


def test_core_never_reads_the_clock() -> None:
    """`time.strftime` of a given timestamp is fine; `time.time()`, `datetime.now()` are not: the
    caller passes `now` in (and the randomness), so the core is deterministic under test."""
    bad = []
    for path in sorted((PACKAGE / "core").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                owner = node.func.value
                name = owner.attr if isinstance(owner, ast.Attribute) else getattr(owner, "id", "")
                if (name, node.func.attr) in CLOCK_CALLS:
                    bad.append(f"{path.relative_to(ROOT)}:{node.lineno} calls {name}.{node.func.attr}()")
    assert not bad, "\n".join(bad)


def test_no_test_module_imports_another_test_module() -> None:
    """Shared fixtures and builders live in helper modules (harness.py, nodes.py, workloads.py,
    schedule_kit.py, controller_kit.py, waiting.py), so running one test file never collects, or
    depends on the fixtures of, another."""
    tests = ROOT / "tests"
    bad = []
    for path in sorted(tests.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                if name.startswith("tests.") and name.rsplit(".", 1)[-1].startswith("test_"):
                    bad.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {name}")
    assert not bad, "\n".join(bad)


def _sql_calls(paths: list[Path], root: Path = ROOT) -> list[str]:
    """`x.conn.execute(...)`-style calls (the store's connection used directly) in `paths`."""
    found = []
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in ("execute", "executemany", "executescript")
                    and isinstance(node.func.value, ast.Attribute) and node.func.value.attr == "conn"):
                found.append(f"{path.relative_to(root)}:{node.lineno}")
    return found


def test_only_the_store_runs_sql_on_its_connection() -> None:
    """The import contract keeps sqlite3 in store/; this keeps the SQL there too: nothing else
    reaches through `store.conn` (a query that is needed becomes a Store method)."""
    outside = [p for p in (ROOT / "hybridctl").rglob("*.py") if "store" not in p.relative_to(ROOT).parts]
    assert _sql_calls(outside) == []


def test_the_sql_finder_finds_a_query_through_store_conn(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("def f(store):\n    return store.conn.execute('SELECT 1').fetchall()\n")
    assert _sql_calls([bad], tmp_path) == ["bad.py:2"]
