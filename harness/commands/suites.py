"""`harness suites`: list the built-in suites, or check suites without loading any model."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "suites",
        help="list the built-in suites, or check suite files (no model loaded)",
        description=(
            "`harness suites list` shows the built-in suites with their role, headline metric and size. "
            "`harness suites check PATH...` checks suites as every command does before loading a model: the spec, the "
            "data, every template rendered against every example, every scorer built, the gates; all problems at once."
        ),
    )
    ss = p.add_subparsers(dest="action", metavar="ACTION", required=True, help="list: the built-in suites; check: suite files")
    ss.add_parser("list", help="the built-in suites with role, headline and size")
    c = ss.add_parser("check", help="check suite files or names; exit 2 listing every problem, 0 when all are fine")
    c.add_argument("suites", nargs="+", metavar="NAME|PATH", help="suite names, directories or suite.yaml files")


def run(args: argparse.Namespace) -> int:
    from harness.analysis.summary import format_table
    from harness.suites.spec import builtin_suites, check_suites

    if args.action == "list":
        suites, examples = check_suites(builtin_suites())
        rows = [[s.name, s.role, s.headline or "—", str(len(examples[s.name])), s.description.split(". ")[0][:70]]
                for s in suites]
        print(format_table(["suite", "role", "headline", "examples", "what it measures"], rows))
        return 0
    suites, examples = check_suites(args.suites)
    for s in suites:
        scorers = ", ".join(sc.name for sc in s.scorers) or "format_leakage of the run's task format"
        print(f"ok  {s.name} ({Path(s.path)}): role {s.role}, headline {s.headline}, {len(examples[s.name])} examples, "
              f"scorers: {scorers}, {len(s.gates)} gate(s)")
    return 0
