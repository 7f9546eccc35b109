"""The demo recipe, top to bottom: base model → order-task adapters → evaluation → store → report.

It shows, measured, the problem the harness exists for: a LoRA adapter trained on a narrow task
(customer message in, order JSON out) becomes far better at the task than its base model and, at
the same time, answers general questions worse, often in the task's JSON format. A second adapter,
trained with a share of general "replay" data (the base model's own answers to general prompts),
shows what mixing buys.
"""

from __future__ import annotations

import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from harness.analysis.summary import print_run_summary
from harness.evaluation.runner import run_eval
from harness.evaluation.targets import expand_targets
from harness.jobs.demo_data import generate_orders, order_to_json
from harness.models.base import load_base, resolve_base
from harness.scorers import Example
from harness.store import RunInfo, Store
from harness.suites.spec import load_examples, load_suite, render_user_text

TRAIN_SEED = 1  # the held-out order-task suite was generated with another seed (see suites/order-task)


#: the demo's suites: the task, general knowledge (retention) and format leakage
DEMO_SUITES = ("order-task", "general-knowledge", "format-leakage")


@dataclass(frozen=True)
class DemoPlan:
    """Sizes of one demo run. ``quick`` trades precision of the figures for time."""

    n_train: int
    epochs: int
    learning_rate: float
    batch_size: int
    replay_share: float
    with_replay_adapter: bool
    #: examples of each suite: a stratified sample, the one `--limit N` takes, so `harness check --limit N`
    #: on the demo's database reads every row the demo stored
    limit: int
    #: the scales every adapter is swept at (scale 0, the base model, is always evaluated)
    scales: tuple[float, ...] = (1.0,)


FULL = DemoPlan(
    n_train=128, epochs=1, learning_rate=2e-3, batch_size=8, replay_share=0.25, with_replay_adapter=True,
    limit=48, scales=(0.1, 0.25, 0.5, 0.75, 1.0),
)
QUICK = DemoPlan(
    n_train=96, epochs=1, learning_rate=2e-3, batch_size=8, replay_share=0.25, with_replay_adapter=False,
    limit=16, scales=(0.5, 1.0),
)


class Phases:
    """Times each phase and prints it as it ends."""

    def __init__(self, log: Callable[[str], None]) -> None:
        self.log = log
        self.times: list[tuple[str, float]] = []
        self.t0 = time.perf_counter()

    def __call__(self, name: str, start: float) -> None:
        took = time.perf_counter() - start
        self.times.append((name, took))
        self.log(f"[{name}] {took:.1f}s")

    def table(self) -> str:
        total = time.perf_counter() - self.t0
        return "\n".join([f"  {n:<28}{t:7.1f}s" for n, t in self.times] + [f"  {'total':<28}{total:7.1f}s"])


def run_demo(out_dir: Path, quick: bool, base_name: str, device: str | None, log: Callable[[str], None]) -> int:
    from harness.train.recipe import train_adapter
    from harness.train.spec import TrainSpec

    plan = QUICK if quick else FULL
    out_dir.mkdir(parents=True, exist_ok=True)
    phases = Phases(log)
    store = Store(out_dir / "harness.duckdb")

    t = time.perf_counter()
    base = load_base(resolve_base(base_name), device=device)
    phases("load base model", t)

    t = time.perf_counter()
    order_suite = load_suite("order-task")
    orders = generate_orders(plan.n_train, seed=TRAIN_SEED)
    # Train on exactly the prompt the order-task suite renders, so evaluation sees the trained format.
    rows = [
        {"prompt": render_user_text(order_suite, Example(id=o.id, input=o.message)), "completion": order_to_json(o.order)}
        for o in orders
    ]
    phases("generate demo data", t)

    spec = TrainSpec(
        base=base_name, learning_rate=plan.learning_rate, num_train_epochs=plan.epochs,
        per_device_train_batch_size=plan.batch_size, seed=3407,
        warmup_ratio=0.0,  # a run this short cannot spare a step at learning rate 0
    )
    variants = [("order-plain", spec)]
    if plan.with_replay_adapter:
        variants.append(("order-replay", replace(spec, mix={"general": plan.replay_share})))
    adapters = []
    for name, s in variants:
        t = time.perf_counter()
        result = train_adapter(s, out_dir / "adapters" / name, examples=rows, base=base, log=log)
        phases(f"train {name} ({result.n_steps} steps)", t)
        _store_training(store, name, s, result)
        from harness.models.adapters import inspect_adapter

        adapters.append(inspect_adapter(result.adapter_dir))

    t = time.perf_counter()
    suites = [load_suite(n) for n in DEMO_SUITES]
    targets = expand_targets(adapters, list(plan.scales))  # a sweep: every scale shares the batches
    info = RunInfo(kind="demo", device=str(base.device), command=shlex.join(["harness", *sys.argv[1:]]), seed=3407,
                   config={"device": base.device, "quick": quick, "plan": plan.__dict__})
    examples = {s.name: load_examples(s, plan.limit) for s in suites}
    with store.run(info) as run:
        # One call for every suite: the run's whole expected count is declared before anything is
        # generated (`harness runs` shows a fixed count while it runs), and the adapters' self-checks
        # (scale 0 == base, scale 1 == plain PEFT load) run once.
        run_eval(base, targets, suites, run, store, examples=examples, log=log)
        run_id = run.run_id
        # the release gates judged at every scale once, stored with the run: the tables below, the report and
        # `harness check --recommended` pick the same scale from them
        from harness.analysis import build_comparison
        from harness.analysis.sweep import Limits
        from harness.jobs.sweep import release_blocked

        run.flush()
        blocked = release_blocked(store, run_id, suites, adapters, build_comparison(store, run_id), None, Limits())
        run.update_config(sweep={"min_retention": Limits().min_retention, "max_leakage": Limits().max_leakage,
                                 "blocked": blocked})
    phases("evaluate base + adapters", t)

    t = time.perf_counter()
    print()
    print(f"Results read back from {store.path} (run {run_id}):")
    comparison = print_run_summary(store, run_id)
    from harness.analysis.sweep import Limits, sweep_views
    from harness.reports.terminal import sweep_tables

    # the release limits and the scales the release gates blocked, as the report and `check --recommended` read them
    print(sweep_tables(sweep_views(comparison, [a.adapter_id for a in adapters], Limits(),
                                   {aid: {float(s): why for s, why in b.items()} for aid, b in blocked.items()})))
    phases("summary", t)

    t = time.perf_counter()
    checks, check_runs = release_checks(store.path, [out_dir / "adapters" / name for name, _ in variants], plan, base_name)
    print(checks)
    phases("release checks", t)

    t = time.perf_counter()
    from harness.analysis import build_report
    from harness.reports.render import write_report

    # written after the release checks, so its gates are theirs (before, the report's gates table showed the two
    # green self-checks of the sweep while the check failed most gates): every scale the run stored, the
    # adapters' training curves and findings, and each check's gates
    report = write_report(build_report(store, [run_id, *check_runs], title="adapter-harness demo"), out_dir / "report.html")
    phases("report", t)
    print(f"\nreport: {report}\ndatabase: {store.path}\nadapters: {out_dir / 'adapters'}")
    print("\nTime per phase:\n" + phases.table())
    return 0


