"""Text-overlap scorers: ``regex``, ``rouge``, ``bleu`` and ``chrf``, plus corpus-level helpers.

Every number here is the number the reference library gives with the settings below; the tests in
``tests/scorers/test_scorers_text.py`` check that to 1e-9 against ``rouge_score`` and ``sacrebleu`` called
directly, and against the offline evaluate modules in ``harness/scorers/evaluate_modules``.

Settings
--------
ROUGE (``rouge-score`` package, ``rouge_scorer.RougeScorer``):
    * types: rouge1, rouge2, rougeL, rougeLsum; the value stored is the F-measure.
    * stemming: Porter stemmer (NLTK's PorterStemmer, as rouge-score uses it), ON by default
      (``use_stemmer=True``). rouge-score only stems tokens longer than 3 characters. Note that
      evaluate's hub ``rouge`` defaults to ``use_stemmer=False``; ours defaults to True everywhere
      (scorer, ``corpus_rouge`` and the local evaluate module), so pass ``use_stemmer=False`` to
      reproduce hub numbers computed with its default.
    * tokenizer: rouge-score's default tokenizer: lower-case, every run of characters outside
      ``[a-z0-9]`` becomes a separator. So accented letters split words (``"café"`` -> ``caf``) and
      text with no ASCII letters or digits (CJK, emoji, punctuation only) has NO tokens and scores
      0.0. That is the library's behaviour and we keep it, so numbers stay comparable; use ``chrf``
      for non-Latin scripts.
    * rougeLsum: summary-level LCS over sentences split on ``"\\n"`` only (``split_summaries=False``,
      rouge-score's default; no NLTK sentence splitting). Text without newlines is one sentence.
    * several references: ``RougeScorer.score_multi``, i.e. for EACH rouge type independently the
      reference with the highest F-measure is used (the max per metric). This is exactly what
      evaluate's ``rouge`` does when given a list of references per prediction.
    * empty prediction or empty reference: F-measure 0.0 (rouge-score's convention), not None.
    * aggregation (``corpus_rouge`` and the local evaluate module's default): the arithmetic MEAN
      of the per-example F-measures. evaluate's hub module with ``use_aggregator=True`` instead
      reports the ``mid`` of rouge-score's ``BootstrapAggregator``: a resampled (random, unseeded)
      estimate that is close to but not exactly the mean and changes from run to run. We do not use
      it; the mean is deterministic and equals ``mean(compute(..., use_aggregator=False)[type])``.

BLEU (``sacrebleu``):
    * sacrebleu defaults: tokenizer ``13a`` (also for CJK text: there is no language detection, so
      unsegmented Chinese/Japanese is one "word" per run), case-sensitive, 4-grams.
    * per example: ``sacrebleu.sentence_bleu`` (``exp`` smoothing, ``use_effective_order=True``),
      against all the example's references at once.
    * corpus: ``sacrebleu.corpus_bleu`` (``exp`` smoothing, ``use_effective_order=False``): BLEU
      from pooled n-gram counts, NOT the mean of sentence BLEU. Examples with fewer references are
      padded with ``None`` (sacrebleu's "no reference here"), so reference counts may vary.
    * scale: 0-100, as sacrebleu reports it (ROUGE is 0-1).

chrF (``sacrebleu``):
    * character n-gram order 6, word order 0 (chrF, not chrF++), beta 2, whitespace removed,
      no epsilon smoothing: ``sentence_chrf`` / ``corpus_chrf`` defaults. Several references: the
      best-scoring one. Scale 0-100.

Reproducibility: ``signature("bleu")`` / ``signature("chrf")`` return sacrebleu's signature string
(``nrefs:1|case:mixed|eff:yes|tok:13a|smooth:exp|version:...``); ``corpus_bleu``/``corpus_chrf``
return the signature of the actual computation under ``"signature"``. Per-example scores keep
``Score.reason`` for its documented use (why a value is None).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from harness.scorers.registry import Example, Score, ScoreFn, register_scorer

ROUGE_TYPES: tuple[str, ...] = ("rouge1", "rouge2", "rougeL", "rougeLsum")

_FLAG_NAMES = {
    "a": re.ASCII, "ascii": re.ASCII,
    "i": re.IGNORECASE, "ignorecase": re.IGNORECASE,
    "m": re.MULTILINE, "multiline": re.MULTILINE,
    "s": re.DOTALL, "dotall": re.DOTALL,
    "x": re.VERBOSE, "verbose": re.VERBOSE,
}


def references_of(example: Example) -> tuple[str, ...]:
    """The example's references: ``references`` if given, else ``(target,)``, else ()."""
    if example.references:
        return tuple(example.references)
    return (example.target,) if example.target is not None else ()


