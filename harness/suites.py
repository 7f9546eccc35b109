"""Suites: parse and validate ``suite.yaml`` files (all errors at once, each with file and line).

A suite is data (see ``suites/FORMAT.md``): a YAML spec beside its data file. ``load_suite`` turns it
into a frozen ``Suite``; ``load_examples`` reads the data (``harness.datafiles``) and applies the field
mapping. Nothing here runs a model.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from harness.datafiles import DATA_SUFFIXES, refuse_constant
from harness.errors import SafetyError, SuiteError
from harness.files import update_with_file
from harness.generate import GenerationSettings
from harness.scorers import Example, check_scorer_args, get_scorer, scorer_names, unknown_scorer
from harness.yamlsafe import compose_bounded, read_spec_text

SUITES_DIR = Path(__file__).resolve().parent.parent / "suites"
FIELDS = ("id", "input", "target", "aliases", "references", "category")
_TOP_KEYS = {"name", "version", "description", "role", "headline", "metrics", "data", "prompt", "generation",
             "scorers", "gates"}
#: task: what the adapter was trained for; general: what the base could do (retention is computed, and
#: leakage of the task's format); leakage: prompts where the task format must not appear; reference:
#: texts scored against references (ROUGE/BLEU), reported beside the rest
ROLES = ("task", "general", "leakage", "reference")
# The metric a scorer's suite is judged by, unless the suite names its own headline.
_DEFAULT_HEADLINE = {"exact_match": "exact_match", "alias_match": "alias_match", "json_field": "json_exact",
                     "format_leakage": "format_leakage", "regex": "regex", "rouge": "rougeL", "bleu": "bleu",
                     "chrf": "chrf", "perplexity": "perplexity"}
# Metrics where a lower value is better; every other metric is higher-is-better unless a suite says so.
LOWER_IS_BETTER = frozenset({"format_leakage", "nll", "perplexity"})


def higher_is_better(metric: str, overrides: Mapping[str, bool] | None = None) -> bool:
    """Which way ``metric`` points: a suite's ``metrics: {m: {higher_is_better: ...}}`` first, then the
    built-in table (format leakage, NLL and perplexity are lower-is-better)."""
    if overrides and metric in overrides:
        return bool(overrides[metric])
    return metric not in LOWER_IS_BETTER
_NAME = re.compile(r"^[a-z0-9][a-z0-9-]*$")


@dataclass(frozen=True)
class PromptSpec:
    template: str = "{{ input }}"
    system: str | None = None
    raw: bool = False


@dataclass(frozen=True)
class ScorerSpec:
    name: str
    args: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class GateSpec:
    """One entry of a suite's ``gates:`` (see ``harness.gates``): ``min``/``max`` bound the metric's mean
    (``metric: retention`` on a general suite: its retention); ``min_gain`` the gain over the base model;
    ``max_drop`` the paired drop against a baseline adapter."""

    metric: str
    min: float | None = None
    max: float | None = None
    min_gain: float | None = None
    max_drop: float | None = None


@dataclass(frozen=True)
class Suite:
    """A validated suite. ``suite_id`` hashes the spec and the data, so any edit changes it."""

    name: str
    version: str
    description: str
    path: Path
    data_path: Path
    split: str | None
    fields: Mapping[str, str]
    prompt: PromptSpec
    generation: GenerationSettings
    scorers: tuple[ScorerSpec, ...]
    gates: tuple[GateSpec, ...]
    suite_id: str
    role: str = "task"
    headline: str | None = None
    #: metric -> higher_is_better, as the suite declares it (others follow ``higher_is_better``)
    directions: Mapping[str, bool] = field(default_factory=dict)
    #: text fields longer than this many characters are cut and flagged (data.max_chars)
    max_chars: int = 16_384


class _Lines:
    """YAML loading that remembers the line of every key, for error messages.

    The walk below expands aliases, so the node graph is bounded first (``harness.yamlsafe``).
    """

    def __init__(self, text: str, path: Path) -> None:
        self.path = path
        self.lines: dict[tuple[Any, ...], int] = {}
        node = compose_bounded(text, path, SuiteError)
        self.data = self._build(node, ()) if node is not None else None

    def _build(self, node: yaml.Node, at: tuple[Any, ...]) -> Any:
        self.lines[at] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            out = {}
            for k, v in node.value:
                key = yaml.safe_load(yaml.serialize(k))
                here = (*at, key)  # a name first: mypy 2.4 misreads d[(*a, b)] as Python 3.11's d[*a, b]
                self.lines[here] = k.start_mark.line + 1
                out[key] = self._build(v, here)
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self._build(v, (*at, i)) for i, v in enumerate(node.value)]
        return yaml.safe_load(yaml.serialize(node))

    def where(self, *at: Any) -> str:
        while at and at not in self.lines:
            at = at[:-1]
        return f"{self.path}:{self.lines.get(at, 1)}"


def builtin_suites() -> list[str]:
    return sorted(p.parent.name for p in SUITES_DIR.glob("*/suite.yaml"))


def resolve_suite_path(name_or_path: str | Path) -> Path:
    """A built-in suite name, a suite directory, or a path to a YAML file."""
    p = Path(name_or_path).expanduser()
    if p.is_dir() and (p / "suite.yaml").is_file():
        return p / "suite.yaml"
    if p.is_file():
        return p
    builtin = SUITES_DIR / str(name_or_path) / "suite.yaml"
    if builtin.is_file():
        return builtin
    raise SuiteError(
        f"no suite {str(name_or_path)!r}: not a file, not a directory with suite.yaml (cwd {Path.cwd()}), and not a "
        f"built-in suite; built-in suites: {', '.join(builtin_suites()) or 'none'}"
    )


def load_suite(name_or_path: str | Path) -> Suite:
    """Parse and validate a suite; raise one SuiteError listing every problem found."""
    from harness.metrics import model_metric_names

    path = resolve_suite_path(name_or_path)
    try:
        y = _Lines(read_spec_text(path, "suite spec", SuiteError), path)
    except yaml.YAMLError as exc:
        raise SuiteError(f"{path}: not valid YAML: {exc}".replace("\n", " ")) from None
    spec = y.data
    if not isinstance(spec, dict):
        raise SuiteError(f"{path}:1: a suite must be a YAML mapping with name, version, data, scorers")
    errors: list[str] = []

    def err(msg: str, *at: Any) -> None:
        errors.append(f"{y.where(*at)}: {msg}")

    for key in sorted(set(spec) - _TOP_KEYS, key=str):
        err(f"unknown key {key!r}; allowed: {', '.join(sorted(_TOP_KEYS))}", key)
    name = spec.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        err(f"name must be lower-case letters, digits and dashes, not {name!r}", "name")
    if spec.get("version") is None:
        err("version is required (bump it when data or prompts change)", "version")
    role = spec.get("role", "task")
    if role not in ROLES:
        err(f"role must be one of {', '.join(ROLES)}, not {role!r}", "role")
    directions: dict[str, bool] = {}
    metrics_spec = spec.get("metrics") or {}
    if not isinstance(metrics_spec, dict):
        err("metrics must map metric names to {higher_is_better: true|false}", "metrics")
    else:
        for m, d in metrics_spec.items():
            if not isinstance(d, dict) or set(d) - {"higher_is_better"} or not isinstance(d.get("higher_is_better"), bool):
                err(f"metrics.{m} must be {{higher_is_better: true}} or {{higher_is_better: false}}", "metrics", m)
            else:
                directions[str(m)] = d["higher_is_better"]

    data = spec.get("data")
    data_path = path.parent
    split = None
    max_chars = default_max_chars()
    fields: dict[str, str] = {f: f for f in FIELDS}
    if not isinstance(data, dict) or "path" not in data:
        err("data.path is required (a .jsonl/.json/.csv/.parquet file or a local dataset directory)", "data")
    else:
        data_path = (path.parent / str(data["path"])).resolve()
        split = data.get("split")
        if not data_path.exists():
            err(f"data file {data_path} does not exist", "data", "path")
        elif data_path.is_file() and data_path.suffix not in DATA_SUFFIXES:
            err(f"data file {data_path.name}: unsupported type; use one of {', '.join(DATA_SUFFIXES)}", "data", "path")
        if "max_chars" in data:
            mc = data.get("max_chars")
            if isinstance(mc, bool) or not isinstance(mc, int) or mc <= 0:
                err(f"data.max_chars must be a positive integer, not {mc!r}", "data", "max_chars")
            else:
                max_chars = mc
        mapping = data.get("fields") or {}
        if not isinstance(mapping, dict):
            err("data.fields must map suite fields to columns", "data", "fields")
        else:
            for k, v in mapping.items():
                if k not in FIELDS:
                    err(f"unknown field {k!r}; fields: {', '.join(FIELDS)}", "data", "fields", k)
                else:
                    fields[k] = str(v)

    p = spec.get("prompt") or {}
    prompt = PromptSpec()
    template_ast = None
    if not isinstance(p, dict):
        err("prompt must be a mapping with template/system/raw", "prompt")
    else:
        prompt = PromptSpec(str(p.get("template", "{{ input }}")), p.get("system"), bool(p.get("raw", False)))
        import jinja2

        try:
            template_ast = _env().parse(prompt.template)
        except jinja2.TemplateSyntaxError as exc:
            template_ast = None
            err(f"prompt.template is not valid Jinja2: {exc}", "prompt", "template")

    g = spec.get("generation") or {}
    generation = GenerationSettings()
    try:
        stop = g.get("stop", [])
        stop = (stop,) if isinstance(stop, str) else tuple(str(s) for s in stop)
        generation = GenerationSettings(
            max_new_tokens=int(g.get("max_new_tokens", 64)),
            do_sample=bool(g.get("do_sample", False)),
            temperature=float(g.get("temperature", 1.0)),
            top_p=float(g.get("top_p", 1.0)),
            stop=stop,
        )
        if generation.max_new_tokens <= 0:
            err("generation.max_new_tokens must be positive", "generation", "max_new_tokens")
        if not (math.isfinite(generation.temperature) and generation.temperature > 0):
            err(f"generation.temperature must be a positive number, not {generation.temperature!r}", "generation", "temperature")
        if not (math.isfinite(generation.top_p) and 0 < generation.top_p <= 1):
            err(f"generation.top_p must be in (0, 1], not {generation.top_p!r}", "generation", "top_p")
        unknown = set(g) - {"max_new_tokens", "do_sample", "temperature", "top_p", "stop"}
        for k in sorted(unknown):
            err(f"unknown generation setting {k!r}", "generation", k)
    except (TypeError, ValueError, AttributeError) as exc:
        err(f"bad generation settings: {exc}", "generation")

    scorers: list[ScorerSpec] = []
    known = set(scorer_names())
    raw_scorers = spec.get("scorers")
    if role == "leakage" and raw_scorers in (None, []):
        raw_scorers = []  # scored for the task's format, added at run time (harness.taskformat)
    elif not isinstance(raw_scorers, list) or not raw_scorers:
        err("scorers must be a non-empty list of {name, args}", "scorers")
    if isinstance(raw_scorers, list):
        for i, s in enumerate(raw_scorers):
            s = {"name": s} if isinstance(s, str) else s
            if not isinstance(s, dict) or "name" not in s:
                err("each scorer needs a name", "scorers", i)
                continue
            args = s.get("args") or {}
            if s["name"] not in known:
                err(unknown_scorer(s["name"]), "scorers", i, "name")
            elif not isinstance(args, dict):
                err(f"scorer {s['name']!r}: args must be a mapping, not {type(args).__name__}", "scorers", i, "args")
                continue
            elif s["name"] not in model_metric_names():  # a scorer of output text: its arguments bind and it builds
                problems = check_scorer_args(s["name"], args)
                for problem in problems:
                    err(problem, "scorers", i, "args")
                if not problems:
                    # Build it now: a bad value (mode: bogus, an invalid regex) is a suite error found before
                    # the model loads, not a crash after it.
                    try:
                        get_scorer(s["name"], args)
                    except (ValueError, TypeError, KeyError, re.error, SuiteError) as exc:
                        err(f"scorer {s['name']!r}: {exc}", "scorers", i, "args")
            scorers.append(ScorerSpec(s["name"], dict(args)))

    headline = spec.get("headline")
    if headline is not None and not isinstance(headline, str):
        err(f"headline must be a metric name, not {headline!r}", "headline")
        headline = None
    if headline is None and scorers:
        first = "format_leakage" if role == "leakage" and any(x.name == "format_leakage" for x in scorers) else scorers[0].name
        headline = _DEFAULT_HEADLINE.get(first, first)
        if role == "leakage":
            headline = "format_leakage"
    gates: list[GateSpec] = []
    gate_keys = ("min", "max", "min_gain", "max_drop")
    for i, gd in enumerate(spec.get("gates") or []):
        if not isinstance(gd, dict) or "metric" not in gd or not (set(gate_keys) & set(gd)):
            err(f"each gate needs a metric and one of {', '.join(gate_keys)}", "gates", i)
            continue
        for k in sorted(set(gd) - {"metric", *gate_keys}, key=str):
            err(f"unknown gate key {k!r}; allowed: metric, {', '.join(gate_keys)}", "gates", i, k)
        if gd["metric"] == "retention" and role != "general":
            err("a retention gate belongs on a general suite (retention of the base's correct answers)", "gates", i)
        try:
            values = {k: _opt_float(gd.get(k)) for k in gate_keys}
        except (TypeError, ValueError):
            err(f"gate thresholds must be numbers, got {gd!r}", "gates", i)
            continue
        if any(v is not None and not math.isfinite(v) for v in values.values()):
            err(f"gate thresholds must be finite numbers, got {gd!r}", "gates", i)
            continue
        gates.append(GateSpec(str(gd["metric"]), **values))

    if data_path.is_file() and data_path.suffix in DATA_SUFFIXES:
        data_errors = check_jsonl(data_path)
        errors.extend(data_errors)
        if template_ast is not None and not data_errors:
            # a typo such as {{ inptu }} is found now, with the other mistakes, not after a model loads
            from jinja2 import meta

            columns = _first_row_columns(data_path)
            if columns is not None:
                undeclared = sorted(meta.find_undeclared_variables(template_ast) - set(columns) - {"input", "target", "category"})
                for name_ in undeclared:
                    err(f"prompt.template uses {{{{ {name_} }}}}, which is neither a suite field (input, target, category) "
                        f"nor a data column ({', '.join(sorted(columns))})", "prompt", "template")
    if errors:
        raise SuiteError(f"{len(errors)} problem(s) in suite {path}:\n  " + "\n  ".join(errors))
    assert isinstance(name, str)  # a missing or malformed name is one of the errors above
    return Suite(
        name=name, version=str(spec["version"]), description=str(spec.get("description", "")), path=path,
        data_path=data_path, split=split, fields=fields, prompt=prompt, generation=generation,
        scorers=tuple(scorers), gates=tuple(gates), suite_id=_suite_hash(path, data_path), max_chars=max_chars,
        role=role, headline=headline, directions=directions,
    )


def suite_directions(suite: Suite) -> dict[str, bool]:
    """metric -> higher_is_better for every metric the suite's scorers can emit that has a known
    direction, plus the suite's own declarations (stored with the suite, read by reports and gates)."""
    out = {m: False for m in LOWER_IS_BETTER if any(_DEFAULT_HEADLINE.get(sc.name) == m or sc.name == m for sc in suite.scorers)}
    if suite.headline:
        out.setdefault(suite.headline, higher_is_better(suite.headline))
    out.update(suite.directions)
    return out