def _store_training(store: Store, name: str, spec, result) -> None:
    """Record a training run (adapter, step logs, anomaly findings) in the store; print the findings."""
    from harness.train.record import store_training

    for f in result.findings:  # from the live anomaly check that watched the run
        print(f"  {f.severity}: {f.kind} at step {f.step}: {f.message}")
    store_training(store, result, name, f"harness demo (train {name})", {"spec": spec.to_dict(), "demo": True})


def release_checks(db: Path, adapter_dirs: list[Path], plan: DemoPlan, base_name: str) -> tuple[str, list[str]]:
    """`harness check` on each adapter, at the scale the sweep recommends and as trained (scale 1), with
    the release defaults (retention >= 0.95, leakage <= 0.02) and the suites' own gates. Every row is the
    demo's own (same examples, same settings): nothing is generated. Returns the lines to print, each
    check with the command that repeats it, and the checks' run ids (the report shows their gates)."""
    import io
    from contextlib import redirect_stdout

    from harness.errors import GateFailure
    from harness.gates import ProjectGates
    from harness.jobs.check import CheckRequest, run_check

    lines = ["", "Release checks (`harness check`, release defaults: retention >= 95% of the base's correct answers, "
             "leakage <= 2%, a task gain over the base; each decided on its one-sided 95% bound, so a sample too small "
             "to show a limit says \"insufficient evidence\"; served from the store):"]
    run_ids: list[str] = []
    for d in adapter_dirs:
        for recommended in (True, False):
            how = "--recommended" if recommended else "--scale 1"
            cmd = " ".join(["harness check --adapter", shlex.quote(str(d)), how, "--db", shlex.quote(str(db)),
                            *[f"--suite {s}" for s in DEMO_SUITES], f"--limit {plan.limit}"])
            req = CheckRequest(adapter=str(d), suites=DEMO_SUITES, project=ProjectGates(), base=base_name, db=db,
                               scale=None if recommended else 1.0, recommended=recommended, limit=plan.limit,
                               command=cmd)
            try:
                with redirect_stdout(io.StringIO()):
                    result = run_check(req)
            except GateFailure as exc:
                lines.append(f"  {d.name} {how}: exit {exc.exit_code}: {exc}")
                lines.append(f"    $ {cmd}")
                continue
            report, scale = result.report, result.context["scale"]
            run_ids.append(report.run_id)
            n = len(report.outcomes)
            if report.passed:
                lines.append(f"  {d.name} at {scale:g}{' (recommended)' if recommended else ''}: exit 0, {n} of {n} gates passed")
            else:
                lines.append(f"  {d.name} at {scale:g}{' (recommended)' if recommended else ''}: exit 1, "
                             f"{len(report.failures)} of {n} gates failed:")
                lines += [f"    FAIL {o.result.gate}: {o.result.message}" for o in report.failures]
            lines.append(f"    $ {cmd}")
    return "\n".join(lines), run_ids
