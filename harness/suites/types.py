"""The typed suite: the frozen ``Suite`` that ``load_suite`` returns, its parts (``PromptSpec``,
``ScorerSpec``, ``GateSpec``), the roles a suite can have, and which way each metric points
(``higher_is_better``, ``suite_directions``). No parsing here: see ``harness.suites.spec``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.generation.rows import GenerationSettings
from harness.records import TaskFormat

FIELDS = ("id", "input", "target", "aliases", "references", "category", "choices")
#: generate: the model answers and scorers judge the text; multiple_choice: each choice's log-likelihood after the
#: prompt, lm-eval's acc / acc_norm and the margin; loglikelihood: the target's log-likelihood and whether greedy
#: decoding gives it (harness.generation.likelihood). No decoding happens for the last two.
KINDS = ("generate", "multiple_choice", "loglikelihood")
#: the metrics a likelihood suite emits, by kind (scorer name = kind)
LIKELIHOOD_METRICS = {"multiple_choice": ("acc", "acc_norm", "margin"), "loglikelihood": ("loglikelihood", "acc")}
#: task: what the adapter was trained for; general: what the base could do (retention is computed, and
#: leakage of the task's format); leakage: prompts where the task format must not appear; reference:
#: texts scored against references (ROUGE/BLEU), reported beside the rest
ROLES = ("task", "general", "leakage", "reference")
# The metric a scorer's suite is judged by, unless the suite names its own headline.
_DEFAULT_HEADLINE = {"exact_match": "exact_match", "alias_match": "alias_match", "json_field": "json_exact",
                     "format_leakage": "format_leakage", "regex": "regex", "rouge": "rougeL", "bleu": "bleu",
                     "chrf": "chrf", "perplexity": "perplexity",
                     "multiple_choice": "acc", "loglikelihood": "loglikelihood"}
# Metrics where a lower value is better; every other metric is higher-is-better unless a suite says so.
LOWER_IS_BETTER = frozenset({"format_leakage", "nll", "perplexity", "drift_kl", "drift_nll"})


def higher_is_better(metric: str, overrides: Mapping[str, bool] | None = None) -> bool:
    """Which way ``metric`` points: a suite's ``metrics: {m: {higher_is_better: ...}}`` first, then the
    built-in table (format leakage, NLL and perplexity are lower-is-better)."""
    if overrides and metric in overrides:
        return bool(overrides[metric])
    return metric not in LOWER_IS_BETTER


@dataclass(frozen=True)
class PromptSpec:
    template: str = "{{ input }}"
    system: str | None = None
    raw: bool = False
    #: the chat template every model of the run is asked in (``prompt.chat_template: FILE`` beside the suite),
    #: over the base's and an adapter's own; None: theirs
    chat_template: str | None = None


@dataclass(frozen=True)
class ScorerSpec:
    name: str
    args: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class GateSpec:
    """One entry of a suite's ``gates:`` (see ``harness.gates``): ``min``/``max`` bound the metric's mean
    (``metric: retention`` on a general suite: its retention); ``min_gain`` the gain over the base model;
    ``max_drop`` the paired drop against a baseline adapter."""

    metric: str
    min: float | None = None
    max: float | None = None
    min_gain: float | None = None
    max_drop: float | None = None


@dataclass(frozen=True)
class Suite:
    """A validated suite. ``suite_id`` hashes the spec and the data, so any edit changes it."""

    name: str
    version: str
    description: str
    path: Path
    data_path: Path
    split: str | None
    fields: Mapping[str, str]
    prompt: PromptSpec
    generation: GenerationSettings
    scorers: tuple[ScorerSpec, ...]
    gates: tuple[GateSpec, ...]
    suite_id: str
    role: str = "task"
    headline: str | None = None
    #: metric -> higher_is_better, as the suite declares it (others follow ``higher_is_better``)
    directions: Mapping[str, bool] = field(default_factory=dict)
    #: text fields longer than this many characters are cut and flagged (data.max_chars)
    max_chars: int = 16_384
    #: a task suite's declared answer format (``format:``; harness.suites.taskformat), None: inferred or unknown
    format: TaskFormat | None = None
    #: generate | multiple_choice | loglikelihood (``KINDS``)
    kind: str = "generate"
    #: put between the prompt and a choice or continuation (lm-eval's ``target_delimiter``)
    target_delimiter: str = " "
    #: a suite read from an lm-eval task YAML: how its rows become examples (harness.suites.lmeval.LmevalTask)
    lmeval: Any = None

    @property
    def likelihood(self) -> bool:
        return self.kind != "generate"


def suite_directions(suite: Suite) -> dict[str, bool]:
    """metric -> higher_is_better for every metric the suite's scorers can emit that has a known
    direction, plus the suite's own declarations (stored with the suite, read by reports and gates)."""
    out = {m: False for m in LOWER_IS_BETTER if any(_DEFAULT_HEADLINE.get(sc.name) == m or sc.name == m for sc in suite.scorers)}
    if suite.headline:
        out.setdefault(suite.headline, higher_is_better(suite.headline))
    out.update(suite.directions)
    return out