# ----------------------------------------------------------------------------------------- regex


def _parse_flags(flags: int | str | Sequence[str] | None) -> int:
    if flags is None:
        return 0
    if isinstance(flags, bool):
        raise ValueError(f"regex flags must be an int, a string or a list of names, not {flags!r}")
    if isinstance(flags, int):
        return flags
    if isinstance(flags, str):
        # "i", "im", "IGNORECASE", "i|m", "IGNORECASE,MULTILINE"
        parts = [p for p in re.split(r"[\s,|]+", flags.strip()) if p]
        if len(parts) == 1 and parts[0].lower() not in _FLAG_NAMES and parts[0].isalpha():
            parts = list(parts[0])  # "im" -> ["i", "m"]
    else:
        parts = list(flags)
    value = 0
    for part in parts:
        key = str(part).lower().removeprefix("re.")
        if key not in _FLAG_NAMES:
            raise ValueError(f"unknown regex flag {part!r}; use one of: {', '.join(sorted(_FLAG_NAMES))}")
        value |= _FLAG_NAMES[key]
    return value


@register_scorer("regex", version="1")
def regex(pattern: str, flags: int | str | Sequence[str] | None = 0) -> ScoreFn:
    """1.0 when ``re.search(pattern, output, flags)`` finds a match, else 0.0.

    flags: an int (``re.I | re.M``), letters ("im"), or names ("IGNORECASE", ["i", "s"]).
    A pattern that does not compile raises ValueError when the scorer is built.
    """
    if not isinstance(pattern, str):
        raise ValueError(f"regex pattern must be a string, not {type(pattern).__name__}")
    try:
        compiled = re.compile(pattern, _parse_flags(flags))
    except re.error as exc:
        raise ValueError(f"regex scorer: invalid pattern {pattern!r}: {exc}") from exc

    def score(output: str, example: Example) -> list[Score]:
        return [Score("regex", float(compiled.search(output) is not None))]

    return score


# ----------------------------------------------------------------------------------------- ROUGE


@lru_cache(maxsize=8)
def _rouge_scorer(use_stemmer: bool, rouge_types: tuple[str, ...] = ROUGE_TYPES) -> Any:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(list(rouge_types), use_stemmer=use_stemmer)


def rouge_f(prediction: str, references: Sequence[str], use_stemmer: bool = True,
            rouge_types: Sequence[str] = ROUGE_TYPES) -> dict[str, float]:
    """F-measure per rouge type for one prediction; with several references, the max per type."""
    refs = [references] if isinstance(references, str) else list(references)
    if not refs:
        raise ValueError("rouge needs at least one reference")
    scorer = _rouge_scorer(bool(use_stemmer), tuple(rouge_types))
    scores = scorer.score_multi(refs, prediction)
    return {k: float(scores[k].fmeasure) for k in rouge_types}


@register_scorer("rouge", version="1")
def rouge(use_stemmer: bool = True) -> ScoreFn:
    """ROUGE-1/2/L/Lsum F-measure (rouge-score, Porter stemming on by default; max over references)."""

    def score(output: str, example: Example) -> list[Score]:
        refs = references_of(example)
        if not refs:
            return [Score(k, None, "example has no references or target") for k in ROUGE_TYPES]
        values = rouge_f(output, refs, use_stemmer=use_stemmer)
        return [Score(k, values[k]) for k in ROUGE_TYPES]

    return score


def corpus_rouge(predictions: Sequence[str], references: Sequence[str | Sequence[str]],
                 use_stemmer: bool = True, rouge_types: Sequence[str] = ROUGE_TYPES) -> dict[str, Any]:
    """Mean per-example F-measure for each rouge type (deterministic; see the module docstring).

    ``references[i]`` is one string or a list of strings for ``predictions[i]``. An empty corpus
    gives None per type. The result also holds ``"n"`` and a ``"settings"`` string.
    """
    _check_lengths(predictions, references)
    totals = {k: 0.0 for k in rouge_types}
    for pred, refs in zip(predictions, references):
        for k, v in rouge_f(pred, refs, use_stemmer=use_stemmer, rouge_types=rouge_types).items():
            totals[k] += v
    n = len(predictions)
    out: dict[str, Any] = {k: (totals[k] / n if n else None) for k in rouge_types}
    out["n"] = n
    out["settings"] = f"rouge-score|stem:{'porter' if use_stemmer else 'no'}|tok:default|multi:max|agg:mean|lsum-split:newline"
    return out


# ------------------------------------------------------------------------------------ BLEU, chrF


def _bleu_metric(effective_order: bool) -> Any:
    from sacrebleu.metrics import BLEU

    # The same construction as sacrebleu.sentence_bleu / corpus_bleu with their defaults.
    return BLEU(lowercase=False, force=False, tokenize=BLEU.TOKENIZER_DEFAULT, smooth_method="exp",
                smooth_value=None, effective_order=effective_order)


