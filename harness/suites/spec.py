"""Suites: parse and validate ``suite.yaml`` files (all errors at once, each with file and line).

A suite is data (see ``suites/FORMAT.md``): a YAML spec beside its data file. ``load_suite`` turns it
into a frozen ``Suite``; ``load_examples`` reads the data (``harness.util.datafiles``) and applies the field
mapping; ``check_suites`` loads and fully checks several suites and reports the problems of all of them
together. Nothing here runs a model.

This module holds the spec parsing and validation; the rest lives by concept, every name importable
from here as well: ``harness.suites.types`` (the frozen ``Suite`` and its parts, roles, metric
directions), ``harness.suites.data`` (the data file: checks, ``load_examples``, ``Limit`` / ``subsample``)
and ``harness.suites.templates`` (the sandboxed prompt template, ``render_user_text``).
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from harness.errors import SafetyError, SuiteError
from harness.generation.rows import GenerationSettings
from harness.scorers import Example, check_scorer_args, get_scorer, scorer_names, unknown_scorer
from harness.suites.confine import confine
from harness.suites.data import Limit, bad_text, check_jsonl, load_examples, scan_jsonl, subsample
from harness.suites.templates import _env, render_user_text
from harness.suites.types import (
    _DEFAULT_HEADLINE,
    FIELDS,
    KINDS,
    LIKELIHOOD_METRICS,
    LOWER_IS_BETTER,
    ROLES,
    GateSpec,
    PromptSpec,
    ScorerSpec,
    Suite,
    higher_is_better,
    suite_directions,
)
from harness.util.datafiles import DATA_SUFFIXES
from harness.util.files import update_with_file
from harness.util.yamlsafe import compose_bounded, read_spec_text

__all__ = [
    "FIELDS", "LOWER_IS_BETTER", "ROLES", "SUITES_DIR", "GateSpec", "Limit", "PromptSpec", "ScorerSpec", "Suite",
    "bad_text", "builtin_suites", "check_jsonl", "check_suites", "default_max_chars", "higher_is_better",
    "load_examples", "load_suite", "render_user_text", "resolve_suite_path", "subsample", "suite_directions",
]

SUITES_DIR = (Path(__file__).resolve().parent / "builtin").resolve()  # the top-level suites/, installed as harness/suites/builtin
_TOP_KEYS = {"name", "version", "description", "role", "headline", "metrics", "data", "prompt", "generation",
             "scorers", "gates", "format", "kind", "target_delimiter"}
_NAME = re.compile(r"^[a-z0-9][a-z0-9-]*$")


class _Lines:
    """YAML loading that remembers the line of every key, for error messages.

    The walk below expands aliases, so the node graph is bounded first (``harness.util.yamlsafe.compose_bounded``,
    which gives the node).
    """

    def __init__(self, node: yaml.Node | None, path: Path) -> None:
        self.path = path
        self.lines: dict[tuple[Any, ...], int] = {}
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
    from harness.suites import lmeval

    text = read_spec_text(path, "suite spec", SuiteError)
    try:
        node = compose_bounded(text, path, SuiteError)
        if lmeval.is_lmeval_task(node):  # an lm-eval task file, recognised before any tag is constructed
            return lmeval.load_task(path, text)
        y = _Lines(node, path)
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
    kind = spec.get("kind", "generate")
    if kind not in KINDS:
        err(f"kind must be one of {', '.join(KINDS)}, not {kind!r}", "kind")
        kind = "generate"
    delimiter = spec.get("target_delimiter", " ")
    if not isinstance(delimiter, str):
        err(f"target_delimiter must be a string (lm-eval's default is one space), not {delimiter!r}", "target_delimiter")
        delimiter = " "
    elif kind != "multiple_choice" and "target_delimiter" in spec:
        err("target_delimiter goes between the prompt and each choice of a kind: multiple_choice suite (a loglikelihood "
            "suite scores its target as written, as lm-eval does: put a leading space in the target)", "target_delimiter")
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
        confine(path, "data.path", str(data["path"]), data_path)
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
        unknown_prompt = sorted(set(p) - {"template", "system", "raw", "chat_template"}, key=str)
        for k in unknown_prompt:
            err(f"unknown prompt key {k!r}; allowed: template, system, raw, chat_template", "prompt", k)
        if p.get("chat_template") is not None:
            prompt = replace(prompt, chat_template=_chat_template_file(path, p["chat_template"], err))
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
    if kind != "generate":
        # a likelihood suite's metrics come from its kind (LIKELIHOOD_METRICS), not from scorers of answer text
        if raw_scorers not in (None, []):
            err(f"a {kind} suite scores log-likelihoods, not answers: drop scorers: (it reports "
                f"{', '.join(LIKELIHOOD_METRICS[kind])})", "scorers")
        if role in ("leakage", "reference"):
            err(f"a {kind} suite generates no answer, so it cannot have role {role}; use role task or general", "role")
        raw_scorers = None
    elif role == "leakage" and raw_scorers in (None, []):
        raw_scorers = []  # scored for the task's format, added at run time (harness.suites.taskformat)
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
    if kind != "generate":
        scorers = [ScorerSpec(kind)]
        if headline is not None and headline not in LIKELIHOOD_METRICS[kind]:
            err(f"headline {headline!r}: a {kind} suite reports {', '.join(LIKELIHOOD_METRICS[kind])}", "headline")
        headline = headline or _DEFAULT_HEADLINE[kind]
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

    task_format = None
    if spec.get("format") is not None:
        from harness.suites.taskformat import parse_declared

        if role != "task":
            err("format: declares a task's answer format; it belongs on a suite with role task", "format")
        task_format, problems = parse_declared(spec["format"], y.where("format"))
        errors.extend(problems)

    if data_path.is_file() and data_path.suffix in DATA_SUFFIXES:
        scanned, data_errors = scan_jsonl(data_path)
        errors.extend(data_errors)
        if template_ast is not None and not data_errors:
            # a typo such as {{ inptu }} is found now, with the other mistakes, not after a model loads
            from jinja2 import meta

            # JSONL: the first row's columns (other formats are read by `datasets` later)
            columns = [str(k) for k in scanned[0]] if scanned else None
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
        role=role, headline=headline, directions=directions, format=task_format, kind=kind, target_delimiter=delimiter,
    )


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


def _suite_hash(spec: Path, data: Path) -> str:
    h = hashlib.sha256(spec.read_bytes())
    files = [data] if data.is_file() else sorted(p for p in data.rglob("*") if p.is_file())
    for f in files:
        update_with_file(h, f)
    return h.hexdigest()


#: metrics the harness adds to a suite's own scorers: retention (general suites, from the base's correct
#: answers) and format leakage (general and leakage suites, for the task's format)
_ADDED_METRICS = {"general": {"retention", "format_leakage", "drift_kl", "drift_nll"},
                  "leakage": {"format_leakage", "drift_kl", "drift_nll"}}


#: the largest chat template file a suite may name
MAX_CHAT_TEMPLATE_BYTES = 256 * 1024


def _chat_template_file(spec_path: Path, given: Any, err: Any) -> str | None:
    """The text of the chat template file a suite names (``prompt.chat_template``), confined to its folder like its
    data; it renders in transformers' sandboxed Jinja, as every chat template does."""
    if not isinstance(given, str) or not given.strip():
        err("prompt.chat_template must name a template file beside the suite (e.g. chat_template.jinja)",
            "prompt", "chat_template")
        return None
    resolved = (spec_path.parent / given).resolve()
    confine(spec_path, "prompt.chat_template", given, resolved)
    if not resolved.is_file():
        err(f"prompt.chat_template {given!r}: no such file beside the suite ({resolved})", "prompt", "chat_template")
        return None
    if resolved.stat().st_size > MAX_CHAT_TEMPLATE_BYTES:
        err(f"prompt.chat_template {given!r} is larger than {MAX_CHAT_TEMPLATE_BYTES} bytes", "prompt", "chat_template")
        return None
    try:
        return resolved.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        err(f"prompt.chat_template {given!r} cannot be read as UTF-8 text ({type(exc).__name__})", "prompt", "chat_template")
        return None


