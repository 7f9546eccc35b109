"""What every gate evaluator reads: one run's per-example values (read once) and the context they are judged in."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from harness.gates.report import Example
from harness.gates.spec import ProjectGates

if TYPE_CHECKING:
    from harness.analysis.types import Comparison
    from harness.store import Store


@dataclass
class RunData:
    """One run's per-example values, read once."""

    values: dict[tuple, dict[str, float | None]] = field(default_factory=lambda: defaultdict(dict))
    outputs: dict[tuple, str | None] = field(default_factory=dict)
    texts: dict[tuple[str, str], tuple[str | None, str | None]] = field(default_factory=dict)
    n_examples: dict[str, int] = field(default_factory=dict)
    errors: dict[tuple, int] = field(default_factory=lambda: defaultdict(int))
    targets: set[tuple[str | None, float]] = field(default_factory=set)


def read_run(store: Store, run_id: str) -> RunData:
    d = RunData()
    for r in store.query("SELECT adapter_id, scale, suite_name, example_id, metric, value, input, target, output "
                         "FROM v_scores WHERE run_id = ?", [run_id]):
        t = (r["adapter_id"], float(r["scale"]) if r["adapter_id"] else 0.0)
        # keys built first: mypy 2.4 misreads d[(*t, x)] as Python 3.11's d[*t, x]
        metric_key, output_key = (*t, r["suite_name"], r["metric"]), (*t, r["suite_name"], r["example_id"])
        d.values[metric_key][r["example_id"]] = r["value"]
        d.outputs[output_key] = r["output"]
        d.texts[(r["suite_name"], r["example_id"])] = (r["input"], r["target"])
    for r in store.query(
            "SELECT g.adapter_id, g.scale, s.name AS suite, g.example_id, g.error FROM run_results rr "
            "JOIN generations g USING (cache_key) JOIN suites s ON s.suite_id = g.suite_id WHERE rr.run_id = ?", [run_id]):
        t = (r["adapter_id"], float(r["scale"]) if r["adapter_id"] else 0.0)
        d.targets.add(t)
        if r["error"] is not None:
            error_key = (*t, r["suite"])
            d.errors[error_key] += 1
    for r in store.query(
            "SELECT s.name AS suite, count(DISTINCT g.example_id) AS n FROM run_results rr JOIN generations g USING (cache_key) "
            "JOIN suites s ON s.suite_id = g.suite_id WHERE rr.run_id = ? GROUP BY s.name", [run_id]):
        d.n_examples[r["suite"]] = int(r["n"])
    return d


@dataclass(frozen=True)
class GateContext:
    store: Store
    run_id: str
    data: RunData
    comparison: Comparison
    labels: dict
    suites: dict
    project: ProjectGates
    baseline_id: str | None
    baseline_scale: float

    def label(self, t: tuple) -> str:
        return "base" if t[0] is None else self.labels.get(t, f"{t[0][:8]}@{t[1]:g}")

    def higher_is_better(self, suite: str, metric: str) -> bool:
        from harness.suites.types import higher_is_better, suite_directions

        s = self.suites.get(suite)
        return higher_is_better(metric, suite_directions(s) if s else None)

    def example(self, t: tuple, suite: str, ex: str, value: float | None, other: float | None = None) -> Example:
        inp, tgt = self.data.texts.get((suite, ex), (None, None))
        return Example(suite, ex, inp, tgt, self.data.outputs.get((*t, suite, ex)), value, other)
