"""Suites: parse and validate ``suite.yaml`` files (all errors at once, each with file and line).

A suite is data (see ``suites/FORMAT.md``): a YAML spec beside its data file. ``load_suite`` turns it
into a frozen ``Suite``; ``load_examples`` reads the data through ``datasets`` and applies the field
mapping. Nothing here runs a model.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from harness.errors import SuiteError
from harness.generate import GenerationSettings
from harness.scorers import Example, check_scorer_args, scorer_names

SUITES_DIR = Path(__file__).resolve().parent.parent / "suites"
DATA_SUFFIXES = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
FIELDS = ("id", "input", "target", "aliases", "references", "category")
_TOP_KEYS = {"name", "version", "description", "data", "prompt", "generation", "scorers", "gates"}
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
    metric: str
    min: float | None = None
    max: float | None = None


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


class _Lines:
    """YAML loading that remembers the line of every key, for error messages."""

    def __init__(self, text: str, path: Path) -> None:
        self.path = path
        self.lines: dict[tuple[Any, ...], int] = {}
        node = yaml.compose(text)
        self.data = self._build(node, ()) if node is not None else None

    def _build(self, node: yaml.Node, at: tuple[Any, ...]) -> Any:
        self.lines[at] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            out = {}
            for k, v in node.value:
                key = yaml.safe_load(yaml.serialize(k))
                self.lines[at + (key,)] = k.start_mark.line + 1
                out[key] = self._build(v, at + (key,))
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self._build(v, at + (i,)) for i, v in enumerate(node.value)]
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
        y = _Lines(path.read_text(encoding="utf-8"), path)
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise SuiteError(f"{path}: not valid YAML: {exc}") from None
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

    data = spec.get("data")
    data_path = path.parent
    split = None
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
    if not isinstance(p, dict):
        err("prompt must be a mapping with template/system/raw", "prompt")
    else:
        prompt = PromptSpec(str(p.get("template", "{{ input }}")), p.get("system"), bool(p.get("raw", False)))
        import jinja2

        try:
            _env().parse(prompt.template)
        except jinja2.TemplateSyntaxError as exc:
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
        unknown = set(g) - {"max_new_tokens", "do_sample", "temperature", "top_p", "stop"}
        for k in sorted(unknown):
            err(f"unknown generation setting {k!r}", "generation", k)
    except (TypeError, ValueError, AttributeError) as exc:
        err(f"bad generation settings: {exc}", "generation")

    scorers: list[ScorerSpec] = []
    known = set(scorer_names()) | set(model_metric_names())
    raw_scorers = spec.get("scorers")
    if not isinstance(raw_scorers, list) or not raw_scorers:
        err("scorers must be a non-empty list of {name, args}", "scorers")
    else:
        for i, s in enumerate(raw_scorers):
            s = {"name": s} if isinstance(s, str) else s
            if not isinstance(s, dict) or "name" not in s:
                err("each scorer needs a name", "scorers", i)
                continue
            args = s.get("args") or {}
            if s["name"] not in known:
                err(f"unknown scorer {s['name']!r}; available: {', '.join(sorted(known))}", "scorers", i, "name")
            elif s["name"] in scorer_names():
                for problem in check_scorer_args(s["name"], args):
                    err(problem, "scorers", i, "args")
            scorers.append(ScorerSpec(s["name"], dict(args)))

    gates: list[GateSpec] = []
    for i, gd in enumerate(spec.get("gates") or []):
        if not isinstance(gd, dict) or "metric" not in gd or not ({"min", "max"} & set(gd)):
            err("each gate needs a metric and a min or max", "gates", i)
            continue
        try:
            gates.append(GateSpec(str(gd["metric"]), _opt_float(gd.get("min")), _opt_float(gd.get("max"))))
        except (TypeError, ValueError):
            err(f"gate thresholds must be numbers, got {gd!r}", "gates", i)

    if not errors and data_path.is_file():
        errors.extend(check_jsonl(data_path))
    if errors:
        raise SuiteError(f"{len(errors)} problem(s) in suite {path}:\n  " + "\n  ".join(errors))
    return Suite(
        name=name, version=str(spec["version"]), description=str(spec.get("description", "")), path=path,
        data_path=data_path, split=split, fields=fields, prompt=prompt, generation=generation,
        scorers=tuple(scorers), gates=tuple(gates), suite_id=_suite_hash(path, data_path),
    )


def _opt_float(v: Any) -> float | None:
    return None if v is None else float(v)


def _env():  # -> jinja2.Environment
    import jinja2

    return jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=False, autoescape=False)


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
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    errors.append(f"{path}:{n}: malformed JSON line ({exc.msg} at column {exc.colno})")
                    continue
                if not isinstance(row, dict):
                    errors.append(f"{path}:{n}: each line must be a JSON object")
        except UnicodeDecodeError as exc:
            return [f"{path}: not UTF-8 (byte offset {exc.start}); re-save the file as UTF-8"]
    if not n_rows and not errors:
        errors.append(f"{path}: empty: no JSON lines in it; add one object per line")
    return errors


def _suite_hash(spec: Path, data: Path) -> str:
    h = hashlib.sha256(spec.read_bytes())
    files = [data] if data.is_file() else sorted(p for p in data.rglob("*") if p.is_file())
    for f in files:
        h.update(f.read_bytes())
    return h.hexdigest()


def _as_tuple(v: Any) -> tuple[str, ...]:
    if v is None:
        return ()
    if isinstance(v, str):
        return (v,)
    return tuple(str(x) for x in v if x is not None)


def load_examples(suite: Suite, limit: int | None = None) -> list[Example]:
    """Read the suite's data through `datasets` and map its columns to examples."""
    import datasets

    datasets.disable_progress_bars()
    src = suite.data_path
    if src.is_dir():
        ds = datasets.load_from_disk(str(src))
        if isinstance(ds, datasets.DatasetDict):
            ds = ds[suite.split or next(iter(ds))]
    else:
        ds = datasets.load_dataset(DATA_SUFFIXES[src.suffix], data_files=str(src), split="train")
    f = suite.fields
    missing = [k for k in ("input",) if f[k] not in ds.column_names]
    if missing:
        raise SuiteError(
            f"{suite.data_path}: column {f['input']!r} (suite field 'input') not found; columns: "
            f"{', '.join(ds.column_names)}; fix: map it under data.fields in {suite.path}"
        )
    examples, seen, errors = [], set(), []
    for n, row in enumerate(ds):
        ex_id = str(row[f["id"]]) if f["id"] in row and row[f["id"]] is not None else str(n)
        if ex_id in seen:
            errors.append(f"{suite.data_path}: row {n + 1}: duplicate id {ex_id!r}")
        seen.add(ex_id)
        text = row.get(f["input"])
        if text is None or not str(text).strip():
            errors.append(f"{suite.data_path}: row {n + 1} (id {ex_id}): empty {f['input']!r}")
            continue
        target = row.get(f["target"])
        if target is not None and not isinstance(target, str):
            target = json.dumps(target, sort_keys=True)
        refs = _as_tuple(row.get(f["references"])) or ((target,) if target else ())
        examples.append(Example(
            id=ex_id, input=str(text), target=target, aliases=_as_tuple(row.get(f["aliases"])), references=refs,
            category=row.get(f["category"]), fields=dict(row),
        ))
    if errors:
        raise SuiteError(f"{len(errors)} problem(s) in data of suite {suite.name}:\n  " + "\n  ".join(errors[:50]))
    if not examples:
        raise SuiteError(f"suite {suite.name}: {suite.data_path} holds no examples; a suite with none can never pass")
    return subsample(examples, limit)


def subsample(examples: Sequence[Example], limit: int | None) -> list[Example]:
    """The first ``limit`` examples taken round-robin across categories, in file order.

    A limited run of a suite sorted by category would otherwise see only its first category; this
    keeps every category in (as evenly as ``limit`` allows) and is the same subset on every run.
    """
    if limit is None or limit >= len(examples):
        return list(examples)
    groups: dict[object, list[int]] = {}
    for i, ex in enumerate(examples):
        groups.setdefault(ex.category, []).append(i)
    picked: list[int] = []
    queues = [list(reversed(g)) for g in groups.values()]
    while len(picked) < limit:
        for q in queues:
            if q and len(picked) < limit:
                picked.append(q.pop())
    return [examples[i] for i in sorted(picked)]


def render_user_text(suite: Suite, example: Example) -> str:
    """Fill the suite's template for one example (before any chat template)."""
    import jinja2

    variables = dict(example.fields)
    variables.update(input=example.input, target=example.target, category=example.category)
    try:
        return _env().from_string(suite.prompt.template).render(**variables)
    except jinja2.UndefinedError as exc:
        raise SuiteError(f"{suite.path}: prompt.template: {exc.message} (example {example.id})") from None

