"""`harness eval`: evaluate a base model and adapters (at one or more LoRA scales) on suites."""

from __future__ import annotations

import argparse
import math
import shlex
import sys
from pathlib import Path

from harness.commands._common import add_db_argument
from harness.errors import UsageError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluate adapters against their base model on suites",
        description=(
            "Evaluate the base model and each adapter (at each LoRA scale) on each suite. Results already in "
            "the store (same base, adapter, scale, prompt, settings and scorer versions) are reused, not regenerated."
        ),
    )
    p.add_argument("--base", default="smollm2-135m", help="base model: 'smollm2-135m' (embedded) or a local model directory (default: %(default)s)")
    p.add_argument("--adapter", action="append", default=[], metavar="DIR", help="adapter directory (adapter_config.json + adapter_model.safetensors); repeatable")
    p.add_argument("--name", action="append", default=[], metavar="NAME",
                   help="display name of the adapter given at the same position (repeatable); labels are made unique "
                        "from the paths otherwise (a/final, b/final); never used as a key")
    p.add_argument("--suite", action="append", default=[], metavar="NAME|PATH", help="built-in suite name, suite directory or suite.yaml path; repeatable")
    p.add_argument("--scale", type=float, action="append", default=None, metavar="S", help="LoRA scale multiplier, 0 = base model; repeatable (default: 1.0)")
    p.add_argument("--no-base", action="store_true", help="skip the base model (scale 0) rows")
    p.add_argument("--task-format", default=None, metavar="KEY,KEY",
                   help="the JSON keys of the task's answers, for format leakage on general and leakage suites "
                        "(default: from the run's task suite targets, else from the adapters' harness.json)")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N examples of each suite")
    p.add_argument("--batch-size", type=int, default=16, help="generation batch size (default: %(default)s)")
    p.add_argument("--flush-every", type=int, default=64, metavar="N",
                   help="make results durable every N examples (a killed run loses at most N; default: %(default)s)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if present, else cpu)")
    add_db_argument(p)
    p.add_argument("--report", type=Path, default=None, metavar="HTML", help="also write an HTML report of this run")
    p.add_argument("--allow-pickle", action="store_true", help="allow loading a base model stored as pickle (.bin) weights; only for files you trust")
    p.add_argument("--allow-base-mismatch", action="store_true",
                   help="evaluate an adapter on a base other than the one its harness.json records (a warning, not an error)")
    p.add_argument("--seed", type=int, default=0, help="seed recorded with the run (generation is greedy unless a suite samples)")
    gates = p.add_mutually_exclusive_group()
    gates.add_argument("--gates", type=Path, default=None, metavar="FILE",
                       help="project gates file applied with the suites' gates (default: ./harness.toml, or [tool.harness] "
                            "in ./pyproject.toml); a failed gate is exit 1")
    gates.add_argument("--no-gates", action="store_true", help="do not judge gates (an evaluation only)")


def run(args: argparse.Namespace) -> int:
    from harness import distributed

    # under a launcher every rank evaluates its share; they all exit with the main process's code
    return distributed.agree(_run(args))


