"""lm-evaluation-harness task YAMLs as suites: the safe subset, read as lm-eval 0.4 reads it.

``harness eval --suite path/to/task.yaml`` takes a task file users already have (MMLU, ARC, HellaSwag and their
own). What is read, with lm-eval's own meaning:

- ``output_type``: ``multiple_choice`` (acc, acc_norm: ``harness.scorers.likelihood``), ``loglikelihood`` (the
  target's log-likelihood, acc = greedy) or ``generate_until`` (exact match of the answer, greedy decoding to
  ``generation_kwargs.until`` / ``max_gen_toks``);
- ``doc_to_text`` / ``doc_to_target`` / ``doc_to_choice``: a column name or a Jinja template over the row's columns
  (rendered in our sandbox with lm-eval's settings: undefined names are errors, trailing newlines kept, its
  ``regex_replace`` filter); a template giving digits is an index, one giving ``[...]`` a list
  (``ast.literal_eval``, which evaluates literals only); ``doc_to_choice`` may also be a list or a mapping;
- ``description``, ``target_delimiter`` (default one space), ``fewshot_delimiter`` (default two newlines),
  ``num_fewshot`` with ``fewshot_split``: examples drawn as lm-eval's default sampler draws them (one
  ``random.Random(1234)`` for the task, every document in order, the document itself left out when the few-shot
  split is the test split) and laid out as lm-eval lays them out;
- ``metric_list``: acc / acc_norm / exact_match (the first is the suite's headline);
- data: ``dataset_path: json|csv|parquet`` with ``dataset_kwargs.data_files`` (a file per split, relative to the task
  file's folder; run lm-eval from that folder to read the same files), or ``dataset_path`` naming a local
  ``save_to_disk`` directory beside the task file; the split is ``test_split`` (else ``validation_split``);
- ``include``: another task file beside this one, whose keys this one overrides;
- ``metadata.version``: the suite's version; ``metadata.role``: the harness role (default ``general``: lm-eval's
  tasks measure what the base model can do).

Refused, with the line and why: ``!function`` (and any other YAML tag: it names Python code in the task's folder,
and a suite is data that runs no code), ``process_docs``, ``process_results``, ``class``, ``filter_list``,
``use_prompt`` and the other keys that need code or a hub; a hub dataset id, with how to make it local.
"""

from __future__ import annotations

import ast
import functools
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from harness.errors import SuiteError

if TYPE_CHECKING:
    from harness.scorers import Example
    from harness.suites.types import Suite

#: lm-eval's output types and what each becomes here
_KINDS = {"multiple_choice": "multiple_choice", "loglikelihood": "loglikelihood", "generate_until": "generate"}
_METRICS = {"multiple_choice": ("acc", "acc_norm"), "loglikelihood": ("acc",), "generate_until": ("exact_match",)}
_DEFAULT_METRICS = {"multiple_choice": ["acc", "acc_norm"], "loglikelihood": ["acc"], "generate_until": ["exact_match"]}
#: lm-eval keys read here
_READ = {"task", "task_alias", "tag", "group", "dataset_path", "dataset_name", "dataset_kwargs", "test_split",
         "validation_split", "training_split", "fewshot_split", "description", "doc_to_text", "doc_to_target",
         "doc_to_choice", "target_delimiter", "fewshot_delimiter", "num_fewshot", "output_type", "metric_list",
         "metadata", "should_decontaminate", "doc_to_decontamination_query", "generation_kwargs", "repeats",
         "include", "fewshot_config"}
#: lm-eval keys that need code, a hub or a feature not read here: refused with the reason
_REFUSED = {
    "process_docs": "it names Python code that rewrites the data",
    "process_results": "it names Python code that scores the answers",
    "class": "it names a Python task class",
    "custom_dataset": "it names Python code that builds the data",
    "filter_list": "answer filters run code (regex extraction and the like); score the raw answer or preprocess",
    "use_prompt": "promptsource prompts come from a hub",
    "doc_to_image": "images are not evaluated", "doc_to_audio": "audio is not evaluated",
    "gen_prefix": "an assistant prefix is not read; put it at the end of doc_to_text",
    "unsafe_code": "tasks that execute model-written code are not run",
    "multiple_input": "multiple-input tasks (Winogrande's layout) are not read",
}
_LOCAL_BUILDERS = ("json", "csv", "parquet")
_SUFFIX = {"json": (".json", ".jsonl"), "csv": (".csv",), "parquet": (".parquet",)}
#: lm-eval's default few-shot seed (its evaluator's fewshot_random_seed)
FEWSHOT_SEED = 1234
_MAX_LITERAL = 100_000


