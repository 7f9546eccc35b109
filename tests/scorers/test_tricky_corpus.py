"""The hand-labelled tricky-answer corpus (issue 28): every match scorer against the judgement a careful
grader records, with why, for answers that fooled earlier versions (negations, lists of alternatives,
numbers inside numbers, answers inside leaked JSON, cut-off JSON after prose or a stray quote, keys in
another case or quoting, JSON types and duplicate keys).

The corpus is data, written by hand: ``tests/data/tricky/<scorer>.jsonl``, one case a line, with
``output``, ``target`` (and ``aliases``, scorer ``args``), ``expect`` (the grader's score for the scorer's
headline metric) and ``why``. Agreement must be 100%: a scorer change that disagrees with a grader's
judgement is a regression, and a scorer version bump re-runs all of it (this file is in the default run).
``python -m tests.scorers.test_tricky_corpus`` prints the agreement per scorer.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.scorers import Example, get_scorer

CORPUS = Path(__file__).resolve().parents[1] / "data" / "tricky"
METRIC = {"alias_match": "alias_match", "format_leakage": "format_leakage", "json_field": "json_exact",
          "exact_match": "exact_match"}
ORDER_KEYS = ["item", "quantity", "size", "colour", "shipping"]


def cases() -> list[tuple[str, int, dict]]:
    out = []
    for f in sorted(CORPUS.glob("*.jsonl")):
        for i, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                out.append((f.stem, i, json.loads(line)))
    return out


def judge(scorer: str, case: dict) -> float | None:
    args = case.get("args") or ({"keys": ORDER_KEYS} if scorer == "format_leakage" else {})
    fn = get_scorer(scorer, args).fn
    ex = Example("case", case.get("input", "question"), case.get("target"), tuple(case.get("aliases", ())))
    return next(s.value for s in fn(case["output"], ex) if s.metric == METRIC[scorer])


def agreement() -> dict[str, tuple[int, int]]:
    out: dict[str, tuple[int, int]] = {}
    for scorer, _, case in cases():
        agree, n = out.get(scorer, (0, 0))
        out[scorer] = (agree + (judge(scorer, case) == case["expect"]), n + 1)
    return out


def test_the_corpus_is_large_and_every_case_says_why():
    all_cases = cases()
    assert len(all_cases) >= 150
    assert {s for s, _, _ in all_cases} == set(METRIC)
    for scorer, line, case in all_cases:
        assert case.get("why") and case.get("expect") in (0, 1), f"{scorer}.jsonl:{line}"
    outputs = [(s, c["output"], c.get("target"), tuple(c.get("aliases", ()))) for s, _, c in all_cases]
    assert len(outputs) == len(set(outputs)), "a case is written twice"


@pytest.mark.parametrize(("scorer", "line", "case"), cases(), ids=[f"{s}:{i}" for s, i, _ in cases()])
def test_each_scorer_agrees_with_the_graders_judgement(scorer: str, line: int, case: dict) -> None:
    got = judge(scorer, case)
    assert got == case["expect"], f"{scorer}.jsonl:{line}: {case['output']!r} scored {got}, a grader says {case['expect']} ({case['why']})"


def test_agreement_is_printed_per_scorer(capsys) -> None:
    table = agreement()
    for scorer, (agree, n) in sorted(table.items()):
        print(f"{scorer}: {agree}/{n} = {agree / n:.0%} agreement with the hand labels")
    assert all(a == n for a, n in table.values())


if __name__ == "__main__":
    for s, (a, n) in sorted(agreement().items()):
        print(f"{s}: {a}/{n} = {a / n:.0%}")
