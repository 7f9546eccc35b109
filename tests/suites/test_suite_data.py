"""The hand-written suite data: general-knowledge counts and answers, the replay pool kept disjoint from
the general-knowledge and format-leakage prompts, and the format-leakage / text-generation suites loading in full."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from harness.scorers import scorer_names
from harness.scorers.normalize import normalize_answer
from harness.suites.spec import load_examples, load_suite

ROOT = Path(__file__).resolve().parents[2]
GK = ROOT / "suites" / "general-knowledge" / "questions.jsonl"
REPLAY = ROOT / "train" / "replay_pool" / "prompts.jsonl"
FL = ROOT / "suites" / "format-leakage" / "prompts.jsonl"

# Words dropped before comparing two prompts for "the same question in other words".
_STOP = {"what", "which", "who", "whom", "is", "are", "was", "were", "do", "does", "did", "in", "on", "of", "to",
         "for", "at", "by", "how", "many", "much", "please", "tell", "me", "you", "can", "could", "name", "called"}


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _content_words(text: str) -> frozenset[str]:
    return frozenset(w for w in normalize_answer(text).split() if w not in _STOP)


@pytest.fixture(scope="module")
def gk_rows() -> list[dict]:
    return _rows(GK)


@pytest.fixture(scope="module")
def replay_rows() -> list[dict]:
    return _rows(REPLAY)


def test_general_knowledge_counts_and_categories(gk_rows):
    assert len(gk_rows) >= 320
    per_cat = Counter(r["category"] for r in gk_rows)
    assert len(per_cat) >= 8, per_cat
    small = {c: n for c, n in per_cat.items() if n < 30}
    assert not small, f"categories with fewer than 30 questions: {small}"


def test_general_knowledge_ids_answers_aliases(gk_rows):
    ids = [r["id"] for r in gk_rows]
    dupes = [i for i, n in Counter(ids).items() if n > 1]
    assert not dupes, f"duplicate ids: {dupes}"
    assert all(re.fullmatch(r"gk-[a-z]+-\d{3}", i) for i in ids)
    for r in gk_rows:
        assert isinstance(r["answer"], str) and normalize_answer(r["answer"]), f"{r['id']}: empty answer"
        assert isinstance(r["aliases"], list), r["id"]
        assert all(isinstance(a, str) and normalize_answer(a) for a in r["aliases"]), f"{r['id']}: empty alias"
        assert r["question"].strip(), r["id"]


def test_general_knowledge_questions_unique_and_do_not_give_away_the_answer(gk_rows):
    norm = Counter(normalize_answer(r["question"]) for r in gk_rows)
    assert not [q for q, n in norm.items() if n > 1]
    # alias_match (contains) would credit a model that merely echoes the question
    for r in gk_rows:
        q = f" {normalize_answer(r['question'])} "
        for ans in [r["answer"], *r["aliases"]]:
            assert f" {normalize_answer(ans)} " not in q, f"{r['id']}: answer {ans!r} appears in the question"


def test_general_knowledge_suite_loads(gk_rows):
    suite = load_suite("general-knowledge")
    examples = load_examples(suite)
    assert len(examples) == len(gk_rows)
    # format leakage is not hard-coded to the order task: it is added for the run's task format
    assert {s.name for s in suite.scorers} == {"alias_match"}
    assert (suite.role, suite.headline) == ("general", "alias_match")
    assert examples[0].target and examples[0].category


def test_replay_pool_disjoint_from_the_general_suites(gk_rows, replay_rows):
    # questions and instructions in the general-knowledge categories, and chat (greetings, thanks, small
    # talk: the input an order adapter most readily answers with order JSON)
    assert len(replay_rows) == 280
    assert Counter(r["kind"] for r in replay_rows) == {"question": 189, "instruction": 51, "chat": 40}
    ids = [r["id"] for r in replay_rows]
    assert len(set(ids)) == len(ids)
    prompts = [r["prompt"] for r in replay_rows]
    assert all(p.strip() for p in prompts)
    assert len({normalize_answer(p) for p in prompts}) == len(prompts), "duplicate replay prompts"
    # replay never trains on a test prompt, nor on the same prompt in other words
    tests = [(r["id"], r["question"]) for r in gk_rows] + [(r["id"], r["input"]) for r in _rows(FL)]
    test_norm = {normalize_answer(q): i for i, q in tests}
    test_words = {_content_words(q): i for i, q in tests}
    clashes = []
    for r in replay_rows:
        p = r["prompt"]
        if normalize_answer(p) in test_norm:
            clashes.append((r["id"], p, test_norm[normalize_answer(p)]))
        elif _content_words(p) in test_words:
            clashes.append((r["id"], p, test_words[_content_words(p)]))
    assert not clashes, f"replay prompts that repeat a general-knowledge or format-leakage prompt: {clashes}"


def test_format_leakage_suite_loads():
    suite = load_suite("format-leakage")
    examples = load_examples(suite)
    assert len(examples) == 64
    assert {e.category for e in examples} == {"question", "instruction", "chat"}
    assert suite.scorers == () and suite.role == "leakage" and suite.headline == "format_leakage"
    assert suite.gates[0].metric == "format_leakage" and suite.gates[0].max == 0.1


def test_text_generation_suite_loads():
    missing = {"rouge", "bleu", "chrf"} - set(scorer_names())
    if missing:
        pytest.skip(f"scorers not registered yet: {', '.join(sorted(missing))}")
    examples = load_examples(load_suite("text-generation"))
    assert len(examples) == 60
    assert all(1 <= len(e.references) <= 3 for e in examples)


def test_text_generation_data():
    rows = _rows(ROOT / "suites" / "text-generation" / "examples.jsonl")
    assert len(rows) == 60 and len({r["id"] for r in rows}) == 60
    for r in rows:
        assert r["input"].strip(), r["id"]
        assert 1 <= len(r["references"]) <= 3 and all(ref.strip() for ref in r["references"]), r["id"]