def is_lmeval_task(node: yaml.Node | None) -> bool:
    """A YAML document that is an lm-eval task rather than a harness suite: a ``task`` key and lm-eval's own fields
    (read from the composed node, so a file with ``!function`` tags is recognised before anything is constructed)."""
    if not isinstance(node, yaml.MappingNode):
        return False
    keys = {k.value for k, _ in node.value if isinstance(k, yaml.ScalarNode)}
    return "task" in keys and "name" not in keys and bool({"doc_to_text", "output_type", "dataset_path", "include"} & keys)


@dataclass(frozen=True)
class LmevalTask:
    """The parts of an lm-eval task that turn its rows into examples (held by the ``Suite``)."""

    file: str
    output_type: str
    doc_to_text: Any
    doc_to_target: Any
    doc_to_choice: Any
    description: str
    target_delimiter: str
    fewshot_delimiter: str
    num_fewshot: int
    test_files: tuple[str, ...]
    test_split: str | None
    fewshot_files: tuple[str, ...] = ()
    fewshot_split: str | None = None
    fewshot_same_split: bool = False
    metrics: tuple[str, ...] = field(default_factory=tuple)


def _tag_problems(node: yaml.Node | None, path: Path) -> list[str]:
    """Every non-standard YAML tag (``!function utils.process_docs``), with its line: a suite runs no code."""
    out: list[str] = []

    def walk(n: yaml.Node) -> None:
        if n.tag and n.tag.startswith("!"):
            value = n.value if isinstance(n, yaml.ScalarNode) else "..."
            out.append(f"{path}:{n.start_mark.line + 1}: {n.tag} {value}: a YAML tag that names Python code in the task's "
                       "folder; a suite is data and runs no code, so it is refused. Use a column name or a Jinja template "
                       "instead (doc_to_text: \"{{question}}\"), or preprocess the data once into a file")
        if isinstance(n, yaml.MappingNode):
            for k, v in n.value:
                walk(k)
                walk(v)
        elif isinstance(n, yaml.SequenceNode):
            for v in n.value:
                walk(v)

    if node is not None:
        walk(node)
    return out


def _line(node: yaml.Node | None, key: str) -> int:
    if isinstance(node, yaml.MappingNode):
        for k, _ in node.value:
            if isinstance(k, yaml.ScalarNode) and k.value == key:
                return int(k.start_mark.line) + 1
    return 1


def _read(path: Path, depth: int = 0, text: str | None = None) -> tuple[dict[str, Any], dict[str, int]]:
    """The task file's mapping (``text``: its contents, already read) with its ``include`` merged (the includer's
    keys win) and each key's line."""
    from harness.suites.confine import confine
    from harness.util.yamlsafe import compose_bounded, read_spec_text

    text = read_spec_text(path, "lm-eval task", SuiteError) if text is None else text
    node = compose_bounded(text, path, SuiteError)
    problems = _tag_problems(node, path)
    if problems:
        raise SuiteError(f"{len(problems)} problem(s) in lm-eval task {path}:\n  " + "\n  ".join(problems))
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SuiteError(f"{path}: not valid YAML: {exc}".replace("\n", " ")) from None
    if not isinstance(data, dict):
        raise SuiteError(f"{path}:1: an lm-eval task must be a YAML mapping")
    lines = {str(k): _line(node, str(k)) for k in data}
    if "include" in data:
        inc = data.pop("include")
        if depth >= 3 or not isinstance(inc, str):
            raise SuiteError(f"{path}:{lines['include']}: include must name one task file beside this one (at most 3 deep)")
        target = (path.parent / inc).resolve()
        confine(path, "include", inc, target)
        if not target.is_file():
            raise SuiteError(f"{path}:{lines['include']}: include {inc!r}: no such file beside the task ({target})")
        base, _ = _read(target, depth + 1)
        base.update(data)
        data = base
    return data, lines