def _run(args: argparse.Namespace) -> int | None:
    from harness import distributed
    from harness.adapters import inspect_adapter
    from harness.models import load_base, resolve_base
    from harness.runner import expand_targets, run_eval
    from harness.store import RunInfo, Store, default_db_path
    from harness.suites import load_suite
    from harness.summary import print_run_summary

    if not args.suite:
        raise UsageError("pass at least one --suite (a built-in name such as general-knowledge, or a suite.yaml path)")
    if args.flush_every <= 0 or args.batch_size <= 0:
        raise UsageError("--flush-every and --batch-size must be positive")
    if args.limit is not None and args.limit <= 0:
        raise UsageError("--limit must be a positive number of examples")
    scales = args.scale or [1.0]
    for sc in scales:
        if not math.isfinite(sc) or sc < 0:
            raise UsageError(f"--scale {sc!r}: a LoRA scale is a finite number >= 0 (0 = base model, 1 = as trained)")
    from harness.models import check_device

    check_device(args.device)
    if args.report is not None:
        from reports.render import check_out_path

        check_out_path(args.report)
    # Everything cheap is checked before the model loads: suites, adapters, base model files.
    suites = [load_suite(s) for s in args.suite]
    from harness.suites import load_examples

    examples = {s.name: load_examples(s, args.limit) for s in suites}  # data errors surface before the model loads
    if len(args.name) > len(args.adapter):
        raise UsageError(f"{len(args.name)} --name given for {len(args.adapter)} --adapter; give one name per adapter, in order")
    adapters = [inspect_adapter(a) for a in args.adapter]
    names = {a.adapter_id: n for a, n in zip(adapters, args.name)}
    if not adapters and args.no_base:
        raise UsageError("nothing to evaluate: --no-base given and no --adapter")
    from harness import taskformat

    keys, key_source = taskformat.resolve(suites, examples, adapters, args.task_format)
    suites = taskformat.with_leakage(suites, keys)  # a leakage suite with no known format is exit 2 here
    ref = resolve_base(args.base, allow_pickle=args.allow_pickle)
    from harness.adapters import check_base_identity, check_base_name

    warnings: list[str] = []
    for a in adapters:
        warning = check_base_identity(a, ref.model_id, ref.name, args.allow_base_mismatch)
        warnings.extend([warning] if warning else [])
        warnings.extend(a.warnings)
        name_warning = check_base_name(a, ref)
        warnings.extend([name_warning] if name_warning else [])
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    # The weights load only when something is left to generate (a fully cached re-run needs the
    # tokenizer alone: prompts are part of the cache key).
    store = Store(args.db or default_db_path())
    if distributed.is_main():  # under a launcher only the main process opens the database
        store.query("SELECT 1")  # a damaged or locked database is exit 5 now, before the tokenizer or model loads
    base = load_base(ref, device=distributed.device(args.device), lazy=True)
    targets = expand_targets(adapters, scales, include_base=not args.no_base)
    info = RunInfo(kind="eval", command=shlex.join(["harness", *sys.argv[1:]]), seed=args.seed,
                   config={"device": base.device, "base": args.base, "scales": scales, "suites": [s.name for s in suites],
                           "warnings": warnings, "batch_size": args.batch_size, "names": names,
                           "task_format": {"keys": list(keys), "source": key_source},
                           "scorers": {s.name: [_scorer_record(sc) for sc in s.scorers] for s in suites},
                           # what the cache key leaves out on purpose: results reused across these are
                           # the same results (greedy outputs do not depend on them, checked in tests)
                           "cache_key_excludes": ["batch_size", "flush_every", "device", "library versions"]})
    with store.run(info, ranks=True) as run_writer:
        stats = run_eval(base, targets, suites, run_writer, store, batch_size=args.batch_size, limit=args.limit,
                         task_format=",".join(keys) or None,
                         flush_every=args.flush_every, progress_bar=sys.stderr.isatty(), examples=examples,
                         log=lambda m: print(m, file=sys.stderr))
        run_id = run_writer.run_id
        gate_report = None
        if not distributed.is_main():
            return None  # every row of this rank is in the store (run_eval synced); the main process reports
        if not args.no_gates:
            from harness.gates import ProjectGates, evaluate_gates
            from harness.project import find_project_file, load_project

            gates_file = args.gates or find_project_file(Path.cwd())
            project_gates = load_project(gates_file).gates if gates_file else ProjectGates()
            run_writer.flush()  # cached results are buffered until a flush: the gates read the store
            gate_report = evaluate_gates(store, run_id, suites, project_gates=project_gates)
            run_writer.add_gate_results(gate_report.results)  # stored with the run, in its last shard
    print(f"run {run_id}: {stats.generated} generated, {stats.cached} cached, "
          + (f"{stats.rescored} re-scored (no model work), " if getattr(stats, "rescored", 0) else "")
          + f"{stats.errors} errors, {stats.seconds:.1f}s"
          + ("" if base.loaded else " (all cached: the model was not loaded)"), file=sys.stderr)
    print_run_summary(store, run_id)
    if args.report:
        from harness.comparison import build_report
        from reports.render import write_report

        print(f"report: {write_report(build_report(store, [run_id]), args.report)}")
    gates_failed = False
    from harness.gates import QUALITY_KINDS

    if gate_report is not None and (gate_report.failures or any(o.kind in QUALITY_KINDS for o in gate_report.outcomes)):
        from harness.commands.check import print_report

        print_report(gate_report)
        gates_failed = not gate_report.passed
    if stats.errors:
        # A run with errors is not a result to ship on: CI must see it (the completeness rule; errors
        # allowed: 0). The error rows are stored, and a rerun retries them.
        print(f"error: {stats.errors} of {stats.generated + stats.cached} results of run {run_id} errored "
              f"(first: {stats.first_error}); `harness results --run {run_id}` lists them; rerun to retry them",
              file=sys.stderr)
        return 1
    return 1 if gates_failed else 0


def _scorer_record(spec) -> dict:
    """name, version and arguments of one scorer, as stored with the run."""
    from harness.metrics import model_metric_names
    from harness.scorers import scorer_info

    version = "1" if spec.name in model_metric_names() else scorer_info(spec.name).version
    return {"name": spec.name, "version": version, "args": dict(spec.args)}
