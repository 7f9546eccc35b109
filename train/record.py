"""Training runs in the results store: the adapter row (with its parent, for lineage), one step-log
row per logged step (loss, grad_norm, lr, eval_loss) and the anomaly findings.

``TrainingRun`` is the record of a run as it trains: its row is written when training starts
(status ``running``, so ``harness runs`` lists it at once) and its status says how it ended:
``complete`` (an adapter was written), ``stopped`` (by the live anomaly check), ``interrupted``
(SIGTERM or Ctrl-C) or ``failed`` (an error). A process killed outright leaves ``running``, which
``harness runs`` shows as interrupted once the process is gone. ``store_training`` records a run
after the fact (the demo). Only the store's public API is used.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from contextlib import suppress
from typing import Any

from harness.records import StepLogEntry
from harness.train.recipe import TrainResult


class TrainingRun:
    """One training run's store record, open from its start to its end (the main process's alone)."""

    def __init__(self, store: Any, name: str, command: str, config: Mapping[str, Any], *, seed: int | None = None,
                 device: str | None = None, started_at: str | None = None) -> None:
        from harness.store import RunInfo, RunWriter

        self.name = name
        self.writer = RunWriter(store, RunInfo(kind="train", command=command, seed=seed, config={**config, "name": name},
                                               device=device, started_at=started_at))
        self.run_id: str = self.writer.run_id
        self.status: str | None = None  # set once the run has ended

    def start(self) -> str:
        """Write the run's row (status running); returns the run id."""
        self.writer.start()
        return self.run_id

    def finished(self, result: TrainResult) -> str:
        """An adapter was written: its row, its step logs and findings; status complete."""
        from harness.models.adapters import inspect_adapter
        from harness.store import AdapterRow

        info = inspect_adapter(result.adapter_dir)
        self.writer.add_adapter(AdapterRow(
            adapter_id=info.adapter_id, base_model_id=result.base_model_id or "", path=str(info.path),
            config_json=_json(info.config), parent_adapter_id=info.record.parent_adapter_id if info.record else None,
            harness_json=info.record.to_json() if info.record is not None else None, name=self.name,
        ))
        self._add_steps(info.adapter_id, result.step_logs, result.findings)
        return self._end("complete")

    def stopped(self, result: TrainResult) -> str:
        """The anomaly check stopped the run: its step logs and findings, no adapter; status stopped."""
        self._add_steps(None, result.step_logs, result.findings)
        return self._end("stopped")

    def interrupted(self, steps: Sequence[StepLogEntry] = ()) -> str:
        """Stopped on request (SIGTERM, Ctrl-C) before an adapter was written; the steps logged so far."""
        self._add_steps(None, steps, ())
        return self._end("interrupted")

    def failed(self, steps: Sequence[StepLogEntry] = ()) -> str:
        """An error ended the run. Never raises: the error that ended it is the one to report."""
        with suppress(Exception):
            self._add_steps(None, steps, ())
            self._end("failed")
        return self.run_id

    def _add_steps(self, adapter_id: str | None, steps: Iterable[StepLogEntry], findings: Iterable[Any]) -> None:
        from harness.store import FindingRow, StepLogRow

        self.writer.add_step_logs(StepLogRow(adapter_id, s.step, s.epoch, s.loss, s.grad_norm, s.learning_rate,
                                             s.eval_loss) for s in steps)
        self.writer.add_findings(FindingRow(adapter_id, f.kind, f.severity, f.step, f.message) for f in findings)

    def _end(self, status: str) -> str:
        self.writer.finish(status)
        self.status = status
        return self.run_id


def store_training(store: Any, result: TrainResult, name: str, command: str, config: Mapping[str, Any]) -> str:
    """Record a finished training run after the fact, as one ``train`` run; returns the run id."""
    from harness.models.adapters import inspect_adapter

    info = inspect_adapter(result.adapter_dir)
    run = TrainingRun(store, name, command, config, seed=info.record.seed if info.record else None,
                      started_at=_started(result))
    run.start()
    try:
        return run.finished(result)
    except BaseException:
        run.failed()
        raise


def store_stopped_training(store: Any, result: TrainResult, name: str, command: str, config: Mapping[str, Any]) -> str:
    """Record, after the fact, a run the anomaly check stopped: step logs and findings, status stopped."""
    run = TrainingRun(store, name, command, {**config, "stop_reason": result.stop_reason}, started_at=_started(result))
    run.start()
    return run.stopped(result)


def _started(result: TrainResult) -> str:
    """When training began (the run is stored after it ended): now minus the training's own seconds."""
    from datetime import datetime, timedelta, timezone

    began = datetime.now(timezone.utc) - timedelta(seconds=max(0.0, float(result.seconds or 0.0)))
    return began.replace(tzinfo=None).isoformat(sep=" ")


def _json(obj: Any) -> str:
    import json

    return json.dumps(obj)