def emitted_metrics(suite: Suite, examples: Sequence[Example]) -> set[str] | None:
    """The metric names this suite's scorers produce, found by scoring its first example (a wrong answer and
    the target itself: scorers emit the same names for both); None when that cannot be known without the
    model (a scorer that fails on the probe)."""
    from harness.metrics import model_metric_names
    from harness.scorers import get_scorer

    names: set[str] = set()
    if suite.likelihood:
        return set(LIKELIHOOD_METRICS[suite.kind]) | ({"retention"} if suite.role == "general" else set())
    if not examples:
        return None
    ex = examples[0]
    for sc in suite.scorers:
        if sc.name in model_metric_names():
            names |= {"nll", "perplexity"}
            continue
        fn = get_scorer(sc.name, sc.args).fn
        for output in ("", ex.target or "x"):
            try:
                names |= {score.metric for score in fn(output, ex)}
            except (ValueError, TypeError, KeyError, AttributeError, IndexError):
                return None  # a probe the scorer cannot take says nothing about the names it emits
    return names | _ADDED_METRICS.get(suite.role, set())


def unscored_metrics(suite: Suite, examples: Sequence[Example]) -> list[str]:
    """A headline or a gate on a metric that no scorer of the suite produces: each a problem, found with no
    model loaded (otherwise it would fail only after generation, or a gate would judge nothing)."""
    emitted = emitted_metrics(suite, examples)
    if emitted is None:
        return []
    have = ", ".join(sorted(emitted))
    out = []
    if suite.headline and suite.headline not in emitted:
        out.append(f"headline: no scorer of the suite emits {suite.headline!r} (they emit {have}); name one of those")
    for i, g in enumerate(suite.gates):
        if g.metric not in emitted:
            out.append(f"gates[{i}].metric: no scorer of the suite emits {g.metric!r} (they emit {have}); a gate on it "
                       "would judge nothing")
    return out


