"""The task's output format, so leakage of *that* format can be measured on general prompts, for any task.

A task's answers have a shape an adapter can carry over into answers where it does not belong ("What is
the capital of France?" answered as order JSON, or as ``1999-08-31``). The format is one of:

- ``json_keys``: JSON objects with these keys (an order, a ticket triage);
- ``regex``: answers that start with a match of this pattern (an ISO date, a product code);
- ``labels``: answers that are only one of a closed set of labels (sentiment, a category).

Where it comes from, first found: ``--task-format``; a task suite's own ``format:`` (``{json: [keys]}``,
``{regex: PATTERN}``, ``{choices: [labels]}``); inferred from the targets of a ``task`` suite in the run
(``infer``: JSON keys; else a character-class shape nearly every target shares; else a closed label set); the
adapters' ``harness.json`` (recorded from the training answers the same way). The run records the format
and where it came from; a ``format_leakage`` scorer for it is added to every ``general`` and ``leakage``
suite, so the built-in suites report leakage of the user's own format without being copied.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from harness.records import TaskFormat

#: a key is part of the format when at least this share of the answers carry it
KEY_SHARE = 0.5
#: a closed label set: at most this many distinct answers (and at most a third of the answers), each at most
#: LABEL_WORDS words, seen at least LABEL_MIN_ROWS times in all
MAX_LABELS = 20
LABEL_WORDS = 4
LABEL_MIN_ROWS = 4
#: a shape: at least this share of the targets have it, and it holds a digit or a separator, and is at least
#: SHAPE_MIN_CHARS characters long (a bare word or number is no format: general answers have it all the time)
SHAPE_SHARE = 0.9
SHAPE_MIN_CHARS = 4
KINDS = ("json_keys", "regex", "labels")
#: the longest format pattern accepted (an ISO date's is 22 characters)
MAX_PATTERN_CHARS = 300


def json_keys(answers: Iterable[str | None]) -> tuple[str, ...]:
    """The keys most answers carry, when most answers are JSON objects; () otherwise."""
    counts: Counter[str] = Counter()
    n = n_obj = 0
    for a in answers:
        if a is None:
            continue
        n += 1
        try:
            obj = json.loads(a)
        except (TypeError, ValueError):
            continue
        if isinstance(obj, dict) and obj:
            n_obj += 1
            counts.update(str(k) for k in obj)
    if not n or n_obj < KEY_SHARE * n:
        return ()
    return tuple(sorted(k for k, c in counts.items() if c >= KEY_SHARE * n_obj))


def labels(answers: Iterable[str | None]) -> tuple[str, ...]:
    """The label set, when the answers are a few short labels each repeated; () otherwise."""
    seen = [a.strip() for a in answers if a is not None and a.strip()]
    distinct = {a.lower(): a for a in seen}
    if len(seen) < LABEL_MIN_ROWS or not 2 <= len(distinct) <= min(MAX_LABELS, len(seen) // 3):
        return ()
    if any(len(a.split()) > LABEL_WORDS for a in distinct.values()):
        return ()
    return tuple(sorted(distinct.values(), key=str.lower))


def shape(text: str) -> str:
    """A target's shape as a regex: digit runs by their length, letter runs as words, spaces as spaces, every
    other character itself (``1999-08-31`` -> ``\\d{4}-\\d{2}-\\d{2}``, ``SKU-4411`` -> ``[A-Za-z]+-\\d{4}``)."""
    out = []
    for m in re.finditer(r"\d+|[^\W\d_]+|\s+|.", text.strip()):
        run = m.group(0)
        if run[0].isdigit():
            out.append(f"\\d{{{len(run)}}}")
        elif run[0].isalpha():
            out.append("[^\\W\\d_]+")
        elif run[0].isspace():
            out.append("\\s+")
        else:
            out.append(re.escape(run))
    return "".join(out)


def common_shape(answers: Iterable[str | None]) -> str | None:
    """The shape at least ``SHAPE_SHARE`` of the answers have, when it is specific enough to be a format: its
    answers hold a digit or a separator and are ``SHAPE_MIN_CHARS`` characters or longer (a bare word is no
    format: general answers are words all the time)."""
    texts = [a.strip() for a in answers if a is not None and a.strip()]
    shapes = Counter(shape(a) for a in texts)
    if not shapes:
        return None
    best, n = shapes.most_common(1)[0]
    if n < SHAPE_SHARE * len(texts) or n < LABEL_MIN_ROWS:
        return None
    example = next(a for a in texts if shape(a) == best)
    specific = any(c.isdigit() or not (c.isalnum() or c.isspace()) for c in example)
    return best if specific and len(example) >= SHAPE_MIN_CHARS else None


def infer(answers: Sequence[str | None]) -> tuple[TaskFormat | None, str]:
    """The format these answers share, and how it was found (or why none was)."""
    keys = json_keys(answers)
    if keys:
        return TaskFormat("json_keys", keys), f"JSON objects with keys {', '.join(keys)}"
    pattern = common_shape(answers)  # before labels: repeated dates are a shape, not a closed set of dates
    if pattern:
        return TaskFormat("regex", (pattern,)), f"answers shaped like {pattern}"
    found = labels(answers)
    if found:
        return TaskFormat("labels", found), f"a closed set of {len(found)} labels ({', '.join(found[:6])})"
    return None, "the targets share no JSON keys, label set or shape"


def record(answers: Sequence[str]) -> TaskFormat | None:
    """What ``harness.json`` stores as ``task_format`` for these training answers (None: no format found)."""
    return infer(answers)[0]


def parse_flag(value: str) -> TaskFormat:
    """``--task-format``: ``item,quantity`` (JSON keys), ``regex:PATTERN`` or ``labels:a|b|c``.

    Raises:
        UsageError: an empty value, a pattern that does not compile or matches the empty string.
    """
    from harness.errors import UsageError

    if value.startswith("regex:"):
        return TaskFormat("regex", (check_pattern(value[6:], "--task-format regex:", UsageError),))
    if value.startswith("labels:"):
        found = tuple(dict.fromkeys(x.strip() for x in value[7:].split("|") if x.strip()))
        if not found:
            raise UsageError("--task-format labels: give the labels, e.g. labels:positive|negative|neutral")
        return TaskFormat("labels", found)
    keys = tuple(sorted({k.strip() for k in value.split(",") if k.strip()}))
    if not keys:
        raise UsageError("--task-format: give JSON keys (item,quantity), regex:PATTERN or labels:a|b|c")
    return TaskFormat("json_keys", keys)


def check_pattern(pattern: Any, where: str, error: type[Exception]) -> str:
    """A format regex that compiles and does not match the empty answer (it would call every answer leaked)."""
    if not isinstance(pattern, str) or not pattern.strip():
        raise error(f"{where} must be a non-empty regular expression")
    if len(pattern) > MAX_PATTERN_CHARS:
        # Python's re has no timeout: a long hostile pattern is the likeliest to backtrack for ever
        raise error(f"{where} is {len(pattern)} characters; a format pattern is at most {MAX_PATTERN_CHARS}")
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise error(f"{where} {pattern!r} is not a valid regular expression ({exc})") from None
    if compiled.fullmatch(""):
        raise error(f"{where} {pattern!r} matches an empty answer, so every answer would count as leaked")
    return pattern


def parse_declared(value: Any, where: str) -> tuple[TaskFormat | None, list[str]]:
    """A suite's ``format:`` (``{json: [keys]}``, ``{regex: PATTERN}`` or ``{choices: [labels]}``), with problems."""
    if not isinstance(value, Mapping) or len(value) != 1:
        return None, [f"{where}: format must be one of {{json: [keys]}}, {{regex: PATTERN}}, {{choices: [labels]}}"]
    (kind, arg), = value.items()
    if kind == "regex":
        try:
            return TaskFormat("regex", (check_pattern(arg, f"{where}: format.regex", ValueError),)), []
        except ValueError as exc:
            return None, [str(exc)]
    if kind in ("json", "choices"):
        items = arg if isinstance(arg, list) else None
        if not items or not all(isinstance(x, str) and x.strip() for x in items):
            return None, [f"{where}: format.{kind} must be a non-empty list of strings (YAML reads yes, no, on, off and "
                          f"numbers as other types: quote them), not {arg!r}"]
        if kind == "json":
            return TaskFormat("json_keys", tuple(sorted(set(items)))), []
        return TaskFormat("labels", tuple(dict.fromkeys(items))), []
    return None, [f"{where}: unknown format {kind!r}; use json, regex or choices"]


