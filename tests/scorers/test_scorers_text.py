"""Text scorers and the offline evaluate modules give exactly the reference libraries' numbers.

Every expected value below is computed by calling rouge_score / sacrebleu directly with the
documented settings (Porter stemming on, rouge-score's tokenizer, max over references per rouge
type, mean aggregation; sacrebleu defaults), never by the code under test.
"""

from __future__ import annotations

import random
import re

import pytest
import sacrebleu
from rouge_score import rouge_scorer

from harness.scorers.local import LOCAL_METRICS, load_metric, metric_path
from harness.scorers import Example, get_scorer, scorer_names, text

TOL = 1e-9
TYPES = ["rouge1", "rouge2", "rougeL", "rougeLsum"]


def _long_text(seed: int, n_words: int = 400) -> str:
    rng = random.Random(seed)
    vocab = ["the", "model", "answered", "questions", "about", "running", "runners", "and", "evaluation", "metrics", "while", "adapters", "improved", "scores", "on", "held", "out", "examples", "although", "several", "regressions", "appeared", "in", "summaries", "translations", "and", "structured", "outputs"]
    words = [rng.choice(vocab) for _ in range(n_words)]
    # Newlines every 20 words so rougeLsum sees several sentences.
    return "\n".join(" ".join(words[i:i + 20]) + "." for i in range(0, n_words, 20))


# (prediction, references): every kind of awkward input the brief asks for.
CASES: list[tuple[str, list[str]]] = [
    ("", ["The cat sat on the mat."]),                                             # empty prediction
    ("The cat sat on the mat.", [""]),                                             # empty reference
    ("", [""]),                                                                     # both empty
    ("Le café est très chaud, n'est-ce pas ?", ["Le café était très chaud !"]),   # accents
    ("Crème brûlée à la française", ["crème brûlée façon française"]),
    ("我喜欢吃苹果。", ["我喜欢吃香蕉。"]),                                          # CJK
    ("東京は日本の首都です", ["日本の首都は東京です"]),
    ("I love it 😀🎉 so much", ["I love it so much 😀"]),                            # emoji
    ("!!! ... ???", ["?!."]),                                                       # punctuation only
    ("--- ;;; ,,,", ["Hello, world!"]),
    ("The quick brown fox jumps over the lazy dog",                                 # several references
     ["A quick brown dog jumps over the lazy fox", "The fast brown fox leaps over the lazy dog", "quick fox"]),
    ("Paris is the capital of France.", ["The capital of France is Paris.", "Paris."]),
    ("The committee approved the budget on Tuesday.",                              # identical pair
     ["The committee approved the budget on Tuesday."]),
    ("Running runners ran quickly", ["The runner runs quick"]),                     # stemming matters
    ("First sentence here.\nSecond one follows.\nAnd a third.",                    # multi-line (rougeLsum)
     ["Second one follows.\nFirst sentence here."]),
    (_long_text(1), [_long_text(2)]),                                               # long texts
    (_long_text(3, 1000), [_long_text(3, 1000), _long_text(4, 900)]),
]
PREDS = [p for p, _ in CASES]
REFS = [r for _, r in CASES]


def _direct_rouge(pred: str, refs: list[str], use_stemmer: bool = True) -> dict[str, float]:
    """rouge_score directly: score against each reference, keep the max F-measure per type."""
    scorer = rouge_scorer.RougeScorer(TYPES, use_stemmer=use_stemmer)
    per_ref = [scorer.score(r, pred) for r in refs]
    return {k: max(s[k].fmeasure for s in per_ref) for k in TYPES}


def _streams(refs: list[list[str]]) -> list[list[str | None]]:
    width = max(len(r) for r in refs)
    return [[r[j] if j < len(r) else None for r in refs] for j in range(width)]


@pytest.fixture(scope="module")
def modules() -> dict:
    return {name: load_metric(name) for name in LOCAL_METRICS}


# ------------------------------------------------------------------------------------- scorers


def test_text_scorers_are_registered() -> None:
    assert {"regex", "rouge", "bleu", "chrf"} <= set(scorer_names())


@pytest.mark.parametrize("pred,refs", CASES, ids=[f"case{i}" for i in range(len(CASES))])
def test_rouge_scorer_matches_rouge_score(pred: str, refs: list[str]) -> None:
    expected = _direct_rouge(pred, refs)
    scores = get_scorer("rouge")(pred, Example("x", "in", references=tuple(refs)))
    assert [s.metric for s in scores] == TYPES
    for s in scores:
        assert s.value is not None and s.reason is None
        assert s.value == pytest.approx(expected[s.metric], abs=TOL)
    # score_multi (what evaluate uses for lists of references) picks the same maxima.
    multi = rouge_scorer.RougeScorer(TYPES, use_stemmer=True).score_multi(refs, pred)
    for k in TYPES:
        assert multi[k].fmeasure == pytest.approx(expected[k], abs=TOL)


