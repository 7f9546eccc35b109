"""The evaluate job: everything ``harness eval`` does between parsing its flags and printing, callable from
Python. The sweep job (``harness.jobs.sweep``) shares its set-up (``prepare``).

Everything cheap is checked before any model loads: the request, suites (every template rendered, every
scorer built), data, adapters (pre-flight), the base model's files, the task format, the gates file and
the database.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.errors import UsageError
from harness.evaluation.runner import DEFAULT_MAX_BATCH
from harness.models.base import DEFAULT_BASE

if TYPE_CHECKING:
    from harness.suites.spec import Limit


def log_to_stderr(line: str) -> None:
    """The default ``log`` of a job: one line on stderr (stdout carries the results)."""
    print(line, file=sys.stderr)


@dataclass(frozen=True)
class EvalRequest:
    """What to evaluate and how: the flags of ``harness eval`` / ``harness sweep`` as plain values."""

    suites: tuple[str, ...]
    adapters: tuple[str, ...] = ()
    #: display names, by position of ``adapters`` (never a key)
    names: tuple[str, ...] = ()
    base: str = DEFAULT_BASE
    scales: tuple[float, ...] = (1.0,)
    include_base: bool = True
    task_format: str | None = None
    limit: int | None = None
    limit_per_suite: int | None = None
    batch_size: int = 16
    max_batch: int = DEFAULT_MAX_BATCH
    flush_every: int = 64
    device: str | None = None
    db: Path | None = None
    #: checked before the run (the report itself is written by the caller)
    report: Path | None = None
    #: the project gates file (None: ./harness.toml or [tool.harness] when present)
    gates: Path | None = None
    apply_gates: bool = True
    allow_pickle: bool = False
    allow_base_mismatch: bool = False
    seed: int = 0
    command: str = "harness eval"
    progress_bar: bool = False


@dataclass
class EvalOutcome:
    """What an evaluation stored: its run, the counts, and the gate report (None when no gates were judged)."""

    run_id: str | None  # None on a launched job's other ranks: their share is stored, the main process reports
    stats: Any  # harness.evaluation.runner.EvalStats
    gate_report: Any
    store: Any
    base_loaded: bool


def example_limit(limit: int | None, limit_per_suite: int | None) -> Limit | None:
    """The parsed --limit / --limit-per-suite; a usage error unless positive."""
    from harness.suites.spec import Limit

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
    task_format: Any  # harness.records.TaskFormat | None: the run's task format (harness.suites.taskformat)
    key_source: str
    ref: Any
    warnings: list[str]
    store: Any
    base: Any
    config: dict[str, Any] = field(default_factory=dict)
    #: the project file's gates (``--gates FILE``, ./harness.toml or [tool.harness]); None with --no-gates
    project_gates: Any = None

    def run_info(self, kind: str, req: EvalRequest) -> Any:
        from harness.store import RunInfo

        return RunInfo(kind=kind, command=req.command, seed=req.seed, config=self.config, device=str(self.base.device))


def prepare(req: EvalRequest, scales: list[float], *, need_adapter: bool = False,
            log: Callable[[str], None] = log_to_stderr) -> Prepared:
    """Validate everything, then open the store and the base lazily (weights load only if needed)."""
    from harness.models.adapters import inspect_for_base
    from harness.models.base import check_device, load_base
    from harness.store import Store, default_db_path
    from harness.suites import taskformat
    from harness.suites.spec import check_suites

    if not req.suites:
        raise UsageError("pass at least one --suite (a built-in name such as general-knowledge, or a suite.yaml path)")
    if req.flush_every <= 0 or req.batch_size <= 0 or req.max_batch <= 0:
        raise UsageError("--flush-every, --batch-size and --max-batch must be positive")
    limit = example_limit(req.limit, req.limit_per_suite)
    if need_adapter and not req.adapters:
        raise UsageError("pass at least one --adapter DIR to sweep")
    check_scales(scales)
    check_device(req.device)
    if req.report is not None:
        from harness.reports.render import check_out_path

        check_out_path(req.report)
    suites, examples = check_suites(req.suites, limit)  # every problem of every suite, at once
    project_gates = load_project_gates(req.gates, req.apply_gates)  # a mistake in the gates file shows now, not after the run
    if len(req.names) > len(req.adapters):
        raise UsageError(f"{len(req.names)} --name given for {len(req.adapters)} --adapter; give one name per adapter, in order")
    # every adapter check (files, config, targets, shapes against the base's headers, a partial adapter)
    # before any weights load or PEFT sees the base
    adapters, ref = inspect_for_base(req.adapters, req.base, req.allow_pickle, req.allow_base_mismatch)
    names = {a.adapter_id: n for a, n in zip(adapters, req.names)}
    fmt, key_source = taskformat.resolve(suites, examples, adapters, req.task_format)
    suites = taskformat.with_leakage(suites, fmt)  # a leakage suite with no known format is exit 2 here
    log(f"task format: {taskformat.describe(fmt)} ({key_source})")
    warnings = adapter_warnings(adapters, ref, req.allow_base_mismatch, log)
    from harness.util import distributed

    store = Store(req.db or default_db_path())
    if distributed.is_main():  # under a launcher only the main process opens the database
        store.queries.ping()  # a damaged or locked database is exit 5 now, before the tokenizer or model loads
    # The weights load only when something is left to generate (a fully cached re-run needs the
    # tokenizer alone: prompts are part of the cache key).
    base = load_base(ref, device=distributed.device(req.device), lazy=True)
    config = {"device": base.device, "base": req.base, "scales": scales, "suites": [s.name for s in suites],
              "warnings": warnings, "batch_size": req.batch_size, "max_batch": req.max_batch, "names": names,
              "task_format": taskformat.to_config(fmt, key_source),
              "limit": {"n": limit.n, "how": limit.how} if limit else None,
              "scorers": {s.name: [scorer_record(sc) for sc in s.scorers] for s in suites},
              # what the cache key leaves out on purpose: results reused across these are the same results
              # (greedy outputs do not depend on them, checked in tests)
              "cache_key_excludes": ["batch_size", "max_batch", "flush_every", "device", "library versions"]}
    if distributed.is_distributed():
        config["world_size"] = distributed.world_size()
    return Prepared(suites, examples, adapters, names, fmt, key_source, ref, warnings, store, base, config, project_gates)


def load_project_gates(gates_file: Path | None, apply: bool = True) -> Any:
    """The gates of ``gates_file``, else of ./harness.toml or ./pyproject.toml's [tool.harness] (none: no
    project gates); None when gates are not applied (``--no-gates``). A bad file is exit 2 here, before any
    model work."""
    if not apply:
        return None
    from harness.gates import ProjectGates
    from harness.gates.project import find_project_file, load_project

    path = gates_file or find_project_file(Path.cwd())
    return load_project(path).gates if path else ProjectGates()


def adapter_warnings(adapters: list[Any], ref: Any, allow_mismatch: bool,
                     log: Callable[[str], None] = log_to_stderr) -> list[str]:
    """One line per adapter problem that is not an error (another base recorded with --allow-base-mismatch,
    unknown config keys, a base_model_name_or_path naming another model); logged here, stored with the run."""
    from harness.models.adapters import check_base_identity, check_base_name

    warnings: list[str] = []
    for a in adapters:
        for w in (check_base_identity(a, ref.model_id, ref.name, allow_mismatch), *a.warnings, check_base_name(a, ref)):
            if w:
                warnings.append(w)
    for w in warnings:
        log(f"warning: {w}")
    for a in adapters:
        if a.chat_template is not None:  # trained with a changed template: asked in it (the base in its own)
            log(f"note: {a.path.name} is asked in its own chat template (saved beside it; it differs from the base's)")
    return warnings


def scorer_record(spec: Any) -> dict:
    """name, version and arguments of one scorer, as stored with the run."""
    from harness.metrics import model_metric_names
    from harness.scorers import scorer_info
    from harness.scorers.likelihood import VERSION as LIKELIHOOD_VERSION
    from harness.suites.types import LIKELIHOOD_METRICS

    version = ("1" if spec.name in model_metric_names() else LIKELIHOOD_VERSION if spec.name in LIKELIHOOD_METRICS
               else scorer_info(spec.name).version)
    return {"name": spec.name, "version": version, "args": dict(spec.args)}


def evaluate(req: EvalRequest, log: Callable[[str], None] = log_to_stderr) -> EvalOutcome:
    """Evaluate the base model (unless ``include_base`` is off) and every adapter at every scale on the
    suites, reusing every stored result; judge the suites' and project gates when ``apply_gates``."""
    from harness.evaluation.runner import run_eval
    from harness.evaluation.targets import expand_targets
    from harness.util import distributed

    if not req.adapters and not req.include_base:
        raise UsageError("nothing to evaluate: --no-base given and no --adapter")
    scales = list(req.scales)
    # Everything cheap is checked before the model loads: flags, suites, data, adapters, base files, store.
    prep = prepare(req, scales, log=log)
    store, base = prep.store, prep.base
    targets = expand_targets(prep.adapters, scales, include_base=req.include_base)
    with store.run(prep.run_info("eval", req), ranks=True) as run_writer:
        stats = run_eval(base, targets, prep.suites, run_writer, store, batch_size=req.batch_size, max_batch=req.max_batch,
                         task_format=prep.task_format, flush_every=req.flush_every,
                         progress_bar=req.progress_bar, examples=prep.examples, log=log)
        run_id = run_writer.run_id
        gate_report = None
        if not distributed.is_main():
            return EvalOutcome(None, stats, None, store, base.loaded)  # the main process reports
        if prep.project_gates is not None:
            from harness.gates import evaluate_gates

            run_writer.flush()  # cached results are buffered until a flush: the gates read the store
            gate_report = evaluate_gates(store, run_id, prep.suites, project_gates=prep.project_gates)
            run_writer.add_gate_results(gate_report.rows())  # stored with the run, in its last shard
    return EvalOutcome(run_id, stats, gate_report, store, base.loaded)
