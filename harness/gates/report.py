"""What a check returns: ``GateResult`` (one gate's row, as stored), ``GateOutcome`` (a result with what a
person needs to read it: target, interval, p-value, worst examples), ``Example`` (one example behind a
verdict) and ``GateReport`` (every outcome of one check of one run, and the gates skipped).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

from harness.store import GateRow

if TYPE_CHECKING:
    from harness.analysis.stats import Interval

#: how an opted-out release default's reason starts (``GateReport.skipped``); such a skip is stored too
OPT_OUT = "opted out"

#: A gate's outcome is exactly the store's row, so results go into ``gate_results`` unchanged
#: (``run.add_gate_results([...])``): {gate, metric, observed, threshold, baseline, passed, message}.
GateResult = GateRow


@dataclass(frozen=True)
class Example:
    """One example behind a gate's verdict, worst first."""

    suite: str
    example_id: str
    input: str | None
    target: str | None
    output: str | None
    value: float | None
    baseline_value: float | None = None


@dataclass(frozen=True)
class GateOutcome:
    """A gate's result with what a person needs to read it: target, interval, p-value, worst examples."""

    result: GateResult
    kind: str
    target: str | None = None
    adapter_id: str | None = None
    scale: float | None = None
    suite: str | None = None
    interval: Interval | None = None
    p_value: float | None = None
    worst: tuple[Example, ...] = ()
    source: str = ""

    @property
    def passed(self) -> bool:
        return self.result.passed


@dataclass(frozen=True)
class GateReport:
    """Every gate of one check of one run; ``skipped`` are (gate, reason) with nothing to judge."""

    run_id: str
    outcomes: tuple[GateOutcome, ...]
    skipped: tuple[tuple[str, str], ...] = ()

    @property
    def results(self) -> list[GateResult]:
        return [o.result for o in self.outcomes]

    def rows(self) -> list[GateRow]:
        """The results as stored: each with its interval and p-value as numbers; then each gate the gates
        file opted out of (``rule`` "skip", ``passed`` NULL: it decides nothing, but the record shows it)."""
        judged = [dataclasses.replace(o.result, interval_low=o.interval.low if o.interval else None,
                                      interval_high=o.interval.high if o.interval else None, p_value=o.p_value)
                  for o in self.outcomes]
        opted = [GateRow(name, name, None, None, None, None, f"skip {name}: {why}", rule="skip")  # type: ignore[arg-type]
                 for name, why in self.skipped if why.startswith(OPT_OUT)]
        return judged + opted

    @property
    def failures(self) -> list[GateOutcome]:
        return [o for o in self.outcomes if not o.passed]

    @property
    def passed(self) -> bool:
        return bool(self.outcomes) and not self.failures