def test_rouge_scorer_stemming_option() -> None:
    pred, refs = "Running runners ran quickly", ["The runner runs quick"]
    on = {s.metric: s.value for s in get_scorer("rouge")(pred, Example("x", "in", references=tuple(refs)))}
    off = {s.metric: s.value for s in get_scorer("rouge", {"use_stemmer": False})(pred, Example("x", "in", references=tuple(refs)))}
    assert on["rouge1"] == pytest.approx(_direct_rouge(pred, refs, True)["rouge1"], abs=TOL)
    assert off["rouge1"] == pytest.approx(_direct_rouge(pred, refs, False)["rouge1"], abs=TOL)
    assert on["rouge1"] > off["rouge1"]  # stemming is on by default and changes the number


def test_rouge_tokenizer_drops_non_ascii_text() -> None:
    # Library behaviour we keep (documented): only [a-z0-9] form tokens, so CJK scores 0 even when identical.
    s = get_scorer("rouge")("我喜欢吃苹果", Example("x", "in", target="我喜欢吃苹果"))
    assert all(x.value == 0.0 for x in s)


@pytest.mark.parametrize("pred,refs", CASES, ids=[f"case{i}" for i in range(len(CASES))])
def test_bleu_and_chrf_scorers_match_sacrebleu(pred: str, refs: list[str]) -> None:
    ex = Example("x", "in", references=tuple(refs))
    [b] = get_scorer("bleu")(pred, ex)
    [c] = get_scorer("chrf")(pred, ex)
    assert b.metric == "bleu" and c.metric == "chrf"
    assert b.value == pytest.approx(sacrebleu.sentence_bleu(pred, refs).score, abs=TOL)
    assert c.value == pytest.approx(sacrebleu.sentence_chrf(pred, refs).score, abs=TOL)


def test_scorers_fall_back_to_target_and_refuse_no_reference() -> None:
    pred, target = "The cat sat on the mat.", "A cat sat on a mat."
    ex = Example("x", "in", target=target)
    assert get_scorer("bleu")(pred, ex)[0].value == pytest.approx(sacrebleu.sentence_bleu(pred, [target]).score, abs=TOL)
    assert get_scorer("chrf")(pred, ex)[0].value == pytest.approx(sacrebleu.sentence_chrf(pred, [target]).score, abs=TOL)
    assert get_scorer("rouge")(pred, ex)[0].value == pytest.approx(_direct_rouge(pred, [target])["rouge1"], abs=TOL)
    bare = Example("x", "in")
    for name in ("rouge", "bleu", "chrf"):
        for s in get_scorer(name)(pred, bare):
            assert s.value is None and s.reason


def test_signatures_are_sacrebleus() -> None:
    bleu = sacrebleu.BLEU(effective_order=True)
    bleu.sentence_score("a", ["a"])
    chrf = sacrebleu.CHRF()
    chrf.sentence_score("a", ["a", "b"])
    assert text.signature("bleu") == str(bleu.get_signature())
    assert text.signature("chrf", nrefs=2) == str(chrf.get_signature())
    assert "tok:13a" in text.signature("bleu") and "smooth:exp" in text.signature("bleu")
    assert "nc:6" in text.signature("chrf") and "nw:0" in text.signature("chrf")
    with pytest.raises(ValueError):
        text.signature("rouge")


# -------------------------------------------------------------------------------- corpus helpers


def test_corpus_rouge_is_mean_of_per_example_max() -> None:
    result = text.corpus_rouge(PREDS, REFS)
    direct = [_direct_rouge(p, r) for p, r in CASES]
    for k in TYPES:
        assert result[k] == pytest.approx(sum(d[k] for d in direct) / len(direct), abs=TOL)
    assert result["n"] == len(CASES)


def test_corpus_bleu_and_chrf_match_sacrebleu() -> None:
    streams = _streams(REFS)  # variable reference counts: sacrebleu wants None where one is missing
    b = text.corpus_bleu(PREDS, REFS)
    direct_b = sacrebleu.corpus_bleu(PREDS, streams)
    assert b["score"] == pytest.approx(direct_b.score, abs=TOL)
    assert b["counts"] == list(direct_b.counts) and b["totals"] == list(direct_b.totals)
    assert b["bp"] == pytest.approx(direct_b.bp, abs=TOL)
    assert b["signature"] == "nrefs:var|case:mixed|eff:no|tok:13a|smooth:exp|version:" + sacrebleu.__version__
    c = text.corpus_chrf(PREDS, REFS)
    assert c["score"] == pytest.approx(sacrebleu.corpus_chrf(PREDS, streams).score, abs=TOL)
    assert (c["char_order"], c["word_order"], c["beta"]) == (6, 0, 2)
    # One reference each, given as plain strings.
    single = [(p, r[0]) for p, r in CASES]
    preds1, refs1 = [p for p, _ in single], [r for _, r in single]
    assert text.corpus_bleu(preds1, refs1)["score"] == pytest.approx(sacrebleu.corpus_bleu(preds1, [refs1]).score, abs=TOL)
    assert text.corpus_chrf(preds1, refs1)["score"] == pytest.approx(sacrebleu.corpus_chrf(preds1, [refs1]).score, abs=TOL)
    assert text.corpus_bleu(preds1, refs1)["signature"].startswith("nrefs:1|")


