"""The rows the store holds, one dataclass per table, and the table each belongs to."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any


def cache_key(**parts: Any) -> str:
    """SHA-256 of the canonical JSON of ``parts`` (sorted keys): the identity of one result."""
    import hashlib

    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


@dataclass(frozen=True)
class RunInfo:
    kind: str
    command: str
    seed: int | None = None
    config: Mapping[str, Any] = field(default_factory=dict)
    run_id: str | None = None
    #: when the work began, if before the run is opened (a training run is stored after it trained);
    #: naive UTC "YYYY-MM-DD HH:MM:SS[.ffffff]"
    started_at: str | None = None
    #: the torch device the run's model ran on (``cpu``, ``cuda:0``); None: the provenance default
    #: (for callers that do not pass it yet, a ``device`` in ``config`` still counts)
    device: str | None = None

    def device_or(self, default: str) -> str:
        """The device recorded in ``runs.device``: ``device``, else ``config["device"]``, else ``default``."""
        legacy = self.config.get("device")
        return self.device or (str(legacy) if legacy else default)


@dataclass(frozen=True)
class BaseModelRow:
    base_model_id: str
    name: str
    path: str


@dataclass(frozen=True)
class AdapterRow:
    adapter_id: str
    base_model_id: str
    path: str
    config_json: str
    parent_adapter_id: str | None = None
    harness_json: str | None = None
    name: str | None = None


@dataclass(frozen=True)
class SuiteRow:
    suite_id: str
    name: str
    version: str
    path: str
    n_examples: int
    role: str | None = None
    headline: str | None = None
    #: JSON object metric -> higher_is_better
    directions_json: str | None = None
    #: generate | multiple_choice | loglikelihood
    kind: str | None = None


@dataclass(frozen=True)
class ExampleRow:
    suite_id: str
    example_id: str
    input: str
    target: str | None
    category: str | None
    #: comma-separated names of the fields cut to the suite's max_chars, or None
    truncated: str | None = None


@dataclass(frozen=True)
class GenerationRow:
    cache_key: str
    base_model_id: str
    adapter_id: str | None
    scale: float
    suite_id: str
    example_id: str
    prompt: str
    output: str | None
    settings_json: str
    n_prompt_tokens: int | None
    n_new_tokens: int | None
    error: str | None
    seconds: float | None
    #: cut by max_new_tokens before an end token or stop string
    truncated: bool = False
    #: hash of what changes the output alone (base, adapter, scale, prompt, settings, dtype)
    gen_key: str | None = None


@dataclass(frozen=True)
class ScoreRow:
    cache_key: str
    metric: str
    value: float | None
    reason: str | None
    scorer: str
    scorer_version: str

    def __post_init__(self) -> None:
        if self.value is not None and not math.isfinite(self.value):
            object.__setattr__(self, "reason", self.reason or f"non-finite value {self.value!r}")
            object.__setattr__(self, "value", None)


@dataclass(frozen=True)
class StepLogRow:
    adapter_id: str | None
    step: int
    epoch: float | None
    loss: float | None
    grad_norm: float | None
    learning_rate: float | None
    eval_loss: float | None


@dataclass(frozen=True)
class FindingRow:
    adapter_id: str | None
    kind: str
    severity: str
    step: int | None
    message: str


@dataclass(frozen=True)
class GateRow:
    gate: str
    metric: str
    observed: float | None
    threshold: float | None
    baseline: float | None
    passed: bool
    message: str
    #: the interval the verdict rests on (a paired bootstrap of the difference, a Wilson interval of a
    #: rate), and a test's p-value (exact McNemar, Holm-adjusted); None where the gate has none
    interval_low: float | None = None
    interval_high: float | None = None
    p_value: float | None = None
    #: the rule that decided it ("bound", "point"; "skip" for a release default opted out of) and the
    #: examples or pairs behind it
    rule: str | None = None
    n: int | None = None


@dataclass(frozen=True)
class CachedResult:
    output: str | None
    error: str | None
    scores: tuple[ScoreRow, ...]


# row type -> (table, owned by a run: the run_id column is added, sequenced: a per-run seq is added)
_TABLES: dict[type, tuple[str, bool, bool]] = {
    BaseModelRow: ("base_models", False, False),
    AdapterRow: ("adapters", False, False),
    SuiteRow: ("suites", False, False),
    ExampleRow: ("examples", False, False),
    GenerationRow: ("generations", True, False),
    ScoreRow: ("scores", False, False),
    StepLogRow: ("step_logs", True, True),
    FindingRow: ("findings", True, True),
    GateRow: ("gate_results", True, True),
}
_COLUMN_RENAMES = {"config_json": "config", "harness_json": "harness", "settings_json": "settings",
                   "directions_json": "directions"}


def _now() -> str:
    # Naive UTC, a format DuckDB's JSON reader parses as TIMESTAMP.
    return datetime.now(timezone.utc).replace(tzinfo=None).isoformat(sep=" ")
