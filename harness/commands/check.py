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
import os
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

from harness.commands._common import add_db_argument
from harness.commands._evalrun import add_limit_arguments
from harness.errors import HarnessError, UsageError
from harness.jobs.check import CheckRequest, CheckResult, run_check
from harness.models.base import DEFAULT_BASE
from harness.reports.gates import markdown_summary, print_report, report_json, write_junit


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
    p.add_argument("--task-format", default=None, metavar="FORMAT",
                   help="the task's answer format, for format leakage: JSON keys (item,quantity), regex:PATTERN or "
                        "labels:a|b|c (default: a task suite's format:, else inferred from its targets)")
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


def run(args: argparse.Namespace) -> int:
    from harness.gates import ProjectGates
    from harness.gates.project import find_project_file, load_project

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
    from harness.util import distributed

    try:
        result = run_check(req)
    except HarnessError as exc:
        # CI reads these files: an errored check says so in each (exit code and message), never leaves them absent
        _write_error(args, exc.exit_code, str(exc))
        raise
    if result.report is None:  # another rank of a launched job: its share is stored; the main process judges
        return distributed.agree(None)
    return distributed.agree(_finish(args, result))


def _write_outputs(args: argparse.Namespace, md: str, write_junit_to: Callable[[Path], None], data: dict) -> None:
    """The CI files of one check, whatever its outcome: the step summary (appended), --summary, --junit, --json."""
    step_summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if step_summary:
        with open(step_summary, "a", encoding="utf-8") as f:
            f.write(md + "\n")
    if args.summary:
        args.summary.write_text(md + "\n", encoding="utf-8")
    if args.junit:
        write_junit_to(args.junit)
    if args.json:
        args.json.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")


def _write_error(args: argparse.Namespace, code: int, message: str) -> None:
    from harness.reports.gates import error_json, error_markdown, write_error_junit

    _write_outputs(args, error_markdown(code, message), lambda path: write_error_junit(code, message, path),
                   error_json(code, message))


def _finish(args: argparse.Namespace, result: CheckResult) -> int:
    report, context = result.report, result.context
    print_report(report)
    _write_outputs(args, markdown_summary(report, context), lambda path: write_junit(report, path),
                   report_json(report, context))
    return 0 if report.passed else 1