def default_max_chars() -> int:
    """The cap on one stored text field: 16,384 characters, or ``$HARNESS_MAX_TEXT_CHARS``."""
    import os

    raw = os.environ.get("HARNESS_MAX_TEXT_CHARS", "")
    try:
        return max(1, int(raw)) if raw.strip() else 16_384
    except ValueError:
        raise SuiteError(f"HARNESS_MAX_TEXT_CHARS={raw!r} must be a positive integer") from None


def _opt_float(v: Any) -> float | None:
    return None if v is None else float(v)


@functools.lru_cache(maxsize=64)
def _compiled(template: str):  # -> jinja2.Template
    """A suite's template compiled once, not once per example (compiling is ~1 ms; a suite has hundreds)."""
    return _env().from_string(template)


@functools.lru_cache(maxsize=1)
def _env():  # -> jinja2.sandbox.ImmutableSandboxedEnvironment
    """Suites are shared data: their templates render in Jinja's immutable sandbox, never with
    access to Python internals (``cycler.__init__.__globals__.os`` raises SecurityError)."""
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    return ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined, keep_trailing_newline=False, autoescape=False)


def check_jsonl(path: Path) -> list[str]:
    """JSONL is checked line by line here, because `datasets` reports a bad line without its number."""
    if path.suffix != ".jsonl":
        return []
    errors = []
    n_rows = 0
    with open(path, encoding="utf-8", errors="strict") as f:
        try:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                n_rows += 1
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
        except UnicodeDecodeError as exc:
            return [f"{path}: not UTF-8 (byte offset {exc.start}); re-save the file as UTF-8"]
    if not n_rows and not errors:
        errors.append(f"{path}: empty: no JSON lines in it; add one object per line")
    return errors