def describe(fmt: TaskFormat | None) -> str:
    """One phrase for a format, as messages and the run's record show it."""
    if fmt is None:
        return "unknown"
    if fmt.kind == "json_keys":
        return f"JSON with keys {', '.join(fmt.keys)}"
    if fmt.kind == "regex":
        return f"answers starting with a match of {fmt.keys[0]}"
    return f"answers that are only a label ({' | '.join(fmt.keys)})"


def to_config(fmt: TaskFormat | None, source: str) -> dict[str, Any]:
    """The run's record of its task format (``keys`` kept for JSON, as every earlier run stored it)."""
    return {"kind": fmt.kind if fmt else None, "keys": list(fmt.keys) if fmt and fmt.kind == "json_keys" else [],
            "value": list(fmt.keys) if fmt else [], "described": describe(fmt), "source": source}


def scorer_args(fmt: TaskFormat) -> dict[str, Any]:
    """The ``format_leakage`` scorer's arguments for a format."""
    if fmt.kind == "json_keys":
        return {"keys": list(fmt.keys)}
    if fmt.kind == "regex":
        return {"pattern": fmt.keys[0]}
    return {"labels": list(fmt.keys)}


def needs_format(suite) -> bool:  # suite: harness.suites.types.Suite
    """A general or leakage suite without its own format_leakage scorer is scored for the task's format."""
    return (suite.role in ("general", "leakage") and not getattr(suite, "likelihood", False)
            and not any(sc.name == "format_leakage" for sc in suite.scorers))


