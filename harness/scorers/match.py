"""Match scorers: exact, accepted-alias, JSON-field and task-format leakage."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from harness.scorers.normalize import normalize_answer
from harness.scorers.registry import Example, Score, ScoreFn, register_scorer


@register_scorer("exact_match", version="1")
def exact_match(normalize: bool = True) -> ScoreFn:
    """1.0 when the output equals the target (after normalisation unless normalize=False)."""

    def score(output: str, example: Example) -> list[Score]:
        if example.target is None:
            return [Score("exact_match", None, "example has no target")]
        a, b = (normalize_answer(output), normalize_answer(example.target)) if normalize else (output.strip(), example.target.strip())
        return [Score("exact_match", float(a == b))]

    return score


def structured_answer(output: str) -> str | None:
    """Why ``output`` is a data structure rather than an answer in words, or None.

    A general question answered with ``{"item": "grass", ..., "colour": "green"}`` is format leakage,
    not a correct answer, even though "green" is in it. An output that is (or opens with) a JSON object
    or array, also one cut off before it closes, counts as structured.
    """
    head = output.strip()
    for fence in ("```json", "```"):
        head = head.removeprefix(fence).lstrip()
    if head.startswith(("{", "[{", "[\"")):
        return "the answer is a JSON structure (the task's output format leaked), not an answer"
    obj, _ = extract_json_object(output)
    if obj:
        return "the answer holds a JSON object (the task's output format leaked), not an answer"
    return None


@register_scorer("alias_match", version="2")
def alias_match(mode: str = "contains", max_words: int | None = None, structured_is_wrong: bool = True) -> ScoreFn:
    """1.0 when the target or an accepted alias appears in the output as whole words.

    mode="contains" accepts a chatty answer ("The capital of France is Paris."); mode="exact" wants
    the normalised output to equal one of them. max_words limits how much of the output is searched,
    so a long ramble that happens to mention the answer late is not credited. An answer given as a
    JSON object scores 0 with the reason (a leaked answer is never a correct one) unless
    structured_is_wrong=False.
    """
    if mode not in ("contains", "exact"):
        raise ValueError(f"alias_match mode must be 'contains' or 'exact', not {mode!r}")

    def score(output: str, example: Example) -> list[Score]:
        answers = [a for a in ((example.target,) if example.target else ()) + tuple(example.aliases) if a]
        if not answers:
            return [Score("alias_match", None, "example has no target or aliases")]
        if structured_is_wrong:
            leaked = structured_answer(output)
            if leaked:
                return [Score("alias_match", 0.0, leaked)]
        words = normalize_answer(output).split()
        if max_words is not None:
            words = words[:max_words]
        text = " " + " ".join(words) + " "
        for ans in answers:
            norm = normalize_answer(ans)
            if not norm:
                continue
            if (mode == "exact" and text.strip() == norm) or (mode == "contains" and f" {norm} " in text):
                return [Score("alias_match", 1.0)]
        return [Score("alias_match", 0.0)]

    return score


def extract_json_object(text: str) -> tuple[dict[str, Any] | None, str | None]:
    """Parse the first JSON object in ``text`` (a code fence or prose around it is allowed).

    Returns (object, None) or (None, reason).
    """
    text = text.strip()
    fence = re.search(r"```(?:json)?\s*(.*?)```", text, re.S)
    if fence:
        text = fence.group(1).strip()
    start = text.find("{")
    if start < 0:
        return None, "no JSON object in output"
    try:
        obj, _ = json.JSONDecoder().raw_decode(text[start:])
    except json.JSONDecodeError as exc:
        return None, f"invalid JSON: {exc.msg} at char {exc.pos}"
    if not isinstance(obj, dict):
        return None, f"JSON is a {type(obj).__name__}, not an object"
    return obj, None


def _canon(value: Any) -> Any:
    if isinstance(value, str):
        return " ".join(value.lower().split())
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {str(k): _canon(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_canon(v) for v in value]
    return value


@register_scorer("json_field", version="1")
def json_field(fields: Sequence[str] | None = None) -> ScoreFn:
    """Per-field and whole-object match of a JSON answer against a JSON target.

    Key order and whitespace do not matter; strings compare case-insensitively. Emits
    ``json_valid``, ``json_exact`` (every field right) and ``json_field/<name>`` per field. Invalid
    JSON scores 0 everywhere with the parse error stored as the reason.
    """

    def score(output: str, example: Example) -> list[Score]:
        if example.target is None:
            return [Score("json_exact", None, "example has no target")]
        target = json.loads(example.target) if isinstance(example.target, str) else example.target
        names = list(fields) if fields else sorted(target)
        obj, reason = extract_json_object(output)
        if obj is None:
            return [Score("json_valid", 0.0, reason), Score("json_exact", 0.0, reason)] + [
                Score(f"json_field/{n}", 0.0, reason) for n in names
            ]
        per = [Score(f"json_field/{n}", float(n in obj and _canon(obj[n]) == _canon(target.get(n)))) for n in names]
        exact = all(s.value == 1.0 for s in per) and set(obj) == set(target)
        return [Score("json_valid", 1.0), Score("json_exact", float(exact)), *per]

    return score


@register_scorer("format_leakage", version="2")
def format_leakage(keys: Sequence[str], min_keys: int = 1) -> ScoreFn:
    """1.0 when a general answer takes the task's output format: a JSON object with the task's keys.

    An answer leaks when it parses as a JSON object holding at least ``min_keys`` of ``keys``, or when
    it starts as such an object and was cut off by max_new_tokens before it closed (a truncated
    ``{"item": "water", "quantity": 1, ...`` is the same leak).
    """
    wanted = set(keys)
    key_re = re.compile(r'"(' + "|".join(re.escape(k) for k in sorted(wanted)) + r')"\s*:')

    def score(output: str, example: Example) -> list[Score]:
        obj, _ = extract_json_object(output)
        if obj is not None:
            leaked = len(wanted & set(obj)) >= min_keys
        else:
            head = output.lstrip().removeprefix("```json").removeprefix("```").lstrip()
            leaked = head.startswith("{") and len(set(key_re.findall(head))) >= min_keys
        return [Score("format_leakage", float(leaked))]

    return score
