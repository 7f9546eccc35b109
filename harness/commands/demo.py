"""`harness demo`: the whole loop on the embedded base model, in a few minutes on a CPU."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from harness.models.base import DEFAULT_BASE


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="train order-task adapters, evaluate them against the base model, store and report",
        description=(
            "Run the whole loop on deterministic demo data: train LoRA adapters on an order-processing task "
            "(customer message in, order JSON out) — one plain and one with general replay data mixed in — "
            "evaluate base model and adapters on the held-out task and on general knowledge, write every "
            "result to DuckDB, print a summary read back from it, and write an HTML report."
        ),
    )
    p.add_argument("--quick", action="store_true", help="a smaller version (fewer examples, the plain adapter only; about 2 minutes on 2 idle CPU cores, 11 on a busy machine)")
    p.add_argument("--out", type=Path, default=Path("harness-demo"), help="output directory for the database, adapters and report (default: %(default)s)")
    p.add_argument("--base", default=DEFAULT_BASE, help="base model: 'smollm2-135m' (embedded) or a local model directory (default: %(default)s)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if present, else cpu)")


def run(args: argparse.Namespace) -> int:
    from harness.jobs.demo import run_demo
    from harness.util.extras import require

    require(("trl", "accelerate", "gguf"), "train,demo", "harness demo")

    return run_demo(args.out, args.quick, args.base, args.device, log=lambda m: print(m, file=sys.stderr))
