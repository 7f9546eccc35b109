"""The scorer registry: ``register_scorer`` and the lookups (the package docstring says how to add one).

Importing any module of ``harness.scorers`` runs the package ``__init__`` first, which imports the built-in
scorer modules, so the registry never lacks them."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from harness.errors import SuiteError


@dataclass(frozen=True)
class Example:
    """One evaluation item, after a suite's field mapping.

    Attributes:
        id: unique within its suite.
        input: the text the prompt template renders (a question, a customer message).
        target: the reference answer, if any (a string; JSON for structured tasks).
        aliases: other accepted answers (alias match).
        references: reference texts for ROUGE/BLEU (defaults to ``(target,)``).
        category: optional group for per-category breakdowns.
        fields: every column of the data row, for templates and scorers that need more.
        truncated: the fields that were longer than the suite's ``max_chars`` and were cut.
    """

    id: str
    input: str
    target: str | None = None
    aliases: tuple[str, ...] = ()
    references: tuple[str, ...] = ()
    category: str | None = None
    fields: Mapping[str, Any] = field(default_factory=dict)
    #: names of the fields cut to the suite's max_chars (stored with the example)
    truncated: tuple[str, ...] = ()
    #: a multiple-choice example's choices, and the index of the right one (``target`` is its text)
    choices: tuple[str, ...] = ()
    gold: int | None = None


@dataclass(frozen=True)
class Score:
    """One metric value for one example: finite, or None with the reason it could not be scored."""

    metric: str
    value: float | None
    reason: str | None = None

    def __post_init__(self) -> None:
        if self.value is not None and not math.isfinite(self.value):
            # DuckDB sorts NaN above every number, so a NaN would pass a ">=" gate: refuse it here.
            object.__setattr__(self, "reason", self.reason or f"non-finite value {self.value!r}")
            object.__setattr__(self, "value", None)


ScoreFn = Callable[[str, Example], "list[Score]"]


@dataclass(frozen=True)
class ScorerInfo:
    name: str
    version: str
    factory: Callable[..., ScoreFn]
    description: str


@dataclass(frozen=True)
class BoundScorer:
    """A scorer with its arguments applied, ready to score examples."""

    name: str
    version: str
    args: Mapping[str, Any]
    fn: ScoreFn

    def __call__(self, output: str, example: Example) -> list[Score]:
        return self.fn(output, example)


_REGISTRY: dict[str, ScorerInfo] = {}


def register_scorer(name: str, version: str = "1") -> Callable[[Callable[..., ScoreFn]], Callable[..., ScoreFn]]:
    """Register a scorer factory under ``name``; bump ``version`` when its numbers change."""

    def deco(factory: Callable[..., ScoreFn]) -> Callable[..., ScoreFn]:
        if name in _REGISTRY:
            raise ValueError(f"scorer {name!r} registered twice")
        doc = (inspect.getdoc(factory) or "").split("\n")[0]
        _REGISTRY[name] = ScorerInfo(name, version, factory, doc)
        return factory

    return deco


#: the entry-point group a package names its scorers in: ``[project.entry-points."adapter_harness.scorers"]``,
#: ``my_scorer = "my_package.scorers"``; loading the module registers its ``@register_scorer`` factories
ENTRY_POINT_GROUP = "adapter_harness.scorers"
_plugins_loaded = False


def load_plugin_scorers(log: Callable[[str], None] | None = None) -> list[str]:
    """Import the scorers installed packages declare (once); a plugin that fails to load is one line on stderr
    naming it, never a crash of the run, and its scorers are then unknown like any other. Installed packages
    are code the user chose to install (suites, data and adapters are what the harness treats as hostile).
    Returns the names of the entry points loaded."""
    global _plugins_loaded
    if _plugins_loaded:
        return []
    _plugins_loaded = True
    import sys
    from importlib.metadata import entry_points

    loaded = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            ep.load()
        except Exception as exc:  # a third-party module: whatever it raises, the harness goes on without it
            (log or (lambda m: print(m, file=sys.stderr)))(
                f"warning: scorer plugin {ep.name} ({ep.value}) failed to load: {type(exc).__name__}: {exc}")
            continue
        loaded.append(ep.name)
    return loaded


def scorer_names() -> list[str]:
    """Every name a suite's ``scorers:`` may list: the registered scorers of output text, and the metrics
    the runner computes with the model itself (``harness.metrics.model_metric_names``: perplexity).

    The one list: "unknown scorer" errors print it.
    """
    from harness.metrics import model_metric_names

    load_plugin_scorers()
    return sorted(set(_REGISTRY) | set(model_metric_names()))


def unknown_scorer(name: str) -> str:
    """The message for a scorer name that is not one of ``scorer_names()``."""
    return f"unknown scorer {name!r}; available: {', '.join(scorer_names())}"


def scorer_info(name: str) -> ScorerInfo:
    """The registered scorer of output text called ``name`` (a model metric such as perplexity has none:
    the runner computes it with the model)."""
    from harness.metrics import model_metric_names

    if name not in _REGISTRY:
        load_plugin_scorers()
    if name in _REGISTRY:
        return _REGISTRY[name]
    if name in model_metric_names():
        raise SuiteError(f"{name!r} is a model metric (the runner computes it with the model, from the reference "
                         "answer's likelihood), not a scorer of output text")
    raise SuiteError(unknown_scorer(name))


def check_scorer_args(name: str, args: Mapping[str, Any]) -> list[str]:
    """Return the problems with ``args`` for scorer ``name`` (empty when they bind)."""
    info = scorer_info(name)
    try:
        inspect.signature(info.factory).bind(**args)
    except TypeError as exc:
        params = ", ".join(inspect.signature(info.factory).parameters) or "none"
        return [f"scorer {name!r}: {exc} (accepted arguments: {params})"]
    return []


def get_scorer(name: str, args: Mapping[str, Any] | None = None) -> BoundScorer:
    """Build the scorer ``name`` with ``args``."""
    info = scorer_info(name)
    args = dict(args or {})
    problems = check_scorer_args(name, args)
    if problems:
        raise SuiteError(problems[0])
    return BoundScorer(info.name, info.version, args, info.factory(**args))