def resolve(suites: Sequence, examples: dict, adapters: Sequence,
            flag: str | TaskFormat | None) -> tuple[TaskFormat | None, str]:
    """The task format for this run and where it came from (for the run's record).

    Order: ``--task-format``; a task suite's declared ``format:``; the format inferred from a task suite's
    targets; the adapters' records.
    """
    if isinstance(flag, TaskFormat):
        return flag, "given"
    if flag:
        return parse_flag(flag), "--task-format"
    task = [s for s in suites if s.role == "task" and not getattr(s, "likelihood", False)]
    for s in task:
        if getattr(s, "format", None) is not None:
            return s.format, f"declared by task suite {s.name} (format:)"
    why = []
    for s in task:
        fmt, how = infer([e.target for e in examples.get(s.name, ())])
        if fmt is not None:
            return fmt, f"inferred from the targets of task suite {s.name}: {how}"
        why.append(f"task suite {s.name}: {how}")
    found = [f for a in adapters if a.record is not None and (f := a.record.task_format) is not None and _usable(f)]
    json_found = sorted({k for f in found if f.kind == "json_keys" for k in f.keys})
    if json_found:
        return TaskFormat("json_keys", tuple(json_found)), "the adapters' harness.json (task_format)"
    if found:
        return found[0], "the adapters' harness.json (task_format)"
    return None, "unknown" + (f" ({'; '.join(why)})" if why else "")


def _usable(fmt: TaskFormat) -> bool:
    """A recorded format this harness can score (a ``harness.json`` is input like any other: an unknown kind or
    a pattern that does not compile is not used)."""
    if fmt.kind not in KINDS or not fmt.keys:
        return False
    if fmt.kind == "regex":
        try:
            check_pattern(fmt.keys[0], "task_format", ValueError)
        except ValueError:
            return False
    return True


def with_leakage(suites: Sequence, fmt: TaskFormat | None) -> list:
    """The suites with a format_leakage scorer for ``fmt`` added where ``needs_format``.

    Raises:
        SuiteError: a leakage suite has nothing to score when the task format is unknown.
    """
    from dataclasses import replace

    from harness.errors import SuiteError
    from harness.suites.types import ScorerSpec

    out = []
    for s in suites:
        if needs_format(s) and fmt is not None:
            s = replace(s, scorers=(*s.scorers, ScorerSpec("format_leakage", scorer_args(fmt))))
        elif s.role == "leakage" and not s.scorers:
            raise SuiteError(
                f"suite {s.name} ({s.path}) measures leakage of the task's output format, and the format is not known "
                "for this run: declare it in the task suite (format: {json: [keys]}, {regex: PATTERN} or {choices: "
                "[labels]}), evaluate a task suite whose targets show it, an adapter trained by the harness (its "
                "harness.json records it), or pass --task-format (key1,key2 / regex:PATTERN / labels:a|b)"
            )
        out.append(s)
    return out
