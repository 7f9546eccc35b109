"""The task's output format, so leakage of *that* format can be measured on general prompts.

A JSON task (an order, a ticket triage) is known by the keys of its answers. The format comes from
the adapter's ``harness.json`` (recorded from the training completions), from the targets of a
``task`` suite evaluated in the same run, or from ``--task-format key,key``; the keys are then the
arguments of a ``format_leakage`` scorer added to every ``general`` and ``leakage`` suite.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence

from harness.records import TaskFormat

#: a key is part of the format when at least this share of the answers carry it
KEY_SHARE = 0.5


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


def record(answers: Sequence[str]) -> TaskFormat | None:
    """What ``harness.json`` stores as ``task_format`` for these training answers (None: not JSON)."""
    keys = json_keys(answers)
    return TaskFormat("json_keys", tuple(keys)) if keys else None


def parse_flag(value: str) -> tuple[str, ...]:
    """``--task-format item,quantity`` -> the keys."""
    return tuple(sorted({k.strip() for k in value.split(",") if k.strip()}))


def needs_format(suite) -> bool:  # suite: harness.suites.types.Suite
    """A general or leakage suite without its own format_leakage scorer is scored for the task's format."""
    return suite.role in ("general", "leakage") and not any(sc.name == "format_leakage" for sc in suite.scorers)


def resolve(suites: Sequence, examples: dict, adapters: Sequence, flag: str | None) -> tuple[tuple[str, ...], str]:
    """The task format's keys for this run and where they came from (for the run's record).

    Order: ``--task-format``; the JSON targets of the run's task suites; the adapters' records.
    """
    if flag:
        return parse_flag(flag), "--task-format"
    for s in suites:
        if s.role == "task":
            keys = json_keys(e.target for e in examples.get(s.name, ()))
            if keys:
                return keys, f"targets of task suite {s.name}"
    found: set[str] = set()
    for a in adapters:
        found.update(a.record.task_keys if a.record is not None else ())
    if found:
        return tuple(sorted(found)), "the adapters' harness.json (task_format)"
    return (), "unknown"


def with_leakage(suites: Sequence, keys: Sequence[str]) -> list:
    """The suites with a format_leakage scorer for ``keys`` added where ``needs_format``.

    Raises:
        SuiteError: a leakage suite has nothing to score when the task format is unknown.
    """
    from dataclasses import replace

    from harness.errors import SuiteError
    from harness.suites.types import ScorerSpec

    out = []
    for s in suites:
        if needs_format(s) and keys:
            s = replace(s, scorers=(*s.scorers, ScorerSpec("format_leakage", {"keys": list(keys)})))
        elif s.role == "leakage" and not s.scorers:
            raise SuiteError(
                f"suite {s.name} ({s.path}) measures leakage of the task's output format, and the format is not known "
                "for this run: evaluate a task suite with JSON targets in the same run, an adapter trained by the "
                "harness (its harness.json records the format), or pass --task-format key1,key2"
            )
        out.append(s)
    return out
