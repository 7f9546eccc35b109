"""Record a finished training run in the results store: the adapter row (with its parent, for
lineage) and one step-log row per logged step (loss, grad_norm, lr, eval_loss)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from train.recipe import TrainResult


def store_training(store: Any, result: TrainResult, name: str, command: str, config: Mapping[str, Any]) -> str:
    """Write ``result`` as one ``train`` run into ``store``; returns the run id.

    Only the store's public API is used (``Store.run``, ``add_adapter``, ``add_step_logs``,
    ``add_findings``).
    """
    from harness.adapters import inspect_adapter
    from harness.store import AdapterRow, FindingRow, RunInfo, StepLogRow

    info = inspect_adapter(result.adapter_dir)
    harness_json = json.dumps(info.harness, default=str) if info.harness is not None else None
    spec = (info.harness or {}).get("spec", {})
    with store.run(RunInfo(kind="train", command=command, seed=spec.get("seed"), config=dict(config),
                           started_at=_started(result))) as run:
        run.add_adapter(AdapterRow(
            adapter_id=info.adapter_id, base_model_id=result.base_model_id or "", path=str(info.path),
            config_json=json.dumps(info.config), parent_adapter_id=result.parent_adapter_id,
            harness_json=harness_json, name=name,
        ))
        run.add_step_logs(
            StepLogRow(info.adapter_id, int(s.get("step", 0)), _num(s.get("epoch")), _num(s.get("loss")),
                       _num(s.get("grad_norm")), _num(s.get("learning_rate")), _num(s.get("eval_loss")))
            for s in result.step_logs
        )
        run.add_findings(
            FindingRow(info.adapter_id, f.kind, f.severity, f.step, f.message) for f in result.findings
        )
        return run.run_id


def _started(result: TrainResult) -> str:
    """When training began (the run is stored after it ended): now minus the training's own seconds."""
    from datetime import datetime, timedelta, timezone

    began = datetime.now(timezone.utc) - timedelta(seconds=max(0.0, float(result.seconds or 0.0)))
    return began.replace(tzinfo=None).isoformat(sep=" ")


def _num(v: Any) -> float | None:
    # kept as logged (a NaN loss stays NaN, as the anomaly detectors expect); only non-numbers become NULL
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def store_stopped_training(store: Any, result: TrainResult, name: str, command: str, config: Mapping[str, Any]) -> str:
    """Record a run the anomaly check stopped: its step logs and findings, status 'stopped', no adapter."""
    from harness.store import FindingRow, RunInfo, StepLogRow

    with store.run(RunInfo(kind="train", command=command, config={**config, "name": name, "stop_reason": result.stop_reason},
                           started_at=_started(result))) as run:
        run.add_step_logs(
            StepLogRow(None, int(s.get("step", 0)), _num(s.get("epoch")), _num(s.get("loss")),
                       _num(s.get("grad_norm")), _num(s.get("learning_rate")), _num(s.get("eval_loss")))
            for s in result.step_logs
        )
        run.add_findings(FindingRow(None, f.kind, f.severity, f.step, f.message) for f in result.findings)
        run.final_status = "stopped"
        return run.run_id
