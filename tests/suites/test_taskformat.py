"""Issue 32: the task's output format for any task: declared, inferred from the targets, or given; recorded."""

from __future__ import annotations

import json

import pytest

from harness.errors import SuiteError, UsageError
from harness.records import TaskFormat
from harness.suites.spec import load_suite
from harness.suites.taskformat import infer, parse_flag, resolve, with_leakage

DATES = ["1999-08-31", "2001-05-01", "2020-01-02", "1987-12-24", "2000-02-29", "1969-07-20"]


@pytest.mark.parametrize(("targets", "kind", "value"), [
    (DATES, "regex", r"\d{4}\-\d{2}\-\d{2}"),
    (["positive", "negative", "neutral", "positive", "negative", "positive", "neutral", "negative", "positive"], "labels",
     ("negative", "neutral", "positive")),
    ([json.dumps({"item": "hoodie", "size": "M"})] * 4, "json_keys", ("item", "size")),
    (["SKU-4411", "SKU-9921", "SKU-1203", "SKU-0001"], "regex", r"[^\W\d_]+\-\d{4}"),
])
def test_the_format_is_inferred_from_the_targets(targets, kind, value):
    fmt, how = infer(targets)
    assert fmt is not None and fmt.kind == kind, how
    assert (fmt.keys[0] if kind == "regex" else fmt.keys) == value


@pytest.mark.parametrize("targets", [
    ["Paris", "Berlin", "Madrid", "Rome", "Lisbon"],  # words: general answers are words all the time
    ["4", "12", "7", "100", "3"],  # bare numbers: no format
    ["1999-08-31", "Aug 31 1999", "31/08/1999", "yesterday", "1999"],  # no shape most targets share
    ["positive", "negative"],  # too few answers to call it a label set
])
def test_no_format_is_invented(targets):
    fmt, how = infer(targets)
    assert fmt is None and "share no" in how


def test_the_flag_takes_keys_a_pattern_or_labels():
    assert parse_flag("item, quantity") == TaskFormat("json_keys", ("item", "quantity"))
    assert parse_flag(r"regex:\d{4}-\d{2}-\d{2}") == TaskFormat("regex", (r"\d{4}-\d{2}-\d{2}",))
    assert parse_flag("labels:positive|negative") == TaskFormat("labels", ("positive", "negative"))
    for bad in ("regex:(", "regex:.*", "labels:", " , "):
        with pytest.raises(UsageError):
            parse_flag(bad)


def _suite(tmp_path, fmt_yaml: str, role: str = "task", rows=None):
    d = tmp_path / "dates"
    d.mkdir(exist_ok=True)
    rows = rows or [{"id": str(i), "text": f"date {i}", "iso": t} for i, t in enumerate(DATES)]
    (d / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "suite.yaml").write_text(f"name: dates\nversion: 1\nrole: {role}\n"
                                  "data: {path: data.jsonl, fields: {input: text, target: iso}}\n"
                                  "prompt: {template: '{{ input }}'}\nscorers: [{name: exact_match}]\n" + fmt_yaml)
    return d / "suite.yaml"


def test_a_suite_declares_its_format_and_mistakes_are_named(tmp_path):
    s = load_suite(_suite(tmp_path, "format: {regex: '\\d{4}-\\d{2}-\\d{2}'}\n"))
    assert s.format == TaskFormat("regex", (r"\d{4}-\d{2}-\d{2}",))
    assert load_suite(_suite(tmp_path, "format: {choices: ['yes', 'no']}\n")).format == TaskFormat("labels", ("yes", "no"))
    assert load_suite(_suite(tmp_path, "format: {json: [b, a]}\n")).format == TaskFormat("json_keys", ("a", "b"))
    for bad, needle in (("format: {regex: '('}\n", "not a valid regular expression"),
                        ("format: {regex: '.*'}\n", "matches an empty answer"),
                        ("format: {csv: [a]}\n", "unknown format 'csv'"),
                        ("format: [a, b]\n", "format must be one of"),
                        ("format: {choices: [yes, no]}\n", "quote them")):
        with pytest.raises(SuiteError, match=needle):
            load_suite(_suite(tmp_path, bad))
    with pytest.raises(SuiteError, match="belongs on a suite with role task"):
        load_suite(_suite(tmp_path, "format: {choices: [yes, no]}\n", role="general"))


