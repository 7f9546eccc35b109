"""The house plan, checked (issue 27): the import graph of ``harness`` (with ``harness.train`` and
``harness.reports``, which are links to the top-level train/ and reports/) has no cycle and no import that
runs back up the data flow; the entry points hold no logic another entry point needs; nothing of ours can
be shadowed by a user's ``train.py``, ``reports/`` or ``suites/``, nor shadow a third-party package.

The graph is read from the source with ``ast`` (every import counts: module level, inside functions and
under ``TYPE_CHECKING``), so the test needs nothing installed beyond the standard library.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: The parts of the harness in the order the data flows (DESIGN.md's picture): a module may import its own
#: part and the parts before it, never one after it. A module belongs to the longest part that prefixes it.
FLOORS = (
    "harness._offline", "harness", "harness.errors", "harness.util", "harness.records",
    "harness.anomalies", "harness.store",
    "harness.models", "harness.generation", "harness.metrics", "harness.scorers", "harness.suites",
    "harness.evaluation", "harness.train",
    "harness.analysis", "harness.gates", "harness.reports",
    "harness.jobs",
    "harness.commands", "harness.pytest_plugin", "harness.cli", "harness.__main__",
)


def modules() -> dict[str, Path]:
    """Every module of the harness package by dotted name (links followed: harness/train, harness/reports)."""
    out: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(ROOT / "harness", followlinks=True):
        rel = Path(dirpath).relative_to(ROOT)
        if "builtin" in rel.parts or "__pycache__" in rel.parts:  # suite data, not code
            dirnames[:] = []
            continue
        for f in filenames:
            if f.endswith(".py"):
                parts = [*rel.parts, f[:-3]]
                if parts[-1] == "__init__":
                    parts.pop()
                out[".".join(parts)] = Path(dirpath) / f
    return out


def imports(name: str, path: Path, known: dict[str, Path]) -> Iterator[tuple[str, int]]:
    """(module of ours that ``name`` imports, line) for every import statement in the file."""
    is_pkg = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = name.split(".") if is_pkg else name.split(".")[:-1]
                base = ".".join(pkg[: len(pkg) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                yield t, node.lineno


def graph() -> tuple[dict[str, set[str]], dict[tuple[str, str], int]]:
    known = modules()
    edges: dict[str, set[str]] = {m: set() for m in known}
    lines: dict[tuple[str, str], int] = {}
    for m, p in known.items():
        for t, line in imports(m, p, known):
            edges[m].add(t)
            lines.setdefault((m, t), line)
    return edges, lines


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(edges[w]))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def floor(module: str) -> int:
    best = max((p for p in FLOORS if module == p or module.startswith(p + ".")), key=len)
    return FLOORS.index(best)


def test_the_tarjan_helper_finds_a_cycle_and_a_clean_graph_has_none():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    edges, lines = graph()
    found = cycles(edges)
    detail = [" <-> ".join(c) + ": " + ", ".join(f"{a} imports {b} (line {lines[(a, b)]})" for a in c for b in sorted(edges[a])
                                                  if b in c) for c in found]
    assert not found, "import cycles:\n" + "\n".join(detail)


def test_no_import_runs_back_up_the_data_flow():
    edges, lines = graph()
    up = [f"{m}:{lines[(m, t)]} imports {t} ({FLOORS[floor(t)]} comes after {FLOORS[floor(m)]})"
          for m, ts in sorted(edges.items()) for t in sorted(ts) if floor(t) > floor(m)]
    assert not up, "imports against the data flow (FLOORS in this file):\n" + "\n".join(up)


def test_every_module_has_a_floor_and_the_graph_covers_train_and_reports():
    known = modules()
    assert {"harness.train.recipe", "harness.train.kernels.apply", "harness.reports.render", "harness.jobs.check",
            "harness.evaluation.runner", "harness.analysis.sweep"} <= set(known)
    for m in known:
        floor(m)  # raises ValueError (max of nothing) for a module outside every part


def test_only_the_cli_imports_the_commands():
    edges, lines = graph()
    users = [f"{m}:{lines[(m, t)]} imports {t}" for m, ts in edges.items() for t in ts
             if t.startswith("harness.commands") and not (m == "harness.cli" or m.startswith("harness.commands"))]
    assert not users, "logic another entry point needs belongs in harness.jobs, not harness.commands:\n" + "\n".join(users)


def test_no_module_of_ours_is_importable_under_a_top_level_name_a_user_may_own():
    """train/, reports/ and suites/ stay in the repository, but nothing imports them by those names."""
    edges, lines = graph()
    known = modules()
    for m, p in known.items():
        tree = ast.parse(p.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            for n in names:
                assert n.split(".")[0] not in ("train", "reports", "suites"), f"{p}:{node.lineno}: imports {n}"


def _clashing_dir(tmp_path: Path) -> Path:
    d = tmp_path / "user-project"
    (d / "reports").mkdir(parents=True)
    (d / "suites").mkdir()
    (d / "train.py").write_text('raise SystemExit("the user\'s train.py ran")\n')
    (d / "reports" / "__init__.py").write_text('raise SystemExit("the user\'s reports package ran")\n')
    (d / "suites" / "__init__.py").write_text('raise SystemExit("the user\'s suites package ran")\n')
    return d


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_a_users_train_py_reports_and_suites_do_not_stand_in_for_ours(tmp_path, tiny_model_dir):
    clash, empty = _clashing_dir(tmp_path), tmp_path / "empty"
    empty.mkdir()
    harness = str(Path(sys.executable).parent / "harness")
    runs = {}
    for where in (clash, empty):
        help_ = _run([sys.executable, "-m", "harness", "train", "--help"], where)
        ev = _run([harness, "eval", "--base", str(tiny_model_dir), "--suite", "general-knowledge", "--limit", "2",
                   "--db", str(where / "h.duckdb")], where)
        runs[where] = (help_, ev)
    for help_, ev in runs.values():
        assert help_.returncode == 0, help_.stderr
        assert "usage: harness train" in help_.stdout
        assert "the user's" not in help_.stdout + help_.stderr + ev.stdout + ev.stderr
        assert "Traceback" not in ev.stderr
    assert runs[clash][0].stdout == runs[empty][0].stdout
    # the built-in suite's own gate judges a random tiny model (exit 1) the same way from both directories
    assert runs[clash][1].returncode == runs[empty][1].returncode
    # the same evaluation: the same summary table (run ids and timings aside)
    table = lambda out: [ln for ln in out.splitlines() if "|" in ln or "%" in ln]  # noqa: E731
    assert table(runs[clash][1].stdout) == table(runs[empty][1].stdout) != []


def test_no_benchmark_file_shadows_an_installed_package():
    """`python benchmarks/X.py` puts benchmarks/ first on sys.path: a file named like an installed package
    (benchmarks/kernels.py stood in for Hugging Face's ``kernels``) breaks every import of that package."""
    for f in sorted((ROOT / "benchmarks").glob("*.py")):
        spec = importlib.util.find_spec(f.stem)
        assert spec is None, f"benchmarks/{f.name} has the name of an installed module ({spec.origin}); rename it"
