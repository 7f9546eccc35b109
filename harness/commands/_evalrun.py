"""The set-up every command that evaluates shares (`eval`, `sweep`): options, pre-flight, run record.

Everything cheap is checked before any model loads: flags, suites (every template rendered, every
scorer built), data, adapters (pre-flight), the base model's files, the task format, the database.
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.commands._common import add_db_argument
from harness.errors import UsageError
from harness.runner import DEFAULT_MAX_BATCH

if TYPE_CHECKING:
    from harness.suites import Limit


def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    """Options shared by `harness eval` and `harness sweep` (not --scale: each has its own form)."""
    p.add_argument("--base", default="smollm2-135m", help="base model: 'smollm2-135m' (embedded) or a local model directory (default: %(default)s)")
    p.add_argument("--adapter", action="append", default=[], metavar="DIR", help="adapter directory (adapter_config.json + adapter_model.safetensors); repeatable")
    p.add_argument("--name", action="append", default=[], metavar="NAME",
                   help="display name of the adapter given at the same position (repeatable); labels are made unique "
                        "from the paths otherwise (a/final, b/final); never used as a key")
    p.add_argument("--suite", action="append", default=[], metavar="NAME|PATH", help="built-in suite name, suite directory or suite.yaml path; repeatable")
    p.add_argument("--task-format", default=None, metavar="KEY,KEY",
                   help="the JSON keys of the task's answers, for format leakage on general and leakage suites "
                        "(default: from the run's task suite targets, else from the adapters' harness.json)")
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


def example_limit(limit: int | None, limit_per_suite: int | None) -> Limit | None:
    """The parsed --limit / --limit-per-suite; a usage error unless positive."""
    from harness.suites import Limit

    for flag, n in (("--limit", limit), ("--limit-per-suite", limit_per_suite)):
        if n is not None and n <= 0:
            raise UsageError(f"{flag} {n}: must be a positive number of examples")
    if limit is not None:
        return Limit(limit, "stratified")
    return Limit(limit_per_suite, "first") if limit_per_suite is not None else None


def check_scales(scales: list[float]) -> list[float]:
    for sc in scales:
        if not math.isfinite(sc) or sc < 0:
            raise UsageError(f"scale {sc!r}: a LoRA scale is a finite number >= 0 (0 = base model, 1 = as trained)")
    return scales


@dataclass
class Prepared:
    suites: list[Any]
    examples: dict[str, list[Any]]
    adapters: list[Any]
    names: dict[str, str]
    keys: tuple[str, ...]
    key_source: str
    ref: Any
    warnings: list[str]
    store: Any
    base: Any
    config: dict[str, Any] = field(default_factory=dict)
    #: the project file's gates (``--gates FILE``, ./harness.toml or [tool.harness]); None with --no-gates
    project_gates: Any = None

    def run_info(self, kind: str, args: argparse.Namespace) -> Any:
        from harness.store import RunInfo

        return RunInfo(kind=kind, command=shlex.join(["harness", *sys.argv[1:]]), seed=args.seed, config=self.config,
                       device=str(self.base.device))


def prepare(args: argparse.Namespace, scales: list[float], *, need_adapter: bool = False) -> Prepared:
    """Validate everything, then open the store and the base lazily (weights load only if needed)."""
    from harness import taskformat
    from harness.adapters import inspect_adapter
    from harness.models import check_device, load_base, resolve_base
    from harness.store import Store, default_db_path
    from harness.suites import check_suites

    if not args.suite:
        raise UsageError("pass at least one --suite (a built-in name such as general-knowledge, or a suite.yaml path)")
    if args.flush_every <= 0 or args.batch_size <= 0 or args.max_batch <= 0:
        raise UsageError("--flush-every, --batch-size and --max-batch must be positive")
    limit = example_limit(args.limit, args.limit_per_suite)
    if need_adapter and not args.adapter:
        raise UsageError("pass at least one --adapter DIR to sweep")
    check_scales(scales)
    check_device(args.device)
    if getattr(args, "report", None) is not None:
        from reports.render import check_out_path

        check_out_path(args.report)
    suites, examples = check_suites(args.suite, limit)  # every problem of every suite, at once
    project_gates = load_project_gates(args)  # a mistake in the gates file shows now, not after the run
    if len(args.name) > len(args.adapter):
        raise UsageError(f"{len(args.name)} --name given for {len(args.adapter)} --adapter; give one name per adapter, in order")
    adapters = [inspect_adapter(a) for a in args.adapter]
    names = {a.adapter_id: n for a, n in zip(adapters, args.name)}
    keys, key_source = taskformat.resolve(suites, examples, adapters, args.task_format)
    suites = taskformat.with_leakage(suites, keys)  # a leakage suite with no known format is exit 2 here
    ref = resolve_base(args.base, allow_pickle=args.allow_pickle)
    warnings = adapter_warnings(adapters, ref, args.allow_base_mismatch)
    from harness import distributed

    store = Store(args.db or default_db_path())
    if distributed.is_main():  # under a launcher only the main process opens the database
        store.queries.ping()  # a damaged or locked database is exit 5 now, before the tokenizer or model loads
    # The weights load only when something is left to generate (a fully cached re-run needs the
    # tokenizer alone: prompts are part of the cache key).
    base = load_base(ref, device=distributed.device(args.device), lazy=True)
    config = {"device": base.device, "base": args.base, "scales": scales, "suites": [s.name for s in suites],
              "warnings": warnings, "batch_size": args.batch_size, "max_batch": args.max_batch, "names": names,
              "task_format": {"keys": list(keys), "source": key_source},
              "limit": {"n": limit.n, "how": limit.how} if limit else None,
              "scorers": {s.name: [scorer_record(sc) for sc in s.scorers] for s in suites},
              # what the cache key leaves out on purpose: results reused across these are the same results
              # (greedy outputs do not depend on them, checked in tests)
              "cache_key_excludes": ["batch_size", "max_batch", "flush_every", "device", "library versions"]}
    if distributed.is_distributed():
        config["world_size"] = distributed.world_size()
    return Prepared(suites, examples, adapters, names, keys, key_source, ref, warnings, store, base, config, project_gates)


def load_project_gates(args: argparse.Namespace) -> Any:
    """The gates of ``--gates FILE``, else of ./harness.toml or ./pyproject.toml's [tool.harness] (none: no
    project gates); None with ``--no-gates``. A bad file is exit 2 here, before any model work."""
    if getattr(args, "no_gates", True):
        return None
    from harness.gates import ProjectGates
    from harness.project import find_project_file, load_project

    gates_file = args.gates or find_project_file(Path.cwd())
    return load_project(gates_file).gates if gates_file else ProjectGates()


def adapter_warnings(adapters: list[Any], ref: Any, allow_mismatch: bool) -> list[str]:
    """One line per adapter problem that is not an error (another base recorded with --allow-base-mismatch,
    unknown config keys, a base_model_name_or_path naming another model); printed here, stored with the run."""
    from harness.adapters import check_base_identity, check_base_name

    warnings: list[str] = []
    for a in adapters:
        for w in (check_base_identity(a, ref.model_id, ref.name, allow_mismatch), *a.warnings, check_base_name(a, ref)):
            if w:
                warnings.append(w)
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    return warnings


def scorer_record(spec: Any) -> dict:
    """name, version and arguments of one scorer, as stored with the run."""
    from harness.metrics import model_metric_names
    from harness.scorers import scorer_info

    version = "1" if spec.name in model_metric_names() else scorer_info(spec.name).version
    return {"name": spec.name, "version": version, "args": dict(spec.args)}


def print_stats(run_id: str, stats: Any, base: Any) -> None:
    print(f"run {run_id}: {stats.generated} generated, {stats.cached} cached, "
          + (f"{stats.rescored} re-scored (no model work), " if stats.rescored else "")
          + f"{stats.errors} errors, {stats.seconds:.1f}s"
          + ("" if base.loaded else " (all cached: the model was not loaded)"), file=sys.stderr)


def errors_exit(run_id: str, stats: Any) -> int:
    """1 when any result errored (the completeness rule: errors allowed 0), with one line saying so."""
    if not stats.errors:
        return 0
    print(f"error: {stats.errors} of {stats.generated + stats.cached} results of run {run_id} errored "
          f"(first: {stats.first_error}); `harness results --run {run_id}` lists them; rerun to retry them", file=sys.stderr)
    return 1