def load_task(path: Path, text: str | None = None) -> Suite:
    """Read an lm-eval task YAML (the safe subset above; ``text``: its contents, already read) into a ``Suite``; one
    ``SuiteError`` listing every problem."""
    from harness.generation.rows import GenerationSettings
    from harness.suites.types import PromptSpec, ScorerSpec, Suite

    data, lines = _read(path, text=text)
    errors: list[str] = []

    def err(key: str, msg: str) -> None:
        errors.append(f"{path}:{lines.get(key, 1)}: {key}: {msg}")

    for key in sorted(set(data) & set(_REFUSED)):
        err(key, f"refused: {_REFUSED[key]}")
    for key in sorted(set(data) - _READ - set(_REFUSED), key=str):
        err(key, f"not an lm-eval task key read here; read: {', '.join(sorted(_READ))}")
    output_type = data.get("output_type", "generate_until")
    if output_type not in _KINDS:
        err("output_type", f"{output_type!r} is not read here; use one of {', '.join(_KINDS)}")
        output_type = "multiple_choice"
    task = data.get("task")
    name = re.sub(r"[^a-z0-9-]+", "-", str(task).lower()).strip("-") if isinstance(task, str) else ""
    if not name:
        err("task", f"must be a task name, not {task!r}")
    for key in ("doc_to_text", "doc_to_target"):
        if key not in data:
            err(key, "is required (a column name or a Jinja template)")
        elif not isinstance(data[key], (str, int)):
            err(key, f"must be a column name, a Jinja template or an index, not {type(data[key]).__name__}")
    if output_type == "multiple_choice" and not isinstance(data.get("doc_to_choice"), (str, list, dict)):
        err("doc_to_choice", "a multiple_choice task needs doc_to_choice (a column, a template giving a list, a list)")
    for key, default in (("target_delimiter", " "), ("fewshot_delimiter", "\n\n"), ("description", "")):
        if not isinstance(data.get(key, default), str):
            err(key, f"must be a string, not {data[key]!r}")
    if int(data.get("repeats", 1) or 1) != 1:
        err("repeats", "only 1 is read (greedy answers do not change when repeated)")
    fewshot = data.get("num_fewshot", 0) or 0
    if isinstance(fewshot, bool) or not isinstance(fewshot, int) or fewshot < 0:
        err("num_fewshot", f"must be a whole number >= 0, not {fewshot!r}")
        fewshot = 0
    fs_cfg = data.get("fewshot_config") or {}
    if not isinstance(fs_cfg, dict) or set(fs_cfg) - {"sampler"} or fs_cfg.get("sampler", "default") != "default":
        err("fewshot_config", "only the default sampler is read (fewshot_config: {sampler: default})")
    metrics: list[str] = []
    for i, m in enumerate(data.get("metric_list") or [{"metric": x} for x in _DEFAULT_METRICS[output_type]]):
        metric = m.get("metric") if isinstance(m, dict) else None
        if metric not in _METRICS[output_type]:
            err("metric_list", f"entry {i}: {metric!r} is not read for {output_type}; use {', '.join(_METRICS[output_type])}")
        else:
            metrics.append(str(metric))
    metadata = data.get("metadata") or {}
    if not isinstance(metadata, dict):
        err("metadata", "must be a mapping")
        metadata = {}
    role = metadata.get("role", "general")
    if role not in ("task", "general"):
        err("metadata", f"role must be task or general, not {role!r}")

    test_split = data.get("test_split") or data.get("validation_split")
    if not test_split:
        err("test_split", "name the split to evaluate (test_split, or validation_split)")
    fewshot_split = data.get("fewshot_split")
    if fewshot and not fewshot_split:
        err("num_fewshot", "few-shot examples need fewshot_split (as in lm-eval 0.4)")
    test_files, fewshot_files = _data_files(path, data, lines, test_split, fewshot_split if fewshot else None, err)
    if errors:
        raise SuiteError(f"{len(errors)} problem(s) in lm-eval task {path}:\n  " + "\n  ".join(errors))

    gen = data.get("generation_kwargs") or {}
    if not isinstance(gen, dict) or set(gen) - {"until", "max_gen_toks", "do_sample", "temperature"} or gen.get("do_sample"):
        raise SuiteError(f"{path}:{lines.get('generation_kwargs', 1)}: generation_kwargs: only until and max_gen_toks are "
                         "read (greedy decoding)")
    until = gen.get("until", ["\n\n"])
    settings = GenerationSettings(max_new_tokens=int(gen.get("max_gen_toks", 256)),
                                  stop=(until,) if isinstance(until, str) else tuple(str(u) for u in until))
    spec = LmevalTask(
        file=str(path), output_type=output_type, doc_to_text=data["doc_to_text"], doc_to_target=data["doc_to_target"],
        doc_to_choice=data.get("doc_to_choice"), description=str(data.get("description", "")),
        target_delimiter=str(data.get("target_delimiter", " ")), fewshot_delimiter=str(data.get("fewshot_delimiter", "\n\n")),
        num_fewshot=fewshot, test_files=test_files, test_split=test_split, fewshot_files=fewshot_files,
        fewshot_split=fewshot_split, fewshot_same_split=bool(fewshot_split and fewshot_split == test_split),
        metrics=tuple(metrics),
    )
    kind = _KINDS[output_type]
    data_path = Path(test_files[0])
    scorers = (ScorerSpec("exact_match", {"normalize": False}),) if kind == "generate" else (ScorerSpec(kind),)
    return Suite(
        name=name, version=str(metadata.get("version", "0")), description=f"lm-eval task {task} ({path.name})",
        path=path, data_path=data_path, split=test_split if data_path.is_dir() else None,
        fields={"id": "id", "input": "input", "target": "target", "aliases": "aliases", "references": "references",
                "category": "category", "choices": "choices"},
        prompt=PromptSpec("{{ input }}", None, raw=True), generation=settings, scorers=scorers, gates=(),
        suite_id=_task_hash(path, data, (*test_files, *fewshot_files)), role=role,
        headline=metrics[0] if metrics else None, kind=kind, target_delimiter=spec.target_delimiter, lmeval=spec,
    )


