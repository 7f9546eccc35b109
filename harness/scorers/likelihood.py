"""Scores of likelihood suites, from per-choice log-likelihoods (``harness.generation.likelihood``).

``multiple_choice`` follows lm-evaluation-harness 0.4's ``ConfigurableTask.process_results`` exactly: ``acc`` is 1
when the choice of highest log-likelihood is the right one, ``acc_norm`` the same after dividing each choice's
log-likelihood by its length in characters (the choice's own text, without the target delimiter), ties going to
the first choice (``numpy.argmax``). ``margin`` is ours: the right choice's log-likelihood minus the best wrong
one's (nats; positive when the model prefers the right answer), a continuous score per example for paired
statistics. ``loglikelihood`` gives the continuation's summed log-probability and ``acc`` (greedy decoding would
produce it), as lm-eval's ``loglikelihood`` output type does.
"""

from __future__ import annotations

from collections.abc import Sequence

from harness.scorers.registry import Score

#: bump when a definition changes: stored scores of an older version are not reused
VERSION = "1"


def _argmax(values: Sequence[float]) -> int:
    best = 0
    for i, v in enumerate(values):
        if v > values[best]:
            best = i
    return best


def multiple_choice_scores(lls: Sequence[float], choices: Sequence[str], gold: int) -> tuple[int, list[Score]]:
    """(the predicted choice, [acc, acc_norm, margin]) for one example."""
    pred = _argmax(lls)
    pred_norm = _argmax([ll / float(len(c)) for ll, c in zip(lls, choices)])
    margin = lls[gold] - max(ll for i, ll in enumerate(lls) if i != gold)
    return pred, [Score("acc", 1.0 if pred == gold else 0.0), Score("acc_norm", 1.0 if pred_norm == gold else 0.0),
                  Score("margin", margin)]


def loglikelihood_scores(logprob: float, is_greedy: bool) -> list[Score]:
    return [Score("loglikelihood", logprob), Score("acc", 1.0 if is_greedy else 0.0)]
