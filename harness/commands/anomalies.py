"""`harness anomalies`: findings from a training log (trainer_state.json, checkpoint dir, CSV, JSONL)."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import textwrap
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "anomalies",
        help="find training anomalies (NaN, collapse, divergence, overfitting, ...) in a loss log",
        description=(
            "Read a training log (a trainer_state.json, a checkpoint dir, an output dir with checkpoint-*/ (the latest "
            "complete checkpoint is read), or a CSV / JSONL of step logs) and report anomalies: NaN/inf, loss collapsing "
            "to 0, negative loss, no learning, spikes, divergence, gradient explosion, overfitting, memorisation, "
            "plateau, fluctuation. Exit code 1 if any finding is an error, 0 otherwise, 2 on unreadable input."
        ),
    )
    p.add_argument("path", type=Path, metavar="PATH", help="trainer_state.json, checkpoint or output directory, CSV or JSONL")
    p.add_argument("--json", action="store_true", help="print the findings as a JSON list of {kind, severity, step, message}")
    p.add_argument("--max-grad-norm", type=float, default=None, metavar="X",
                   help="the run's gradient clipping (max_grad_norm), when the log does not record it: grad norms far "
                        "above it are a finding")
    p.add_argument("--eval-size", type=int, default=None, metavar="N",
                   help="how many held-out rows each eval loss is a mean over (an adapter trained by the harness "
                        "records it): an eval-loss rise within that mean's noise is not reported as overfitting")


def _table(findings: list) -> str:
    width = shutil.get_terminal_size((120, 20)).columns
    head = ("kind", "severity", "step")
    rows = [(f.kind, f.severity, "-" if f.step is None else str(f.step)) for f in findings]
    w = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    indent = sum(w) + 2 * len(w)
    msg_width = max(40, width - indent)
    lines = ["  ".join(h.ljust(w[i]) for i, h in enumerate(head)) + "  message"]
    for r, f in zip(rows, findings):
        wrapped = textwrap.wrap(f.message, msg_width) or [""]
        lines.append("  ".join(c.ljust(w[i]) for i, c in enumerate(r)) + "  " + wrapped[0])
        lines += [" " * indent + cont for cont in wrapped[1:]]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    import math

    from harness.anomalies import detect, has_errors, read_log
    from harness.errors import UsageError

    if args.max_grad_norm is not None and not (math.isfinite(args.max_grad_norm) and args.max_grad_norm > 0):
        raise UsageError(f"--max-grad-norm {args.max_grad_norm!r} must be a positive number (the Trainer's default is 1.0)")
    if args.eval_size is not None and args.eval_size <= 0:
        raise UsageError(f"--eval-size {args.eval_size!r} must be a positive number of rows")
    log = read_log(args.path)
    findings = detect(log, max_grad_norm=args.max_grad_norm, eval_size=args.eval_size)
    if args.json:
        print(json.dumps([f.to_dict() for f in findings], indent=2))
    else:
        if log.note:
            print(f"{log.source}: {log.note}", file=sys.stderr)
        n_train = len(log.train_rows)
        n_eval = len(log.eval_rows)
        extra = f", {len(log.segments)} segments (restarts)" if len(log.segments) > 1 else ""
        rl = ", RL run (loss-shape rules skipped)" if log.is_rl else ""
        print(f"{log.source}: {n_train} train logs, {n_eval} eval logs{extra}{rl}", file=sys.stderr)
        if findings:
            print(_table(findings))
        else:
            print("no anomalies found")
    return 1 if has_errors(findings) else 0
