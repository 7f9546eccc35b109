"""The typed ``Comparison`` of one run: per (target, suite, metric) aggregates, retention, categories.

Plain frozen records: nothing here reads the store, so ``reports/`` and ``harness.analysis.sweep`` import them
without DuckDB. ``harness/analysis/build.py`` fills them from the store.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

ROLE_ORDER = ("task", "general", "leakage", "reference")


@dataclass(frozen=True)
class SuiteInfo:
    """What a suite measures, as it declared it: role, headline metric, metric directions."""

    name: str
    role: str
    headline: str | None
    directions: tuple[tuple[str, bool], ...] = ()
    #: generate | multiple_choice | loglikelihood: a general suite of a likelihood kind measures knowledge, one
    #: that generates measures behaviour
    kind: str = "generate"

    @property
    def likelihood(self) -> bool:
        return self.kind != "generate"

    def higher_is_better(self, metric: str) -> bool:
        from harness.suites.types import higher_is_better

        return higher_is_better(metric, dict(self.directions))

    @property
    def leakage_metric(self) -> str | None:
        """The metric that counts as format leakage in this suite: a ``leakage`` suite's own headline when it is
        lower-is-better (a user's regex for their task's format counts, issue 32), else ``format_leakage`` (added
        to every general and leakage suite for the run's task format); None for other roles."""
        if self.role == "leakage" and self.headline and not self.higher_is_better(self.headline):
            return self.headline
        return "format_leakage" if self.role in ("general", "leakage") else None


@dataclass(frozen=True)
class Cell:
    """One (target, suite, metric) aggregate: mean over scored examples, with counts."""

    target: str
    adapter_id: str | None
    scale: float
    suite: str
    metric: str
    mean: float | None
    n: int
    n_scored: int
    #: answers cut by max_new_tokens (they may be incomplete, and a cut number can match a wrong alias)
    n_truncated: int = 0
    higher_is_better: bool = True


@dataclass(frozen=True)
class Retention:
    target: str
    suite: str
    metric: str
    base_correct: int
    kept: int
    retention: float | None


@dataclass(frozen=True)
class CategoryCell:
    target: str
    suite: str
    category: str
    metric: str
    mean: float | None
    n: int


@dataclass(frozen=True)
class Sample:
    suite: str
    example_id: str
    input: str
    target: str | None
    outputs: tuple[tuple[str, str | None, float | None], ...]  # (target label, output, headline score)


@dataclass(frozen=True)
class Comparison:
    title: str
    run_id: str
    base_model: str
    targets: tuple[str, ...]
    cells: tuple[Cell, ...]
    retention: tuple[Retention, ...]
    categories: tuple[CategoryCell, ...]
    samples: tuple[Sample, ...]
    provenance: tuple[tuple[str, str], ...]
    suites: tuple[SuiteInfo, ...] = ()

    def suite(self, name: str) -> SuiteInfo | None:
        return next((x for x in self.suites if x.name == name), None)

    def headline(self, suite: str) -> str | None:
        info = self.suite(suite)
        return info.headline if info else None

    def cell(self, target: str, suite: str, metric: str) -> Cell | None:
        return self._cells_by_key.get((target, suite, metric))

    @cached_property
    def _cells_by_key(self) -> dict[tuple[str, str, str], Cell]:
        # a report looks up thousands of cells: an index, built once (the first cell of a key wins, as a
        # scan in order would find it)
        out: dict[tuple[str, str, str], Cell] = {}
        for c in self.cells:
            out.setdefault((c.target, c.suite, c.metric), c)
        return out