def test_resolve_order_declared_then_inferred_then_records_and_the_builtin_suites_get_the_scorer(tmp_path):
    from harness.suites.spec import load_examples

    task = load_suite(_suite(tmp_path, ""))
    gk = load_suite("general-knowledge")
    leak = load_suite("format-leakage")
    examples = {task.name: load_examples(task)}
    fmt, source = resolve([task, gk, leak], examples, [], None)
    assert fmt == TaskFormat("regex", (r"\d{4}\-\d{2}\-\d{2}",)) and source.startswith("inferred from the targets of task suite dates")
    scored = {s.name: s for s in with_leakage([task, gk, leak], fmt)}
    for name in ("general-knowledge", "format-leakage"):  # the built-in suites measure this task's format, uncopied
        assert any(sc.name == "format_leakage" and sc.args == {"pattern": fmt.keys[0]} for sc in scored[name].scorers)
    declared = load_suite(_suite(tmp_path, "format: {regex: '\\d{4}-\\d{2}-\\d{2}'}\n"))
    assert resolve([declared], {declared.name: load_examples(declared)}, [], None)[1] == "declared by task suite dates (format:)"
    assert resolve([declared], {}, [], "labels:a|b")[1] == "--task-format"


def test_a_date_task_gets_leakage_in_the_sweep_and_the_release_check(tiny_model_dir, tmp_path, capsys):
    """Issue 32.1 as the user met it: a non-JSON task (ISO dates), the built-in general-knowledge and format-leakage
    suites and a leakage suite of the user's own (a regex, lower is better). Leakage was "—" at every scale and the
    release check exited 2; now the format is inferred and recorded, every general and leakage answer is scored for
    it, the user's suite counts, and the check's leakage gate is measured."""
    import duckdb

    from harness.analysis import build_comparison
    from harness.analysis.sweep import curve
    from harness.cli import main
    from harness.store import Store
    from tests.analysis.test_sweep import make_adapter

    task = _suite(tmp_path, "")
    own = tmp_path / "date-leak"
    own.mkdir()
    (own / "data.jsonl").write_text("".join(json.dumps({"id": str(i), "input": q}) + "\n" for i, q in
                                            enumerate(["Who wrote Hamlet?", "What colour is the sky?", "Say hello.", "Name a fruit."])))
    (own / "suite.yaml").write_text("name: date-leak\nversion: 1\nrole: leakage\ndata: {path: data.jsonl}\n"
                                    "prompt: {template: '{{ input }}'}\ngeneration: {max_new_tokens: 8}\n"
                                    "scorers: [{name: regex, args: {pattern: '^\\s*\\d{4}-\\d{2}-\\d{2}\\b'}}]\n"
                                    "metrics: {regex: {higher_is_better: false}}\n")
    a = make_adapter(tiny_model_dir, tmp_path / "a", 6)
    db = tmp_path / "h.duckdb"
    suites = ["--suite", str(task), "--suite", "general-knowledge", "--suite", "format-leakage", "--suite", str(own / "suite.yaml")]
    assert main(["sweep", "--base", str(tiny_model_dir), "--db", str(db), "--adapter", str(a), *suites, "--limit", "4",
                 "--scales", "0,0.5,1", "--no-gates"]) == 0
    err = capsys.readouterr().err
    assert "task format: answers starting with a match of" in err and "inferred from the targets of task suite dates" in err
    con = duckdb.connect(str(db), read_only=True)
    (config,) = con.execute("SELECT config FROM runs WHERE kind = 'sweep'").fetchone()
    leak_rows = con.execute("SELECT count(*) FROM v_scores WHERE metric = 'format_leakage'").fetchone()[0]
    con.close()
    recorded = json.loads(config)["task_format"]
    assert recorded["kind"] == "regex" and recorded["value"] == [r"\d{4}\-\d{2}\-\d{2}"] and recorded["source"].startswith("inferred")
    assert leak_rows == 3 * (4 + 4 + 4)  # every general and leakage answer (3 suites, 4 each), at 3 scales
    store = Store(db)
    run_id = store.query("SELECT run_id FROM runs WHERE kind = 'sweep'")[0]["run_id"]
    from harness.models.adapters import inspect_adapter

    points = curve(build_comparison(store, run_id), inspect_adapter(a).adapter_id)
    # measured at every scale, over the 8 built-in answers and the user's 4
    assert all(p.leakage is not None and p.n_leakage == 12 for p in points), points
    capsys.readouterr()
    main(["check", "--base", str(tiny_model_dir), "--db", str(db), "--adapter", str(a), *suites, "--limit", "4"])
    out = capsys.readouterr()
    assert "format_leakage: not measured" not in out.out + out.err and "leakage" in out.out + out.err