def test_corpus_helpers_check_lengths() -> None:
    with pytest.raises(ValueError):
        text.corpus_bleu(["a", "b"], ["a"])
    with pytest.raises(TypeError):
        text.corpus_rouge("a", ["a"])


# ----------------------------------------------------------------------- offline evaluate modules


def test_local_modules_load_offline(modules: dict) -> None:
    import evaluate

    for name, module in modules.items():
        assert isinstance(module, evaluate.EvaluationModule)
        assert metric_path(name).is_file()
    with pytest.raises(ValueError):
        metric_path("bertscore")


def test_rouge_module_matches_rouge_score(modules: dict) -> None:
    direct = [_direct_rouge(p, r) for p, r in CASES]
    per = modules["rouge"].compute(predictions=PREDS, references=REFS, use_aggregator=False)
    agg = modules["rouge"].compute(predictions=PREDS, references=REFS)
    for k in TYPES:
        assert len(per[k]) == len(CASES)
        for got, want in zip(per[k], direct):
            assert got == pytest.approx(want[k], abs=TOL)
        assert agg[k] == pytest.approx(sum(d[k] for d in direct) / len(direct), abs=TOL)
        assert agg[k] == pytest.approx(text.corpus_rouge(PREDS, REFS)[k], abs=TOL)
    # Plain string references and the stemmer switch.
    refs1 = [r[0] for r in REFS]
    off = modules["rouge"].compute(predictions=PREDS, references=refs1, use_stemmer=False, use_aggregator=False)
    for i, (p, r) in enumerate(zip(PREDS, refs1)):
        assert off["rougeL"][i] == pytest.approx(_direct_rouge(p, [r], use_stemmer=False)["rougeL"], abs=TOL)


def test_bleu_module_matches_sacrebleu(modules: dict) -> None:
    out = modules["bleu"].compute(predictions=PREDS, references=REFS, sentence_scores=True)
    direct = sacrebleu.corpus_bleu(PREDS, _streams(REFS))
    assert out["score"] == pytest.approx(direct.score, abs=TOL)
    assert out["counts"] == list(direct.counts) and out["sys_len"] == direct.sys_len and out["ref_len"] == direct.ref_len
    for got, (p, r) in zip(out["sentence_scores"], CASES):
        assert got == pytest.approx(sacrebleu.sentence_bleu(p, r).score, abs=TOL)
    assert out["signature"] == text.corpus_bleu(PREDS, REFS)["signature"]
    refs1 = [r[0] for r in REFS]
    out1 = modules["bleu"].compute(predictions=PREDS, references=refs1)
    assert out1["score"] == pytest.approx(sacrebleu.corpus_bleu(PREDS, [refs1]).score, abs=TOL)


def test_chrf_module_matches_sacrebleu(modules: dict) -> None:
    out = modules["chrf"].compute(predictions=PREDS, references=REFS, sentence_scores=True)
    assert out["score"] == pytest.approx(sacrebleu.corpus_chrf(PREDS, _streams(REFS)).score, abs=TOL)
    for got, (p, r) in zip(out["sentence_scores"], CASES):
        assert got == pytest.approx(sacrebleu.sentence_chrf(p, r).score, abs=TOL)
    assert out["score"] == pytest.approx(text.corpus_chrf(PREDS, REFS)["score"], abs=TOL)


def test_evaluate_modules_ship_as_packages() -> None:
    from setuptools import find_packages

    from harness.scorers import local

    root = local.MODULES_DIR.parents[2]
    found = set(find_packages(str(root), include=["harness*"]))
    for name in LOCAL_METRICS:
        assert f"harness.scorers.evaluate_modules.{name}" in found


# ------------------------------------------------------------------------------------------ regex


def test_regex_scorer() -> None:
    ex = Example("x", "in", target="unused")
    assert get_scorer("regex", {"pattern": r"\border #\d+"})("Your order #123 shipped", ex)[0].value == 1.0
    assert get_scorer("regex", {"pattern": r"\border #\d+"})("Your ORDER #123 shipped", ex)[0].value == 0.0
    for flags in ("i", "IGNORECASE", ["i"], re.IGNORECASE):
        assert get_scorer("regex", {"pattern": "order", "flags": flags})("ORDER", ex)[0].value == 1.0
    assert get_scorer("regex", {"pattern": "^b", "flags": "im"})("a\nB", ex)[0].value == 1.0
    assert get_scorer("regex", {"pattern": "^b"})("a\nb", ex)[0].value == 0.0
    assert get_scorer("regex", {"pattern": "x"})("", ex) == [text.Score("regex", 0.0)]


@pytest.mark.parametrize("pattern", ["(unclosed", "[a-", "*oops", "(?P<x>a)(?P<x>b)"])
def test_regex_bad_pattern_fails_at_build_time(pattern: str) -> None:
    with pytest.raises(ValueError, match="invalid pattern"):
        get_scorer("regex", {"pattern": pattern})


def test_regex_bad_flag_fails_at_build_time() -> None:
    with pytest.raises(ValueError, match="unknown regex flag"):
        get_scorer("regex", {"pattern": "a", "flags": "q"})