def _task_hash(path: Path, data: Mapping[str, Any], files: Sequence[str]) -> str:
    """The task's identity: its resolved keys (includes merged) and every data file it reads."""
    import hashlib
    import json

    from harness.util.files import update_with_file

    h = hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode())
    for f in dict.fromkeys(files):
        p = Path(f)
        for part in ([p] if p.is_file() else sorted(x for x in p.rglob("*") if x.is_file())):
            update_with_file(h, part)
    return h.hexdigest()


def _data_files(path: Path, data: Mapping[str, Any], lines: Mapping[str, int], test_split: Any, fewshot_split: Any,
                err: Any) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The local files (or saved-dataset directory) of the test split and of the few-shot split."""
    from harness.suites.confine import confine

    where = path.parent
    ds = data.get("dataset_path")
    kwargs = data.get("dataset_kwargs") or {}
    if not isinstance(ds, str) or not ds:
        err("dataset_path", "is required: json|csv|parquet with dataset_kwargs.data_files, or a local saved dataset folder")
        return (), ()
    if ds in _LOCAL_BUILDERS:
        files = kwargs.get("data_files") if isinstance(kwargs, dict) else None
        if isinstance(files, str):
            files = {"train": files}
        if not isinstance(files, dict):
            err("dataset_kwargs", f"dataset_path: {ds} needs dataset_kwargs.data_files: {{split: file}}")
            return (), ()
        out: list[tuple[str, ...]] = []
        for split in (test_split, fewshot_split):
            if split is None:
                out.append(())
                continue
            given = files.get(split)
            if given is None:
                err("dataset_kwargs", f"data_files has no split {split!r} (it has {', '.join(map(str, files))})")
                out.append(())
                continue
            paths = []
            for g in ([given] if isinstance(given, str) else list(given)):
                resolved = (where / str(g)).resolve()
                confine(path, "dataset_kwargs.data_files", str(g), resolved)
                if not resolved.is_file():
                    err("dataset_kwargs", f"data file {g!r} does not exist ({resolved})")
                elif resolved.suffix.lower() not in _SUFFIX[ds]:
                    err("dataset_kwargs", f"data file {g!r} is not a {ds} file ({', '.join(_SUFFIX[ds])})")
                paths.append(str(resolved))
            out.append(tuple(paths))
        return out[0], out[1]
    local = (where / ds).resolve()
    if local.exists() and (ds.startswith((".", "/")) or local.is_dir()):
        confine(path, "dataset_path", ds, local)
        if not local.is_dir():
            err("dataset_path", f"{ds!r} is a file: use dataset_path: json|csv|parquet with dataset_kwargs.data_files")
            return (), ()
        return (str(local),), ((str(local),) if fewshot_split else ())
    name = data.get("dataset_name")
    config = f", {name!r}" if name else ""
    err("dataset_path", f"{ds!r} is a dataset id on the Hugging Face hub, and the harness reads no hub at run time. Make it "
                        f"local once: python -c \"import datasets; datasets.load_dataset({ds!r}{config}).save_to_disk("
                        f"'{Path(ds).name}')\" in {where}, then set dataset_path: ./{Path(ds).name}")
    return (), ()


# --- rows into examples -------------------------------------------------------------------------------------------


def _regex_replace(string: str, pattern: str, repl: str, count: int = 0) -> str:
    return re.sub(pattern, repl, string, count=count)


def _render(template: str, doc: Mapping[str, Any], where: str) -> str:
    """lm-eval's ``apply_template`` (StrictUndefined, trailing newlines kept, ``regex_replace``) in our sandbox."""
    import jinja2

    from harness.suites.templates import MAX_RENDERED_CHARS

    env = _lmeval_env()
    try:
        out = env.from_string(template).render(**doc)
    except jinja2.UndefinedError as exc:
        raise SuiteError(f"{where}: {exc.message}") from None
    except jinja2.exceptions.SecurityError as exc:
        from harness.errors import SafetyError

        raise SafetyError(f"{where}: the template tried an unsafe operation ({exc}); refused") from None
    except (jinja2.TemplateError, TypeError, ValueError, ArithmeticError) as exc:
        raise SuiteError(f"{where}: the template fails: {exc}") from None
    if len(out) > MAX_RENDERED_CHARS:
        raise SuiteError(f"{where}: the template renders more than {MAX_RENDERED_CHARS:,} characters")
    return out