def test_a_date_adapter_that_answers_everything_with_a_date_is_caught_end_to_end(tiny_model_dir, tmp_path, capsys):
    """Issue 32.3: train, sweep and check on a non-JSON task. The adapter is trained to answer every prompt, general
    ones included, with an ISO date (a constructed leak); the format is inferred from the task suite's targets (and
    recorded in harness.json from the training answers); the sweep measures leakage at every scale from the built-in
    suites, no scale that fails a gate is recommended, and the release check fails the leakage gate at scale 1."""
    import re

    from harness.cli import main
    from harness.records import read_adapter_record

    general = ["What is the capital of France?", "What colour is the sky?", "Who wrote Hamlet?", "Name a fruit.",
               "How many legs does a spider have?", "Say hello."]
    rows = [{"prompt": f"Write {t} as an ISO 8601 date.", "completion": t} for t in DATES]
    rows += [{"prompt": q, "completion": "1999-08-31"} for q in general]
    data = tmp_path / "dates.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows * 2))
    spec = tmp_path / "dates.yaml"
    spec.write_text(f"base: {tiny_model_dir}\ndata: {data}\nr: 8\nlora_alpha: 16\nlearning_rate: 1e-2\nmax_steps: 60\n"
                    "per_device_train_batch_size: 8\neval_split: 0\n")
    db = str(tmp_path / "h.duckdb")
    adapter = tmp_path / "dates-adapter"
    assert main(["train", str(spec), "--out", str(adapter), "--db", db]) == 0
    record = read_adapter_record(adapter)
    assert record is not None and record.task_format is not None and record.task_format.kind == "regex"
    task = _suite(tmp_path, "")
    suites = ["--suite", str(task), "--suite", "general-knowledge", "--suite", "format-leakage"]
    capsys.readouterr()
    main(["sweep", "--base", str(tiny_model_dir), "--db", db, "--adapter", str(adapter), *suites, "--limit", "6",
          "--scales", "0,0.5,1"])
    out = capsys.readouterr().out
    table = out.split("release gates judged at every scale", 1)[1]
    at_one = next(line for line in table.splitlines() if line.startswith("1 "))
    assert "FAIL" in at_one and "leakage" in at_one, table
    assert not re.search(r"leakage\s+—", table)  # measured at every scale
    shipped = re.findall(r"ship scale ([\d.]+)", out)
    for s in shipped:  # a recommended scale passes its gates in the same table
        assert "pass" in next(line for line in table.splitlines() if line.startswith(f"{s} ")), table
    assert main(["check", "--base", str(tiny_model_dir), "--db", db, "--adapter", str(adapter), *suites, "--limit", "6",
                 "--scale", "1"]) == 1
    check_out = capsys.readouterr()
    line = next(x for x in (check_out.out + check_out.err).splitlines() if "general and leakage answers in" in x)
    leaked, n = map(int, re.search(r"\((\d+)/(\d+) general and leakage answers", line).groups())
    assert line.startswith("FAIL  leakage") and n == 12 and leaked >= 6, line  # the constructed leak is caught


def test_a_format_pattern_is_capped():
    with pytest.raises(UsageError, match="at most 300"):
        parse_flag("regex:" + "(a|aa)+" * 60)
