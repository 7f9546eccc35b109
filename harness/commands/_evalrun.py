"""What the commands that evaluate (`eval`, `sweep`, `check`) share: their options, the request they
build from them for the job (``harness.jobs.evaluate``), and the lines they print about a finished run."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

from harness.commands._common import add_db_argument
from harness.evaluation.runner import DEFAULT_MAX_BATCH
from harness.jobs.evaluate import EvalRequest
from harness.models.base import DEFAULT_BASE


def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    """Options shared by `harness eval` and `harness sweep` (not --scale: each has its own form)."""
    p.add_argument("--base", default=DEFAULT_BASE, help="base model: 'smollm2-135m' (embedded) or a local model directory (default: %(default)s)")
    p.add_argument("--adapter", action="append", default=[], metavar="DIR", help="adapter directory (adapter_config.json + adapter_model.safetensors); repeatable")
    p.add_argument("--name", action="append", default=[], metavar="NAME",
                   help="display name of the adapter given at the same position (repeatable); labels are made unique "
                        "from the paths otherwise (a/final, b/final); never used as a key")
    p.add_argument("--suite", action="append", default=[], metavar="NAME|PATH", help="built-in suite name, suite directory or suite.yaml path; repeatable")
    p.add_argument("--task-format", default=None, metavar="FORMAT",
                   help="the task's answer format, for format leakage on general and leakage suites: JSON keys "
                        "(item,quantity), regex:PATTERN or labels:a|b|c (default: a task suite's format:, else "
                        "inferred from its targets, else from the adapters' harness.json)")
    add_limit_arguments(p)
    p.add_argument("--batch-size", type=int, default=16,
                   help="generation batch rows per model (default: %(default)s); the models of a sweep share batches "
                        "of this many rows for each of them, up to --max-batch")
    p.add_argument("--max-batch", type=int, default=DEFAULT_MAX_BATCH, metavar="ROWS",
                   help="the most rows a shared batch of several models holds (default: %(default)s; lower it if "
                        "a sweep runs out of memory)")
    p.add_argument("--flush-every", type=int, default=64, metavar="N",
                   help="make results durable every N examples (a killed run loses at most N; default: %(default)s)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if present, else cpu)")
    add_db_argument(p)
    p.add_argument("--report", type=Path, default=None, metavar="HTML", help="also write an HTML report of this run")
    p.add_argument("--allow-pickle", action="store_true", help="allow loading a base model stored as pickle (.bin) weights; only for files you trust")
    p.add_argument("--allow-base-mismatch", action="store_true",
                   help="evaluate an adapter on a base other than the one its harness.json records (a warning, not an error)")
    p.add_argument("--seed", type=int, default=0, help="seed recorded with the run (generation is greedy unless a suite samples)")


def add_limit_arguments(p: argparse.ArgumentParser) -> None:
    """--limit and --limit-per-suite (one or the other): how many examples of each suite, picked how."""
    g = p.add_mutually_exclusive_group()
    g.add_argument("--limit", type=int, default=None, metavar="N",
                   help="evaluate a stratified sample of N examples from each suite: taken round-robin across the "
                        "suite's categories (each category's in file order), not the first N rows; the same subset every run")
    g.add_argument("--limit-per-suite", type=int, default=None, metavar="N",
                   help="evaluate the first N examples of each suite, in file order, whatever their categories (as "
                        "lm-eval's --limit); the same N every run")


def eval_request(args: argparse.Namespace, scales: list[float], **extra: object) -> EvalRequest:
    """The job's request from the parsed options of `eval` or `sweep`."""
    return EvalRequest(
        suites=tuple(args.suite), adapters=tuple(args.adapter), names=tuple(args.name), base=args.base,
        scales=tuple(scales), task_format=args.task_format, limit=args.limit, limit_per_suite=args.limit_per_suite,
        batch_size=args.batch_size, max_batch=args.max_batch, flush_every=args.flush_every, device=args.device,
        db=args.db, report=args.report, gates=args.gates, apply_gates=not args.no_gates, allow_pickle=args.allow_pickle,
        allow_base_mismatch=args.allow_base_mismatch, seed=args.seed, command=shlex.join(["harness", *sys.argv[1:]]),
        progress_bar=sys.stderr.isatty(), **extra)  # type: ignore[arg-type]


def print_stats(run_id: str, stats: Any, model_loaded: bool) -> None:
    print(f"run {run_id}: {stats.generated} generated, {stats.cached} cached, "
          + (f"{stats.rescored} re-scored (no model work), " if stats.rescored else "")
          + f"{stats.errors} errors, {stats.seconds:.1f}s"
          + ("" if model_loaded else " (all cached: the model was not loaded)"), file=sys.stderr)


def errors_exit(run_id: str, stats: Any) -> int:
    """1 when any result errored (the completeness rule: errors allowed 0), with one line saying so."""
    if not stats.errors:
        return 0
    print(f"error: {stats.errors} of {stats.generated + stats.cached} results of run {run_id} errored "
          f"(first: {stats.first_error}); `harness results --run {run_id}` lists them; rerun to retry them", file=sys.stderr)
    return 1
