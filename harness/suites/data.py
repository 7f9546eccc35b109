"""A suite's data: the data file checked before anything reads it (``check_jsonl``: JSONL line by line;
``bad_text``: strings that are not valid Unicode), its rows read (``harness.util.datafiles``) and mapped to
examples (``load_examples``: ids, empty inputs, non-finite targets, over-long fields cut and flagged, every
example's template rendered), and the examples a limited run takes (``Limit``, ``subsample``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from harness.errors import SuiteError
from harness.scorers import Example
from harness.suites.templates import render_user_text
from harness.util.datafiles import refuse_constant

if TYPE_CHECKING:
    from harness.suites.types import Suite


def check_jsonl(path: Path) -> list[str]:
    """JSONL is checked line by line here, because `datasets` reports a bad line without its number."""
    return scan_jsonl(path)[1]


def scan_jsonl(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """(rows, problems) of a JSONL file in one pass: every line parsed once, each bad one named with its
    number (malformed JSON, not an object, a NaN constant, invalid Unicode); the rows are the lines that
    are objects, as written (``harness.util.datafiles.pad_rows`` lays them out as `datasets` would). Other
    formats: ([], []), `datasets` reads and checks those."""
    if path.suffix != ".jsonl":
        return [], []
    errors = []
    rows: list[dict[str, Any]] = []
    with open(path, encoding="utf-8", errors="strict") as f:
        try:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line, parse_constant=refuse_constant)
                except json.JSONDecodeError as exc:
                    errors.append(f"{path}:{n}: malformed JSON line ({exc.msg} at column {exc.colno})")
                    continue
                except ValueError as exc:
                    errors.append(f"{path}:{n}: {exc}")
                    continue
                if not isinstance(row, dict):
                    errors.append(f"{path}:{n}: each line must be a JSON object")
                    continue
                bad = bad_text(row)
                if bad:
                    errors.append(f"{path}:{n}: {bad}")
                rows.append(row)
        except UnicodeDecodeError as exc:
            return [], [f"{path}: not UTF-8 (byte offset {exc.start}); re-save the file as UTF-8"]
    if not rows and not errors:
        errors.append(f"{path}: empty: no JSON lines in it; add one object per line")
    return rows, errors


def bad_text(value: Any, where: str = "") -> str | None:
    """Describe the first string in ``value`` that cannot be stored as UTF-8 (a lone surrogate such as
    the escape \\ud800), or None when every string is valid."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            field_name = f"field {where!r}" if where else "a value"
            return (f"{field_name} holds a lone surrogate {value[exc.start]!r} at character {exc.start}, which is not "
                    "valid Unicode; fix the escape or re-export the data as UTF-8")
        return None
    if isinstance(value, dict):
        for k, v in value.items():
            found = bad_text(k, where) or bad_text(v, str(k) if not where else f"{where}.{k}")
            if found:
                return found
    elif isinstance(value, list):
        for v in value:
            found = bad_text(v, where)
            if found:
                return found
    return None


def _as_tuple(v: Any) -> tuple[str, ...]:
    if v is None:
        return ()
    if isinstance(v, str):
        return (v,)
    return tuple(str(x) for x in v if x is not None)


