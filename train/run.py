"""A training command's work: one adapter or a grid of them, each point a store run of its own.

``plan_training`` checks everything cheap before the model loads (spec, overrides, grid, parent
adapter, output directories, data files, target modules); ``run_training`` loads the base once and
trains every point: a point already trained is skipped on ``--resume``, each point resumes from its
own checkpoints, and each point's run is registered in the store when it starts and marked at its
end (``train/record.py``). SIGTERM (``SaveAndStop``) ends the grid after the point in training has
saved a checkpoint; Ctrl-C and errors end it at once, with the point's run marked so.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import TrainingStopped, UsageError
from harness.train.grid import GridPoint, expand, parse_grid
from harness.train.recipe import TrainResult
from harness.train.spec import TrainSpec, load_spec

#: LoRA shape fields: a continued adapter keeps its parent's, so a grid over them is refused
SHAPE_FIELDS = frozenset({"r", "lora_alpha", "target_modules", "init_lora_weights", "use_dora", "use_rslora", "bias",
                          "lora_dropout"})


@dataclass(frozen=True)
class TrainRequest:
    """What the user asked for, parsed (the command's flags, no argparse)."""

    spec_path: Path
    overrides: Mapping[str, Any]
    grid: Sequence[str] = ()
    name: str | None = None
    out: Path | None = None
    force: bool = False
    resume: bool = False
    from_adapter: Path | None = None
    device: str | None = None
    db: Path | None = None
    command: str = "harness train"


@dataclass(frozen=True)
class PlannedPoint:
    name: str
    point: GridPoint
    spec: TrainSpec
    out: Path


@dataclass(frozen=True)
class TrainingPlan:
    spec: TrainSpec
    grid_keys: tuple[str, ...]
    points: tuple[PlannedPoint, ...]
    parent: Any  # the parent adapter's AdapterInfo, or None


@dataclass
class TrainedPoint:
    name: str
    point: GridPoint
    result: TrainResult
    run_id: str | None


@dataclass
class TrainingOutcome:
    """The points trained; ``interrupted``: the point a SIGTERM stopped (after saving its checkpoint)."""

    trained: list[TrainedPoint] = field(default_factory=list)
    interrupted: TrainedPoint | None = None
    signal_name: str | None = None

    @property
    def exit_code(self) -> int:
        if self.interrupted is None:
            return 0
        # 128 + SIGTERM, the shell's convention (FAULTS.md 30): a scheduler sees the job was stopped,
        # and the checkpoint it saved is complete and marked.
        return 143 if self.signal_name == "SIGTERM" else 130


def plan_training(req: TrainRequest) -> TrainingPlan:
    """Every point's spec and directory, with everything checked that can be before the model loads.

    Raises:
        UsageError: a grid over base or data, or over LoRA shape with a parent; an output directory
            that already holds an adapter (without --force or --resume); a bad device.
        InputError: a bad spec, override or data file; target modules the base does not have.
    """
    from harness.models.adapters import check_target_modules_names, inspect_adapter
    from harness.models.base import check_device, module_names, resolve_base
    from harness.train.data import load_rows, map_fields, normalize_row

    spec = load_spec(req.spec_path, dict(req.overrides))
    grid = parse_grid(req.grid)
    if {"base", "data"} & set(grid):
        raise UsageError("--grid over base or data is not supported; run one train command per base or data set")
    if req.from_adapter and SHAPE_FIELDS & set(grid):
        raise UsageError(f"--grid over {', '.join(sorted(SHAPE_FIELDS & set(grid)))} with --from-adapter: a continued "
                         "adapter keeps its parent's LoRA shape; grid over optimiser fields (learning_rate, max_steps, "
                         "...) instead")
    name = req.name or req.spec_path.stem
    out = req.out or Path("adapters") / (name if not grid else "")
    points = []
    for p in expand(grid) if grid else [GridPoint("", {})]:
        point_name = f"{name}-{p.suffix}" if p.suffix else name
        points.append(PlannedPoint(point_name, p, load_spec(req.spec_path, {**req.overrides, **p.overrides}),
                                   out / point_name if grid else out))
    parent = inspect_adapter(req.from_adapter) if req.from_adapter else None
    if not req.resume and not req.force:
        for pp in points:
            if any((pp.out / f).exists() for f in ("adapter_model.safetensors", "adapter_config.json", "harness.json")):
                raise UsageError(f"{pp.out} already holds an adapter; pass --out another directory, --force to replace "
                                 "it, or --resume to continue its run")
    check_device(req.device)
    for path, fields in sorted({(str(pp.spec.data), tuple(sorted(pp.spec.data_fields.items())))
                                for pp in points if pp.spec.data}):
        # the data is read and checked (format, bad values, shape of every row) before the model loads
        for i, row in enumerate(map_fields(load_rows(path), dict(fields), path)):
            normalize_row(row, f"{path} row {i + 1}")
    ref = resolve_base(spec.base)
    names = module_names(ref)  # from the safetensors headers, before the model loads
    if req.from_adapter is not None:
        parent = inspect_adapter(req.from_adapter, base=ref)  # the parent fits this base, before the model loads
    if parent is None:
        for pp in points:
            check_target_modules_names(pp.spec.target_modules, names, f"training spec {req.spec_path}")
    return TrainingPlan(spec, tuple(grid), tuple(points), parent)


def run_training(plan: TrainingPlan, req: TrainRequest, log: Callable[[str], None]) -> TrainingOutcome:
    """Load the base once and train every point of ``plan`` in order; each point is one store run.

    Raises:
        TrainingStopped: the anomaly check stopped a point (its run is stored as stopped; the message
            names it). Other errors and Ctrl-C propagate once the point's run is marked failed or
            interrupted.
    """
    from harness.models.base import load_base, resolve_base
    from harness.store import Store, default_db_path
    from harness.train.checkpoints import SaveAndStop
    from harness.util import distributed

    base = load_base(resolve_base(plan.spec.base), device=distributed.device(req.device))
    store = Store(req.db or default_db_path())
    stopper = SaveAndStop()
    stopper.install()
    outcome = TrainingOutcome()
    try:
        for pp in plan.points:
            if plan.grid_keys and req.resume and distributed.broadcast(finished(pp.out)):
                log(f"{pp.name}: already trained in {pp.out}, skipped")
                continue
            log(f"{pp.name}: training into {pp.out}")
            done = train_point(pp, plan, req, base, store, stopper, log)
            if done.result.interrupted:
                outcome.interrupted, outcome.signal_name = done, stopper.signal_name
                return outcome
            outcome.trained.append(done)
    finally:
        stopper.uninstall()
    return outcome


def train_point(pp: PlannedPoint, plan: TrainingPlan, req: TrainRequest, base: Any, store: Any, stopper: Any,
                log: Callable[[str], None]) -> TrainedPoint:
    """Train one point as one store run: registered before training starts, marked when it ends."""
    from harness.train.recipe import train_adapter
    from harness.train.record import TrainingRun
    from harness.util import distributed

    main = distributed.is_main()
    resume = req.resume and (not plan.grid_keys or (pp.out / "checkpoints").is_dir())
    config: dict[str, Any] = {"spec": pp.spec.to_dict(), "device": base.device, "grid_point": dict(pp.point.overrides)}
    if distributed.is_distributed():
        config["world_size"] = distributed.world_size()
    # the main process alone writes the run (every rank trains)
    run = TrainingRun(store, pp.name, req.command, config, seed=pp.spec.seed, device=str(base.device)) if main else None
    if run is not None:
        run.start()
    steps = StepCollector()
    try:
        result = train_adapter(pp.spec, pp.out, base=base, log=log, callbacks=[steps.callback()],
                               from_adapter=plan.parent.path if plan.parent else None, resume=resume, stopper=stopper)
    except TrainingStopped as exc:
        if run is None:
            raise  # every rank stops at the same step (the logs they judge are reduced over ranks)
        run.stopped(exc.result)  # type: ignore[arg-type]  # the recipe raises it with its TrainResult
        raise TrainingStopped(f"{exc} (step logs and findings: store run {run.run_id})") from None
    except KeyboardInterrupt:
        if run is not None:
            run.interrupted(steps.entries())
        raise
    except BaseException:
        if run is not None:
            run.failed(steps.entries())
        raise
    if run is None:
        return TrainedPoint(pp.name, pp.point, result, None)
    if result.interrupted:
        run.interrupted(result.step_logs)
    else:
        run.finished(result)
        assert result.adapter_id is not None  # None only for an interrupted run
        log(f"{pp.name}: adapter {result.adapter_id[:12]} written to {result.adapter_dir} (store run {run.run_id})")
    return TrainedPoint(pp.name, pp.point, result, run.run_id)


class StepCollector:
    """Keeps the Trainer's state, so the steps logged so far can be stored when a run ends early."""

    def __init__(self) -> None:
        self._state: Any = None

    def callback(self) -> Any:
        from transformers import TrainerCallback

        owner = self

        class _Collect(TrainerCallback):
            def on_train_begin(self, args, state, control, **kwargs):
                owner._state = state

        return _Collect()

    def entries(self) -> list[Any]:
        from harness.records import StepLogEntry

        history = getattr(self._state, "log_history", None) or []
        return [StepLogEntry.from_trainer(s) for s in history if "loss" in s or "eval_loss" in s]


def finished(adapter_dir: Path) -> bool:
    """A point trained to its end: its weights and its record are there."""
    return (adapter_dir / "adapter_model.safetensors").is_file() and (adapter_dir / "harness.json").is_file()
