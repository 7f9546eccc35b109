"""The train job: plan (every cheap check before the model loads) and run one training request, or a grid.

The recipe itself lives in ``harness.train`` (the top-level train/ folder): the run orchestration
(``harness.train.run``) and the named steps of one training (``harness.train.recipe``). This is the one
entry the command line, the demo and Python users call.
"""

from __future__ import annotations

from collections.abc import Callable

from harness.jobs.evaluate import log_to_stderr
from harness.train.run import TrainingOutcome, TrainingPlan, TrainRequest, plan_training, run_training

__all__ = ["TrainRequest", "TrainingOutcome", "TrainingPlan", "train"]


def train(req: TrainRequest, log: Callable[[str], None] = log_to_stderr) -> tuple[TrainingPlan, TrainingOutcome]:
    """Check the request (spec, overrides, grid, data, output directories) before the model loads, then
    train every point; the adapters and their records are written and stored. Returns the plan and outcome."""
    plan = plan_training(req)
    return plan, run_training(plan, req, log)
