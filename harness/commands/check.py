"""`harness check`: the release gate for CI. Evaluate what the store lacks, judge every gate, exit 0 or 1.

One adapter at one scale (``--scale``, or ``--recommended``: the scale ``harness sweep`` recommends from
the stored sweep), against the base model and optionally a ``--baseline`` adapter. Every failure is
printed (not only the first); a Markdown summary (``$GITHUB_STEP_SUMMARY`` and/or ``--summary``),
JUnit XML (``--junit``) and JSON (``--json``) are written for CI. Exit codes as DESIGN.md: 0 every gate
passed, 1 a gate failed, 2 usage or input, 3 incompatible, 4 refused for safety, 5 storage.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from harness.commands._common import add_db_argument
from harness.commands._evalrun import add_limit_arguments
from harness.errors import GateFailure, UsageError

DEFAULT_BASE = "smollm2-135m"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "check",
        help="judge an adapter's gates for CI (exit 0 pass, 1 a gate failed)",
        description=(
            "Evaluate an adapter at one scale (and the base model, and a baseline adapter) on the suites, "
            "reusing every stored result, then judge the suites' gates and the project file's "
            "(harness.toml or [tool.harness] in pyproject.toml). Exit 0 when every gate passes, 1 when one fails."
        ),
    )
    p.add_argument("--adapter", required=True, metavar="DIR", help="the adapter being released")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--scale", type=float, default=None, metavar="S", help="LoRA scale to judge (default: 1.0)")
    which.add_argument("--recommended", action="store_true",
                       help="judge the scale `harness sweep` recommends, from the sweep stored for this adapter")
    p.add_argument("--baseline", default=None, metavar="DIR", help="the adapter released before: regressions are judged against it")
    p.add_argument("--baseline-scale", type=float, default=1.0, metavar="S", help="the baseline's scale (default: %(default)s)")
    p.add_argument("--gates", type=Path, default=None, metavar="FILE",
                   help="project gates file (default: ./harness.toml, or [tool.harness] in ./pyproject.toml)")
    p.add_argument("--suite", action="append", default=[], metavar="NAME|PATH",
                   help="suite to evaluate; repeatable (default: the project file's suites)")
    p.add_argument("--base", default=None, help=f"base model (default: the project file's, else {DEFAULT_BASE})")
    p.add_argument("--task-format", default=None, metavar="KEY,KEY", help="the JSON keys of the task's answers, for format leakage")
    add_limit_arguments(p)
    p.add_argument("--batch-size", type=int, default=16, help="generation batch size (default: %(default)s)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if present, else cpu)")
    add_db_argument(p)
    p.add_argument("--summary", type=Path, default=None, metavar="FILE", help="write the Markdown summary here too")
    p.add_argument("--junit", type=Path, default=None, metavar="FILE", help="write JUnit XML (one test case per gate)")
    p.add_argument("--json", type=Path, default=None, metavar="FILE", help="write every gate result as JSON")
    p.add_argument("--allow-pickle", action="store_true", help="allow a base model stored as pickle (.bin) weights; only files you trust")
    p.add_argument("--allow-base-mismatch", action="store_true",
                   help="evaluate an adapter on a base other than the one its harness.json records")


@dataclass(frozen=True)
class CheckRequest:
    """What one check evaluates and judges (parsed flags, or the pytest plugin's options)."""

    adapter: str
    suites: tuple[str, ...]
    project: Any  # harness.gates.ProjectGates
    base: str = DEFAULT_BASE
    db: Path | None = None
    scale: float | None = None
    recommended: bool = False
    baseline: str | None = None
    baseline_scale: float = 1.0
    gates_file: str | None = None
    task_format: str | None = None
    limit: int | None = None  # --limit: a stratified sample of each suite
    limit_per_suite: int | None = None  # --limit-per-suite: the first N of each suite
    batch_size: int = 16
    device: str | None = None
    allow_pickle: bool = False
    allow_base_mismatch: bool = False
    command: str = "harness check"


@dataclass(frozen=True)
class CheckResult:
    report: Any  # harness.gates.GateReport
    context: dict
    stats: Any  # harness.runner.EvalStats


def run(args: argparse.Namespace) -> int:
    from harness.gates import ProjectGates
    from harness.project import find_project_file, load_project

    for out in (args.summary, args.junit, args.json):
        if out is not None and not out.parent.is_dir():
            raise UsageError(f"cannot write {out}: directory {out.parent} does not exist")
    gates_file = args.gates or find_project_file(Path.cwd())
    project = load_project(gates_file) if gates_file else None
    req = CheckRequest(
        adapter=args.adapter, suites=tuple(args.suite or (project.suites if project else ())),
        project=project.gates if project else ProjectGates(),
        base=args.base or (project.base if project and project.base else DEFAULT_BASE), db=args.db, scale=args.scale,
        recommended=args.recommended, baseline=args.baseline, baseline_scale=args.baseline_scale,
        gates_file=str(gates_file) if gates_file else None, task_format=args.task_format, limit=args.limit,
        limit_per_suite=args.limit_per_suite,
        batch_size=args.batch_size, device=args.device, allow_pickle=args.allow_pickle,
        allow_base_mismatch=args.allow_base_mismatch, command=shlex.join(["harness", *sys.argv[1:]]))
    from harness import distributed

    result = run_check(req)
    if result.report is None:  # another rank of a launched job: its share is stored; the main process judges
        return distributed.agree(None)
    return distributed.agree(_finish(args, result))


def _finish(args: argparse.Namespace, result: CheckResult) -> int:
    report, context = result.report, result.context
    print_report(report)
    md = markdown_summary(report, context)
    step_summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if step_summary:
        with open(step_summary, "a", encoding="utf-8") as f:
            f.write(md + "\n")
    if args.summary:
        args.summary.write_text(md + "\n", encoding="utf-8")
    if args.junit:
        write_junit(report, args.junit)
    if args.json:
        args.json.write_text(json.dumps(report_json(report, context), indent=2, default=str) + "\n", encoding="utf-8")
    return 0 if report.passed else 1


def run_check(req: CheckRequest, plan: Sequence[Any] | None = None, require_gates: bool = True) -> CheckResult:
    """Evaluate what the store lacks (base, adapter at its scale, baseline), then judge the gates
    (``plan``: these planned gates, else every gate of the suites and the project). The gate results
    are stored with the run."""
    from harness import taskformat
    from harness.adapters import inspect_adapter
    from harness.gates import evaluate_gates
    from harness.models import check_device, load_base, resolve_base
    from harness.runner import Target, run_eval
    from harness.store import RunInfo, Store, default_db_path
    from harness.suites import load_examples, load_suite

    for sc in (req.scale, req.baseline_scale):
        if sc is not None and (not math.isfinite(sc) or sc <= 0):
            raise UsageError(f"scale {sc!r}: judge an adapter at a finite scale > 0 (scale 0 is the base model)")
    if req.batch_size <= 0:
        raise UsageError("--batch-size must be positive")
    from harness.commands._evalrun import adapter_warnings, example_limit

    limit = example_limit(req.limit, req.limit_per_suite)
    check_device(req.device)
    # Everything cheap is checked before the model loads: suites, data, adapters, base files, database.
    if not req.suites:
        raise UsageError("no suites to check: pass --suite, or list `suites = [...]` in harness.toml")
    suites = [load_suite(s) for s in req.suites]
    examples = {s.name: load_examples(s, limit) for s in suites}
    adapter = inspect_adapter(req.adapter)
    baseline = inspect_adapter(req.baseline) if req.baseline else None
    if baseline is not None and baseline.adapter_id == adapter.adapter_id:
        raise UsageError(f"baseline {req.baseline} is the same adapter as {req.adapter} (same hash)")
    keys, key_source = taskformat.resolve(suites, examples, [a for a in (adapter, baseline) if a], req.task_format)
    suites = taskformat.with_leakage(suites, keys)
    project = release_defaults(req.project, retention=any(s.role == "general" for s in suites),
                               leakage=bool(keys) and any(s.role in ("general", "leakage") for s in suites))
    ref = resolve_base(req.base, allow_pickle=req.allow_pickle)
    warnings = adapter_warnings([a for a in (adapter, baseline) if a is not None], ref, req.allow_base_mismatch)
    db = Path(req.db or default_db_path())
    if req.recommended and not db.exists():
        raise UsageError(f"--recommended: no results database at {db}; run `harness sweep --adapter {req.adapter}` first")
    from harness import distributed

    store = Store(db)
    main = distributed.is_main()  # under a launcher only the main process opens the database
    if main:
        store.queries.ping()  # a damaged or locked database is exit 5 now, before the model loads
    scale = distributed.broadcast(recommended_scale(store, adapter.adapter_id, project, req.adapter)
                                  if req.recommended and main else (req.scale or 1.0))
    base = load_base(ref, device=distributed.device(req.device), lazy=True)
    targets = [Target(None, 0.0), Target(adapter, scale)] + ([Target(baseline, req.baseline_scale)] if baseline else [])
    info = RunInfo(kind="check", command=req.command, device=str(base.device),
                   config={"device": base.device, "base": req.base, "scales": [scale], "suites": [s.name for s in suites],
                           "warnings": warnings, "batch_size": req.batch_size, "gates_file": req.gates_file,
                           "adapter_id": adapter.adapter_id, "baseline_id": baseline.adapter_id if baseline else None,
                           "baseline_scale": req.baseline_scale if baseline else None,
                           "task_format": {"keys": list(keys), "source": key_source},
                           "limit": {"n": limit.n, "how": limit.how} if limit else None})
    with store.run(info, ranks=True) as writer:
        stats = run_eval(base, targets, suites, writer, store, batch_size=req.batch_size,
                         task_format=",".join(keys) or None, examples=examples, log=lambda m: print(m, file=sys.stderr))
        if not main:
            return CheckResult(None, {}, stats)  # this rank's rows are stored (run_eval synced)
        writer.flush()  # cached results are buffered until a flush: the gates read the store
        report = evaluate_gates(store, writer.run_id, suites, adapter_id=adapter.adapter_id, scale=scale,
                                baseline_adapter_id=baseline.adapter_id if baseline else None,
                                baseline_scale=req.baseline_scale, project_gates=project, plan=plan,
                                require_gates=require_gates)
        writer.add_gate_results(report.rows())
    print(f"run {report.run_id}: {stats.generated} generated, {stats.cached} cached, {stats.errors} errors", file=sys.stderr)
    context = {"adapter": str(req.adapter), "adapter_id": adapter.adapter_id, "scale": scale,
               "baseline": str(req.baseline) if baseline else None, "baseline_id": baseline.adapter_id if baseline else None,
               "baseline_scale": req.baseline_scale if baseline else None, "base_model_id": ref.model_id,
               "db": str(db)}
    return CheckResult(report, context, stats)


def release_defaults(gates: Any, retention: bool, leakage: bool) -> Any:
    """A release check gates retention and leakage even where the project file does not: at the limits a
    sweep recommends with (``harness.sweep``: retention >= 0.95 of the base's correct answers, leakage
    <= 0.02), each where the check can measure it (a general suite; a known task format and a general or
    leakage suite). A project file's own limits win; eval and sweep apply only the files' gates."""
    import dataclasses

    from harness.sweep import MAX_LEAKAGE, MIN_RETENTION

    filled = {k: v for k, v, on in (("min_retention", MIN_RETENTION, retention), ("max_leakage", MAX_LEAKAGE, leakage))
              if on and getattr(gates, k) is None}
    if not filled:
        return gates
    return dataclasses.replace(gates, **filled, source=f"{gates.source} + release defaults ({', '.join(filled)})")


def recommended_scale(store: Any, adapter_id: str, pg: Any, adapter_path: str) -> float:
    """The scale ``harness.sweep.recommend`` picks from the newest stored sweep of this adapter (a run with
    it at two or more non-zero scales), under the project's retention and leakage limits."""
    from harness.comparison import build_comparison
    from harness.sweep import MAX_LEAKAGE, MIN_RETENTION, curve, recommend

    run_id = store.queries.newest_sweep_run_id(adapter_id)
    if run_id is None:
        raise UsageError(f"--recommended: {store.path} holds no sweep of adapter {adapter_path} over several scales; run "
                         f"`harness sweep --adapter {adapter_path}` (or `harness eval --adapter {adapter_path} --scale 0.5 "
                         "--scale 1 ...`) first")
    c = build_comparison(store, run_id, samples_per_suite=0)
    rec = recommend(curve(c, adapter_id),
                    MIN_RETENTION if pg.min_retention is None else pg.min_retention,
                    MAX_LEAKAGE if pg.max_leakage is None else pg.max_leakage)
    if rec.scale is None:
        raise GateFailure(f"no recommended scale for {adapter_path} (sweep run {run_id}): {rec.sentence}")
    print(f"recommended scale (sweep run {run_id}): {rec.sentence}", file=sys.stderr)
    return rec.scale


# -- output: terminal, Markdown, JUnit, JSON ---------------------------------------------------------

def print_report(report: Any, out: Any = None) -> None:
    """Every gate on stdout (PASS / FAIL / skip), then every failure again on stderr."""
    out = out or sys.stdout
    for o in report.outcomes:
        print(f"{'PASS' if o.passed else 'FAIL'}  {o.result.gate}: {o.result.message}", file=out)
    for name, reason in report.skipped:
        print(f"skip  {name}: {reason}", file=out)
    fails = report.failures
    n = len(report.outcomes)
    print(f"gates: {n - len(fails)} of {n} passed" + (f", {len(fails)} failed" if fails else ""), file=out)
    for o in fails:
        print(f"gate failed: {o.result.gate}: {o.result.message}", file=sys.stderr)
        for w in o.worst:
            print(f"    {w.suite}/{w.example_id}: {_short(w.output)!r} (score {_num(w.value)}"
                  + (f", baseline {_num(w.baseline_value)}" if w.baseline_value is not None else "") + ")", file=sys.stderr)


def _num(v: float | None) -> str:
    return "—" if v is None else f"{v:.4g}"


def _short(text: str | None, n: int = 80) -> str:
    text = "" if text is None else " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


def _md(text: str) -> str:
    """Text safe inside a Markdown table cell (model outputs are hostile: no HTML, no pipes, one line)."""
    import html

    return html.escape(" ".join(str(text).split())).replace("|", "\\|")


def markdown_summary(report: Any, context: dict) -> str:
    status = "passed" if report.passed else f"FAILED ({len(report.failures)} gate(s))"
    lines = [f"## adapter-harness check: {status}", "",
             f"adapter `{_md(context['adapter'])}` (`{context['adapter_id'][:12]}`) at scale {context['scale']:g}, "
             f"run `{report.run_id}`" + (f"; baseline `{_md(context['baseline'])}` (`{context['baseline_id'][:12]}`)"
                                          if context.get("baseline") else ""), "",
             "| | gate | metric | observed | threshold | baseline | interval | sentence |",
             "|---|---|---|---|---|---|---|---|"]
    for o in sorted(report.outcomes, key=lambda o: o.passed):
        r = o.result
        iv = f"{o.interval.low:.4g} – {o.interval.high:.4g}" if o.interval else ""
        lines.append(f"| {'✅' if r.passed else '❌'} | {_md(r.gate)} | {_md(r.metric)} | {_num(r.observed)} | "
                     f"{_num(r.threshold)} | {_num(r.baseline)} | {iv} | {_md(r.message)} |")
    for name, reason in report.skipped:
        lines.append(f"| ⏭️ | {_md(name)} | | | | | | {_md(reason)} |")
    worst = [(o, w) for o in report.failures for w in o.worst]
    if worst:
        lines += ["", "### Worst examples of the failed gates", "", "| gate | example | output | score | baseline |", "|---|---|---|---|---|"]
        lines += [f"| {_md(o.result.gate)} | {_md(w.suite)}/{_md(w.example_id)} | {_md(_short(w.output))} | {_num(w.value)} | "
                  f"{_num(w.baseline_value)} |" for o, w in worst]
    return "\n".join(lines)


def write_junit(report: Any, path: Path) -> None:
    """One test case per gate (name: gate@scale), a <failure> with the sentence for each failed one."""
    import xml.etree.ElementTree as ET

    n, fails = len(report.outcomes), len(report.failures)
    root = ET.Element("testsuites", name="adapter-harness", tests=str(n + len(report.skipped)), failures=str(fails))
    suite = ET.SubElement(root, "testsuite", name="harness check", tests=str(n + len(report.skipped)), failures=str(fails),
                          errors="0", skipped=str(len(report.skipped)))
    for o in report.outcomes:
        name = o.result.gate + (f"@{o.scale:g}" if o.scale is not None else "")
        case = ET.SubElement(suite, "testcase", classname=f"harness.gates.{o.kind}", name=name, time="0")
        if not o.passed:
            body = [o.result.message] + [f"{w.suite}/{w.example_id}: {_short(w.output)!r} (score {_num(w.value)})" for w in o.worst]
            ET.SubElement(case, "failure", message=o.result.message).text = "\n".join(body)
        else:
            ET.SubElement(case, "system-out").text = o.result.message
    for name, reason in report.skipped:
        case = ET.SubElement(suite, "testcase", classname="harness.gates.skipped", name=name, time="0")
        ET.SubElement(case, "skipped", message=reason)
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)


def report_json(report: Any, context: dict) -> dict:
    return {
        "format_version": 1, "run_id": report.run_id, "passed": report.passed, **context,
        "gates": [{**asdict(o.result), "kind": o.kind, "target": o.target, "scale": o.scale, "suite": o.suite,
                   "interval": asdict(o.interval) if o.interval else None, "p_value": o.p_value,
                   "worst": [asdict(w) for w in o.worst]} for o in report.outcomes],
        "skipped": [{"gate": g, "reason": r} for g, r in report.skipped],
    }
