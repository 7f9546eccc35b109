"""Scorers: small registered functions that turn (model output, example) into scores.

A scorer is registered by a decorator on a factory that takes the scorer's arguments (from a suite's
``scorers:`` list) and returns the function that scores one example. The registry records the name,
version and arguments, so every stored score says exactly what produced it.

    @register_scorer("exact_match", version="1")
    def exact_match(normalize: bool = True) -> ScoreFn:
        def score(output: str, example: Example) -> list[Score]:
            ...
        return score
"""

from __future__ import annotations

# the built-in scorers register themselves on import (their @register_scorer decorators)
from harness.scorers import match, text  # noqa: F401
from harness.scorers.registry import (
    BoundScorer,
    Example,
    Score,
    ScoreFn,
    ScorerInfo,
    check_scorer_args,
    get_scorer,
    register_scorer,
    scorer_info,
    scorer_names,
    unknown_scorer,
)

__all__ = ["BoundScorer", "Example", "Score", "ScoreFn", "ScorerInfo", "check_scorer_args", "get_scorer", "register_scorer", "scorer_info", "scorer_names", "unknown_scorer"]