def _first_row_columns(path: Path) -> list[str] | None:
    """The columns of a JSONL file's first row (None for other formats: datasets reads those)."""
    if path.suffix != ".jsonl":
        return None
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                return [str(k) for k in row] if isinstance(row, dict) else None
    return None


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


def _suite_hash(spec: Path, data: Path) -> str:
    h = hashlib.sha256(spec.read_bytes())
    files = [data] if data.is_file() else sorted(p for p in data.rglob("*") if p.is_file())
    for f in files:
        update_with_file(h, f)
    return h.hexdigest()


def _as_tuple(v: Any) -> tuple[str, ...]:
    if v is None:
        return ()
    if isinstance(v, str):
        return (v,)
    return tuple(str(x) for x in v if x is not None)


def load_examples(suite: Suite, limit: int | Limit | None = None) -> list[Example]:
    """Read the suite's data (``harness.datafiles``) and map its columns to examples (``limit``: see ``subsample``)."""
    from harness.datafiles import is_reader_error, read_rows

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
        examples.append(Example(
            id=ex_id, input=text, target=target, aliases=_as_tuple(row.get(f["aliases"])), references=refs,
            category=row.get(f["category"]), fields=row, truncated=tuple(truncated),
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


def render_user_text(suite: Suite, example: Example) -> str:
    """Fill the suite's template for one example (before any chat template)."""
    import jinja2

    variables = dict(example.fields)
    variables.update(input=example.input, target=example.target, category=example.category)
    from jinja2.sandbox import SecurityError

    try:
        return _compiled(suite.prompt.template).render(**variables)
    except SecurityError as exc:
        raise SafetyError(
            f"{suite.path}: prompt.template {suite.prompt.template!r} tried an unsafe operation ({exc}); refused: "
            "suite templates may only fill in fields ({{ input }}, {{ category }}, data columns)"
        ) from None
    except jinja2.UndefinedError as exc:
        raise SuiteError(f"{suite.path}: prompt.template: {exc.message} (example {example.id})") from None
    except (jinja2.TemplateError, TypeError, ValueError, ArithmeticError) as exc:
        raise SuiteError(f"{suite.path}: prompt.template fails on example {example.id}: {exc}") from None



def check_suites(names_or_paths: Sequence[str | Path], limit: int | Limit | None = None) -> tuple[list[Suite], dict[str, list[Example]]]:
    """Load and fully check every suite (spec, data, every template rendered against every example,
    every scorer built, gates), and raise one SuiteError listing the problems of all of them.

    No model is involved: this is what `harness suites check` and every evaluating command run first.
    """
    from harness.errors import HarnessError

    suites: list[Suite] = []
    examples: dict[str, list[Example]] = {}
    problems: list[str] = []
    worst: HarnessError | None = None
    for item in names_or_paths:
        try:
            suite = load_suite(item)
            examples[suite.name] = load_examples(suite, limit)
        except (SuiteError, SafetyError) as exc:
            problems.append(str(exc))
            # a sandbox violation keeps its exit code (4) even when other suites have plain mistakes
            worst = exc if isinstance(exc, SafetyError) or worst is None else worst
            continue
        if suite.name in {s.name for s in suites}:
            problems.append(f"{suite.path}: a second suite named {suite.name!r} in one run; rename one (name:)")
            continue
        suites.append(suite)
    if problems:
        if len(problems) == 1 and worst is not None:
            raise worst
        err = (SafetyError if isinstance(worst, SafetyError) else SuiteError)(
            f"{len(problems)} suite(s) with problems:\n  " + "\n  ".join(p.replace("\n", "\n  ") for p in problems))
        raise err
    return suites, examples