def unscorable_examples(suite: Suite, examples: Sequence[Example]) -> list[str]:
    """Examples a scorer of the suite cannot score whatever the model answers (it gives no value even for an
    empty answer: a row with no target for ``exact_match``, no reference for ``rouge``): each scorer's rows as
    one problem, found with no model loaded. Before, such rows were scored as missing after generation, and a
    target column named wrong in some rows showed only then."""
    from harness.metrics import model_metric_names
    from harness.scorers import get_scorer

    out: list[str] = []
    if suite.likelihood:
        return out  # every row's choices and target were checked when the data was read (load_examples)
    for sc in suite.scorers:
        if sc.name in model_metric_names():
            continue
        fn = get_scorer(sc.name, sc.args).fn
        bad: list[tuple[Example, str]] = []
        for ex in examples:
            try:
                missing = [s for s in fn("", ex) if s.value is None]
            except (ValueError, TypeError, KeyError, AttributeError, IndexError):
                continue  # a probe the scorer cannot take says nothing about the example
            if missing:
                bad.append((ex, missing[0].reason or "no value"))
        if bad:
            shown = ", ".join(f"id {ex.id}" for ex, _ in bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
            out.append(f"{sc.name} cannot score {len(bad)} of {len(examples)} examples whatever the model answers "
                       f"({bad[0][1]}: {shown}); fix: give every row the column it needs (map it under data.fields), "
                       "or drop the scorer")
    return out


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
        unknown = unscored_metrics(suite, examples[suite.name]) + unscorable_examples(suite, examples[suite.name])
        if unknown:
            problems.append(f"{len(unknown)} problem(s) in suite {suite.path}:\n  " + "\n  ".join(unknown))
            continue
        suites.append(suite)
    if problems:
        if len(problems) == 1 and worst is not None:
            raise worst
        err = (SafetyError if isinstance(worst, SafetyError) else SuiteError)(
            f"{len(problems)} suite(s) with problems:\n  " + "\n  ".join(p.replace("\n", "\n  ") for p in problems))
        raise err
    return suites, examples