def load_examples(suite: Suite, limit: int | Limit | None = None) -> list[Example]:
    """Read the suite's data (``harness.util.datafiles``) and map its columns to examples (``limit``: see ``subsample``)."""
    from harness.util.datafiles import is_reader_error, read_rows

    if suite.lmeval is not None:  # an lm-eval task YAML: its own templates make the examples
        from harness.suites.lmeval import load_task_examples

        docs = load_task_examples(suite)
        problems = [f"{suite.path}: document {ex.id}: {why}" for ex in docs if (why := bad_text(dict(ex.fields)))]
        if problems:
            raise SuiteError(f"{len(problems)} problem(s) in data of suite {suite.name}:\n  " + "\n  ".join(problems[:50]))
        return subsample(docs, limit)
    src = suite.data_path
    try:
        # a saved DatasetDict without data.split: its first split
        rows, column_names = read_rows(src, suite.split, default_split=None)
    except Exception as exc:
        if not is_reader_error(exc):
            raise
        cause = exc.__cause__ or exc
        raise SuiteError(
            f"{src}: cannot be read as suite data ({type(cause).__name__}: {str(cause).splitlines()[0][:200] if str(cause) else ''}); "
            f"fix the file or point data.path in {suite.path} at another"
        ) from None
    f = suite.fields
    missing = [k for k in ("input",) if f[k] not in column_names]
    if missing:
        raise SuiteError(
            f"{suite.data_path}: column {f['input']!r} (suite field 'input') not found; columns: "
            f"{', '.join(column_names)}; fix: map it under data.fields in {suite.path}"
        )
    examples, seen, errors = [], set(), []
    cap = suite.max_chars
    for n, row in enumerate(rows):
        ex_id = str(row[f["id"]]) if f["id"] in row and row[f["id"]] is not None else str(n)
        if ex_id in seen:
            errors.append(f"{suite.data_path}: row {n + 1}: duplicate id {ex_id!r}")
        seen.add(ex_id)
        bad = bad_text(row)
        if bad:  # Parquet and saved datasets skip check_jsonl
            errors.append(f"{suite.data_path}: row {n + 1} (id {ex_id}): {bad}")
            continue
        text = row.get(f["input"])
        if text is None or not str(text).strip():
            errors.append(f"{suite.data_path}: row {n + 1} (id {ex_id}): empty {f['input']!r}")
            continue
        target = row.get(f["target"])
        if isinstance(target, float) and not math.isfinite(target):
            errors.append(f"{suite.data_path}: row {n + 1} (id {ex_id}): target is {target!r}; write the answer as text")
            continue
        if target is not None and not isinstance(target, str):
            target = json.dumps(target, sort_keys=True)
        truncated: list[str] = []
        row = dict(row)
        for col, value in list(row.items()):
            if isinstance(value, str) and len(value) > cap:
                # A 10 MB field would be tokenized, stored and shown whole; keep a bounded head and say so.
                row[col] = value[:cap]
                truncated.append(str(col))
        text = str(row.get(f["input"]))
        target = target[:cap] if target is not None and len(target) > cap else target
        refs = tuple(r[:cap] for r in _as_tuple(row.get(f["references"]))) or ((target,) if target else ())
        choices: tuple[str, ...] = ()
        gold = None
        if suite.kind == "multiple_choice":
            choices, gold, problem = _choices(row.get(f["choices"]), row.get(f["target"]), f)
            if problem:
                errors.append(f"{suite.data_path}: row {n + 1} (id {ex_id}): {problem}")
                continue
            target = choices[gold]
        elif suite.kind == "loglikelihood" and not target:
            errors.append(f"{suite.data_path}: row {n + 1} (id {ex_id}): no {f['target']!r}: a loglikelihood suite "
                          "scores the target as the continuation of the prompt")
            continue
        examples.append(Example(
            id=ex_id, input=text, target=target, aliases=_as_tuple(row.get(f["aliases"])), references=refs,
            category=row.get(f["category"]), fields=row, truncated=tuple(truncated), choices=choices, gold=gold,
        ))
    if errors:
        raise SuiteError(f"{len(errors)} problem(s) in data of suite {suite.name}:\n  " + "\n  ".join(errors[:50]))
    if not examples:
        raise SuiteError(f"suite {suite.name}: {suite.data_path} holds no examples; a suite with none can never pass")
    picked = subsample(examples, limit)
    # Every example is rendered now, so a template mistake or a sandbox violation surfaces before any
    # model loads (and names the example), not in the middle of a run.
    for ex in picked:
        render_user_text(suite, ex)
    return picked


def _choices(raw: Any, target: Any, f: Mapping[str, str]) -> tuple[tuple[str, ...], int, str | None]:
    """A multiple-choice row's choices and the index of the right one, or a problem naming the column: the
    choices a list of at least two distinct non-empty strings; the target an index into them or one of them."""
    if not isinstance(raw, (list, tuple)) or len(raw) < 2 or not all(isinstance(c, str) and c.strip() for c in raw):
        return (), 0, (f"{f['choices']!r} must be a list of at least two non-empty strings (the choices), not "
                       f"{str(raw)[:80]!r}; map the column under data.fields.choices")
    choices = tuple(raw)
    if len(set(choices)) != len(choices):
        return (), 0, f"{f['choices']!r} lists the same choice twice ({choices!r}): a right answer must be one choice"
    if isinstance(target, bool) or target is None:
        return (), 0, f"no {f['target']!r}: give the right choice's index (0-based) or its text"
    if isinstance(target, int) or (isinstance(target, str) and target.isdigit() and target not in choices):
        index = int(target)
        if not 0 <= index < len(choices):
            return (), 0, f"{f['target']!r} is {index}, not an index into its {len(choices)} choices (0-based)"
        return choices, index, None
    if isinstance(target, str) and target in choices:
        return choices, choices.index(target), None
    return (), 0, f"{f['target']!r} {str(target)[:60]!r} is neither one of the choices nor an index into them"


@dataclass(frozen=True)
class Limit:
    """How many examples of each suite a run takes, and how they are picked (both the same every run).

    ``stratified`` (``--limit``): round-robin across the suite's categories, each category's examples
    in file order, so every category is in (as evenly as ``n`` allows); the picked examples keep their
    file order. ``first`` (``--limit-per-suite``): the first ``n`` rows in file order, whatever their
    categories (lm-evaluation-harness's ``--limit``).
    """

    n: int
    how: Literal["stratified", "first"] = "stratified"


def subsample(examples: Sequence[Example], limit: int | Limit | None) -> list[Example]:
    """``limit`` examples (an int: a stratified sample; see ``Limit``), in file order.

    A limited run of a suite sorted by category would otherwise see only its first category; the
    stratified sample keeps every category in (as evenly as the limit allows) and is the same subset
    on every run.
    """
    if limit is None:
        return list(examples)
    lim = limit if isinstance(limit, Limit) else Limit(limit)
    if lim.n >= len(examples):
        return list(examples)
    if lim.how == "first":
        return list(examples[: lim.n])
    groups: dict[object, list[int]] = {}
    for i, ex in enumerate(examples):
        groups.setdefault(ex.category, []).append(i)
    picked: list[int] = []
    queues = [list(reversed(g)) for g in groups.values()]
    while len(picked) < lim.n:
        for q in queues:
            if q and len(picked) < lim.n:
                picked.append(q.pop())
    return [examples[i] for i in sorted(picked)]
