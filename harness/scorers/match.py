"""Match scorers: exact, accepted-alias, JSON-field and task-format leakage."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from harness.scorers.normalize import normalize_answer
from harness.scorers.registry import Example, Score, ScoreFn, register_scorer


@register_scorer("exact_match", version="2")  # 2: invisible characters and dotted abbreviations fold
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


#: words that, before an answer in the same clause, deny it ("It is not Paris, it is Lyon.")
_NEGATIONS = frozenset({"not", "no", "never", "neither", "nor", "isn", "wasn", "aren", "weren", "doesn", "don", "didn",
                        "cannot", "cant", "won", "hardly"})
_CLAUSE = re.compile(r"[,;:.!?()\n]+(?!\d)")  # a comma or full stop inside a number (1,000 / 16.5) is no break
#: words after which an earlier negation no longer applies ("not Saturn but Jupiter")
_CONTRAST = frozenset({"but", "rather", "instead", "however", "actually"})
#: a clause that is nothing but a denial rejects the clause before it ("Canberra? No. Sydney.")
_DENIALS = frozenset({"no", "nope", "not", "wrong", "incorrect", "false"})


def _protect_numbers(text: str) -> str:
    """Keep numbers whole through normalisation ("16.5" and "-4" are other numbers than 16 and 4), keep the
    arithmetic signs between numbers as words ("3600 / 60" is "3600 over 60"), and fold dotted abbreviations
    before the text is cut into clauses ("U.S.A." is one word, not three clauses)."""
    text = re.sub(r"\b(?:[A-Za-z]\.){2,}", lambda m: m.group(0).replace(".", ""), text)
    text = re.sub(r"(?<=\d)\.(?=\d)", "point", text)
    text = re.sub(r"(?:(?<=^)|(?<=[\s(\[=:]))[-\u2212](?=\d)", "minus", text)
    return re.sub(r"(?<=[\d\s])([*\u00d7/\u00f7+=])(?=[\s\d])", lambda m: f" {_SIGNS[m.group(1)]} ", text)


_SIGNS = {"*": "times", "\u00d7": "times", "/": "over", "\u00f7": "over", "+": "plus", "=": "equals"}
#: words that make the number next to them an operand of a calculation, not its result ("divide 3600 by 60")
_OPERAND_BEFORE = frozenset({"by", "times", "multiply", "multiplied", "divide", "divided", "over", "plus", "minus", "add",
                             "subtract", "x"})
_OPERAND_AFTER = frozenset({"times", "multiplied", "divided", "over", "plus", "minus", "x"})
_NUMBER = re.compile(r"(?:minus)?\d+(?:point\d+)?")


def _operand(before: list[str], after: list[str]) -> bool:
    return bool((before and before[-1] in _OPERAND_BEFORE) or (after and after[0] in _OPERAND_AFTER))


def _prose(output: str) -> str:
    """The output without its JSON segments: every ``{...}`` (and a last one cut off before it closes)."""
    out, depth = [], 0
    for ch in output:
        if ch == "{":
            depth += 1
        elif ch == "}" and depth:
            depth -= 1
            continue
        if depth == 0:
            out.append(ch)
    return "".join(out)


def _alias_credited(clauses: list[list[str]], norm: list[str]) -> bool:
    """Whether ``norm`` (an alias's words) stands in a clause as an answer: not denied by a negation before it
    in its clause, and not one of a list of alternatives ("Lyon, Marseille or Paris", "Paris or Lyon")."""
    k = len(norm)
    for c, words in enumerate(clauses):
        denied_after = c + 1 < len(clauses) and clauses[c + 1] and set(clauses[c + 1]) <= _DENIALS
        for i in range(len(words) - k + 1):
            if words[i:i + k] != norm or denied_after:
                continue
            before, after = words[:i], words[i + k:i + k + 1]
            last_contrast = max((j for j, w in enumerate(before) if w in _CONTRAST), default=-1)
            if _NEGATIONS & set(before[last_contrast + 1:]):
                continue
            if (before and before[-1] in ("or", "either")) or after == ["or"]:
                continue
            if k == 1 and _NUMBER.fullmatch(norm[0]) and _operand(before, after):
                continue  # "divide 3600 by 60" does not answer 60
            return True
    return False


def _restated(words: list[str], question: list[str], norm: list[str]) -> bool:
    """A number the question holds, said no more often in the output than in the question: the output may only
    restate the question ("3600 minutes ... 3600"), so the number is not credited as the answer."""
    if len(norm) != 1 or not _NUMBER.fullmatch(norm[0]) or norm[0] not in question:
        return False
    return words.count(norm[0]) <= question.count(norm[0])


@register_scorer("alias_match", version="4")  # 4: operands and numbers restated from the question
def alias_match(mode: str = "contains", max_words: int | None = None, structured_is_wrong: bool = True) -> ScoreFn:
    """1.0 when the target or an accepted alias appears in the output as whole words, as an answer.

    mode="contains" accepts a chatty answer ("The capital of France is Paris."); mode="exact" wants
    the normalised output to equal one of them. max_words limits how much of the output is searched,
    so a long ramble that happens to mention the answer late is not credited. Not credited (version 3): an
    alias denied in its clause ("It is not Paris, it is Lyon."), offered among alternatives ("Lyon,
    Marseille or Paris"), or inside another number ("16.5" or "-4" for 16 or 4), and an alias found only
    inside JSON: an answer given as (or cut off inside) a JSON object scores 0 with the reason (a leaked
    answer is never a correct one) unless structured_is_wrong=False; a right answer followed by unrelated
    JSON still counts. Dotted abbreviations and invisible characters fold ("The US" is "U.S."). Version 4: a
    number that is an operand of a calculation ("divide 3600 by 60", "60 x 24") is not the answer 60, and a
    number the question holds counts only when the output says it more often than the question does (a
    restated question is not an answer).
    """
    if mode not in ("contains", "exact"):
        raise ValueError(f"alias_match mode must be 'contains' or 'exact', not {mode!r}")

    def score(output: str, example: Example) -> list[Score]:
        answers = [a for a in ((example.target,) if example.target else ()) + tuple(example.aliases) if a]
        if not answers:
            return [Score("alias_match", None, "example has no target or aliases")]
        text, leaked = output, None
        if structured_is_wrong:
            leaked = structured_answer(output)
            prose = _prose(output)
            if leaked and (output.lstrip().startswith(("{", "[", "```")) or not normalize_answer(prose)):
                return [Score("alias_match", 0.0, leaked)]
            text = prose  # a right answer with JSON after it: the answer is the prose
        raw = _protect_numbers(text)
        words = normalize_answer(raw).split()
        if max_words is not None:
            words = words[:max_words]
            raw = " ".join(words)
        clauses = [normalize_answer(c).split() for c in _CLAUSE.split(raw)]
        question = normalize_answer(_protect_numbers(example.input or "")).split()
        for ans in answers:
            norm = normalize_answer(_protect_numbers(ans)).split()
            if not norm:
                continue
            if mode == "exact":
                if words == norm:
                    return [Score("alias_match", 1.0)]
            elif _alias_credited(clauses, norm) and not _restated(words, question, norm):
                return [Score("alias_match", 1.0)]
        # not in the prose; when the output also holds JSON, that is where the answer went: say so
        return [Score("alias_match", 0.0, leaked)]

    return score


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    dup = sorted({k for k in keys if keys.count(k) > 1})
    if dup:
        raise ValueError(f"duplicate key {dup[0]!r}")
    return dict(pairs)


def extract_json_object(text: str) -> tuple[dict[str, Any] | None, str | None]:
    """Parse the first JSON object in ``text`` (a code fence or prose around it is allowed).

    An object with a duplicate key is refused (a JSON reader keeps the last value silently; which one the
    model meant is unknown). Returns (object, None) or (None, reason).
    """
    text = text.strip()
    fence = re.search(r"```(?:json)?\s*(.*?)```", text, re.S)
    if fence:
        text = fence.group(1).strip()
    start = text.find("{")
    if start < 0:
        return None, "no JSON object in output"
    try:
        obj, _ = json.JSONDecoder(object_pairs_hook=_no_duplicates).raw_decode(text[start:])
    except json.JSONDecodeError as exc:
        return None, f"invalid JSON: {exc.msg} at char {exc.pos}"
    except ValueError as exc:
        return None, f"invalid JSON object: {exc}"
    if not isinstance(obj, dict):
        return None, f"JSON is a {type(obj).__name__}, not an object"
    return obj, None


def _canon(value: Any) -> Any:
    """A JSON value for comparison: strings case- and space-folded, 2.0 the number 2; types kept apart (true
    is not 1, "1" is not 1: ``(type tag, value)`` pairs, since Python has True == 1)."""
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, str):
        return ("str", " ".join(value.lower().split()))
    if isinstance(value, (int, float)):
        return ("num", int(value) if isinstance(value, float) and value.is_integer() else value)
    if isinstance(value, dict):
        return {str(k): _canon(v) for k, v in value.items()}
    if isinstance(value, list):
        return ("list", [_canon(v) for v in value])
    return ("null", None) if value is None else value


@register_scorer("json_field", version="2")  # 2: JSON types compared strictly, duplicate keys refused
def json_field(fields: Sequence[str] | None = None) -> ScoreFn:
    """Per-field and whole-object match of a JSON answer against a JSON target.

    Key order and whitespace do not matter; strings compare case-insensitively; JSON types do matter (``true``
    is not ``1``, ``"1"`` is not ``1``) and an object with a duplicate key is invalid. Emits
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


@register_scorer("format_leakage", version="3")
def format_leakage(keys: Sequence[str] | None = None, min_keys: int = 1, pattern: str | None = None,
                   labels: Sequence[str] | None = None) -> ScoreFn:
    """1.0 when a general answer takes the task's output format; give exactly one of ``keys``, ``pattern``, ``labels``.

    ``keys`` (a JSON task): an object holding the task's keys. Version 3 looks anywhere in the answer, the way a
    careful grader reads it: an object after prose ("Sure! Here is the order: {"item": ...") or after a stray
    character (``"{"item": ...``), closed or cut off by max_new_tokens, with double, single or no quotes around
    the keys and the keys in any case. An answer leaks when one ``{`` opens a segment in which at least
    ``min_keys`` of ``keys`` appear as keys (``"item":``, ``'Item':``, ``item:``).
    ``pattern`` (a task of another shape, e.g. ``\\d{4}-\\d{2}-\\d{2}``): the answer starts with a match (after
    spaces, quotes, backticks or a code fence), not followed by a letter or digit.
    ``labels`` (a classification task): the answer is one of the labels alone, or opens with one followed by
    punctuation ("Positive." / "positive, because ..."), in any case.
    Errs towards leakage, never away from it.
    """
    given = [x for x in (keys, pattern, labels) if x]
    if len(given) != 1:
        raise ValueError("format_leakage needs exactly one of keys (JSON), pattern (a regex) or labels")
    if pattern:
        opening = re.compile(r"""\s*(?:```\w*\s*)?["'`]*\s*(?:""" + pattern + r")(?![^\W_])")

        def by_pattern(output: str, example: Example) -> list[Score]:
            return [Score("format_leakage", float(opening.match(output) is not None))]

        return by_pattern
    if labels:
        alternatives = "|".join(re.escape(str(x).strip()) for x in sorted(labels, key=len, reverse=True))
        alone = re.compile(r"""\s*["'`*]*\s*(?:""" + alternatives + r""")\s*["'`*]*\s*(?:$|[.!,:;\n])""", re.IGNORECASE)

        def by_label(output: str, example: Example) -> list[Score]:
            return [Score("format_leakage", float(alone.match(output) is not None))]

        return by_label
    assert keys is not None
    wanted = sorted({k.lower() for k in keys}, key=len, reverse=True)
    key_re = re.compile(r"""(?:^|[{,\n])\s*\\?["'`]?\s*(""" + "|".join(re.escape(k) for k in wanted) + r""")\s*\\?["'`]?\s*:""",
                        re.IGNORECASE)

    def segments(output: str) -> list[str]:
        out = []
        for i, ch in enumerate(output):
            if ch != "{":
                continue
            depth, end = 0, len(output)
            for j in range(i, len(output)):
                depth += {"{": 1, "}": -1}.get(output[j], 0)
                if depth == 0:
                    end = j + 1
                    break
            out.append(output[i:end])
        return out

    def score(output: str, example: Example) -> list[Score]:
        found = max((len({m.group(1).lower() for m in key_re.finditer(seg)}) for seg in segments(output)), default=0)
        return [Score("format_leakage", float(found >= min_keys))]

    return score