def _chrf_metric() -> Any:
    from sacrebleu.metrics import CHRF

    # The same construction as sacrebleu.sentence_chrf / corpus_chrf with their defaults.
    return CHRF(char_order=6, word_order=0, beta=2, whitespace=False, eps_smoothing=False)


def signature(name: str = "bleu", nrefs: int = 1) -> str:
    """sacrebleu's signature string for the per-example ``bleu`` or ``chrf`` scorer with ``nrefs`` references."""
    if name == "bleu":
        metric = _bleu_metric(effective_order=True)
    elif name == "chrf":
        metric = _chrf_metric()
    else:
        raise ValueError(f"no sacrebleu signature for {name!r}; use 'bleu' or 'chrf'")
    metric.sentence_score("a", ["a"] * max(1, int(nrefs)))  # sacrebleu knows nrefs only after scoring
    return str(metric.get_signature())


def sentence_bleu(prediction: str, references: Sequence[str]) -> float:
    """``sacrebleu.sentence_bleu(prediction, references).score`` (0-100)."""
    refs = [references] if isinstance(references, str) else list(references)
    return float(_bleu_metric(effective_order=True).sentence_score(prediction, refs).score)


def sentence_chrf(prediction: str, references: Sequence[str]) -> float:
    """``sacrebleu.sentence_chrf(prediction, references).score`` (0-100)."""
    refs = [references] if isinstance(references, str) else list(references)
    return float(_chrf_metric().sentence_score(prediction, refs).score)


@register_scorer("bleu", version="1")
def bleu() -> ScoreFn:
    """Sentence BLEU (sacrebleu defaults: 13a, exp smoothing, effective order; 0-100) over all references."""

    def score(output: str, example: Example) -> list[Score]:
        refs = references_of(example)
        if not refs:
            return [Score("bleu", None, "example has no references or target")]
        return [Score("bleu", sentence_bleu(output, refs))]

    return score


@register_scorer("chrf", version="1")
def chrf() -> ScoreFn:
    """Sentence chrF (sacrebleu: char order 6, beta 2; 0-100), best over the references."""

    def score(output: str, example: Example) -> list[Score]:
        refs = references_of(example)
        if not refs:
            return [Score("chrf", None, "example has no references or target")]
        return [Score("chrf", sentence_chrf(output, refs))]

    return score


def _check_lengths(predictions: Sequence[str], references: Sequence[Any]) -> None:
    if isinstance(predictions, str):
        raise TypeError("predictions must be a list of strings, not one string")
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} reference entries")


def reference_streams(references: Sequence[str | Sequence[str]]) -> list[list[str | None]]:
    """Per-example references -> sacrebleu's reference streams, padded with None where an example has fewer."""
    per_example = [[r] if isinstance(r, str) else list(r) for r in references]
    for i, refs in enumerate(per_example):
        if not refs:
            raise ValueError(f"example {i} has no references")
    width = max((len(r) for r in per_example), default=1)
    return [[refs[j] if j < len(refs) else None for refs in per_example] for j in range(width)]


def corpus_result(metric: Any, predictions: Sequence[str], references: Sequence[str | Sequence[str]]) -> dict[str, Any]:
    """Score a corpus with a configured sacrebleu BLEU or CHRF object: its numbers plus its signature."""
    result = metric.corpus_score(list(predictions), reference_streams(references))
    if hasattr(result, "counts"):  # BLEU
        out = {
            "score": float(result.score),
            "counts": list(result.counts),
            "totals": list(result.totals),
            "precisions": [float(p) for p in result.precisions],
            "bp": float(result.bp),
            "sys_len": int(result.sys_len),
            "ref_len": int(result.ref_len),
        }
    else:  # chrF
        out = {"score": float(result.score), "char_order": int(result.char_order),
               "word_order": int(result.word_order), "beta": int(result.beta)}
    out["signature"] = str(metric.get_signature())
    return out


def corpus_bleu(predictions: Sequence[str], references: Sequence[str | Sequence[str]]) -> dict[str, Any]:
    """``sacrebleu.corpus_bleu`` with defaults; ``references[i]`` is a string or list for ``predictions[i]``."""
    _check_lengths(predictions, references)
    return corpus_result(_bleu_metric(effective_order=False), predictions, references)


def corpus_chrf(predictions: Sequence[str], references: Sequence[str | Sequence[str]]) -> dict[str, Any]:
    """``sacrebleu.corpus_chrf`` with defaults (char order 6, beta 2)."""
    _check_lengths(predictions, references)
    return corpus_result(_chrf_metric(), predictions, references)