@functools.lru_cache(maxsize=1)
def _lmeval_env() -> Any:
    """Our sandboxed environment (``harness.suites.templates``) with lm-eval's settings: trailing newlines kept, its
    ``regex_replace`` filter."""
    from harness.suites.templates import _env

    env = _env().overlay(keep_trailing_newline=True)
    env.filters["regex_replace"] = _regex_replace
    return env


def _literal(text: str, where: str) -> Any:
    if len(text) > _MAX_LITERAL:
        raise SuiteError(f"{where}: the value is longer than {_MAX_LITERAL:,} characters")
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        raise SuiteError(f"{where}: {text[:80]!r} is not a Python literal (lm-eval reads it with ast.literal_eval)") from None


def doc_to_text(spec: LmevalTask, doc: Mapping[str, Any], where: str) -> str:
    v = spec.doc_to_text
    out = v if isinstance(v, int) else doc[v] if v in doc else _render(v, doc, where)
    if isinstance(out, int) or (v not in doc and isinstance(out, str) and out.isdigit()):
        raise SuiteError(f"{where}: doc_to_text gives an index: multiple-input tasks are not read")
    if not isinstance(out, str):
        raise SuiteError(f"{where}: doc_to_text gives {type(out).__name__}, not text")
    return out


def doc_to_target(spec: LmevalTask, doc: Mapping[str, Any], where: str) -> Any:
    v = spec.doc_to_target
    if isinstance(v, int):
        return v
    if v in doc:
        return doc[v]
    text = _render(v, doc, where)
    if text.isdigit() and spec.doc_to_choice is not None:
        return _literal(text, where)
    if len(text) >= 2 and text[0] == "[" and text[-1] == "]":
        try:
            return ast.literal_eval(text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            return text
    return text


def doc_to_choice(spec: LmevalTask, doc: Mapping[str, Any], where: str) -> list[str]:
    v = spec.doc_to_choice
    if isinstance(v, str):
        out = doc[v] if v in doc else _literal(_render(v, doc, where), where)
    elif isinstance(v, list):
        out = v
    elif isinstance(v, dict):
        out = list(v.values())
    else:
        raise SuiteError(f"{where}: doc_to_choice is missing")
    if not isinstance(out, (list, tuple)) or not all(isinstance(c, str) for c in out):
        raise SuiteError(f"{where}: doc_to_choice must give a list of strings, not {str(out)[:80]!r}")
    return list(out)


def _answer_text(target: Any, choices: Sequence[str] | None) -> str:
    if choices and isinstance(target, int):
        return choices[target]
    if isinstance(target, list):
        return str(target[0])
    return str(target)


def _rows(files: Sequence[str], split: str | None) -> list[dict[str, Any]]:
    from harness.util.datafiles import read_rows

    rows: list[dict[str, Any]] = []
    for f in files:
        got, _ = read_rows(Path(f), split, default_split=None)
        rows.extend(got)
    return rows


def load_task_examples(suite: Suite) -> list[Example]:
    """Every document of the test split as an example: its full context (description, few-shot turns, the question),
    its choices and right answer (``harness.suites.data.load_examples`` checks the rows' text and applies a limit)."""
    from harness.scorers import Example

    spec: LmevalTask = suite.lmeval
    try:
        docs = _rows(spec.test_files, spec.test_split)
        shots = _rows(spec.fewshot_files, spec.fewshot_split) if spec.num_fewshot else []
    except Exception as exc:
        from harness.util.datafiles import is_reader_error

        if not is_reader_error(exc):
            raise
        raise SuiteError(f"{spec.file}: its data cannot be read ({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''})") from None
    if not docs:
        raise SuiteError(f"{spec.file}: split {spec.test_split!r} holds no documents")
    if spec.num_fewshot and len(shots) < spec.num_fewshot + (1 if spec.fewshot_same_split else 0):
        raise SuiteError(f"{spec.file}: num_fewshot {spec.num_fewshot} but the few-shot split has {len(shots)} documents")
    rnd = random.Random(FEWSHOT_SEED)
    examples: list[Example] = []
    for n, doc in enumerate(docs):
        where = f"{spec.file}: document {n} of split {spec.test_split}"
        context = ""
        if spec.description:
            context += _render(spec.description, doc, where + " (description)")
        if spec.num_fewshot:
            if spec.fewshot_same_split:
                picked = [x for x in rnd.sample(shots, spec.num_fewshot + 1) if x != doc][:spec.num_fewshot]
                if len(picked) < spec.num_fewshot:
                    picked = rnd.sample([x for x in shots if x != doc], spec.num_fewshot)
            else:
                picked = rnd.sample(shots, spec.num_fewshot)
            for shot in picked:
                sw = where + " (a few-shot example)"
                choices = doc_to_choice(spec, shot, sw) if spec.doc_to_choice is not None else None
                context += doc_to_text(spec, shot, sw) + spec.target_delimiter
                context += _answer_text(doc_to_target(spec, shot, sw), choices) + spec.fewshot_delimiter
        context += doc_to_text(spec, doc, where)
        target = doc_to_target(spec, doc, where)
        choices_t: tuple[str, ...] = ()
        gold = None
        if spec.output_type == "multiple_choice":
            choices_t = tuple(doc_to_choice(spec, doc, where))
            if len(choices_t) < 2 or not all(c for c in choices_t):
                raise SuiteError(f"{where}: doc_to_choice gives {list(choices_t)[:6]!r}: a multiple-choice document needs at "
                                 "least two choices, none empty (acc_norm divides by a choice's length)")
            if isinstance(target, list):
                raise SuiteError(f"{where}: several right answers (doc_to_target gives a list) are not read")
            if isinstance(target, str):
                if target not in choices_t:
                    raise SuiteError(f"{where}: doc_to_target {target[:60]!r} is not one of the choices {list(choices_t)[:6]}")
                target = choices_t.index(target)
            if not isinstance(target, int) or not 0 <= target < len(choices_t):
                raise SuiteError(f"{where}: doc_to_target {target!r} is not an index into its {len(choices_t)} choices")
            gold = target
            target_text = choices_t[gold]
        else:
            target_text = _answer_text(target, None)
            if spec.output_type == "loglikelihood" and not target_text:
                raise SuiteError(f"{where}: doc_to_target is empty: there is no continuation to score")
        examples.append(Example(id=str(n), input=context, target=target_text, references=(target_text,),
                                fields={k: v for k, v in doc.items() if isinstance(k, str)}, choices=choices_t, gold=gold))
    return examples
