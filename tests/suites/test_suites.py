"""Suite specs: validation reports every error at once, with file and line; data loads via datasets."""

import json
from pathlib import Path

import pytest

from harness.errors import SuiteError
from harness.suites.spec import builtin_suites, load_examples, load_suite, render_user_text

GOOD = """\
name: my-suite
version: 1
description: test
data:
  path: data.jsonl
  fields: {input: question, target: answer}
prompt:
  template: "Q: {{ input }}"
generation:
  max_new_tokens: 8
  stop: ["\\n"]
scorers:
  - name: alias_match
gates:
  - metric: alias_match
    min: 0.5
"""


def write_suite(tmp_path: Path, yaml_text: str, rows=None) -> Path:
    (tmp_path / "suite.yaml").write_text(yaml_text)
    rows = rows if rows is not None else [{"id": "a", "question": "Capital of France?", "answer": "Paris", "aliases": ["paris"]}]
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path / "suite.yaml"


def test_user_suite_loads(tmp_path):
    suite = load_suite(write_suite(tmp_path, GOOD))
    assert suite.name == "my-suite" and suite.generation.stop == ("\n",)
    ex = load_examples(suite)
    assert ex[0].target == "Paris" and ex[0].aliases == ("paris",) and ex[0].references == ("Paris",)
    assert render_user_text(suite, ex[0]) == "Q: Capital of France?"


def test_suite_id_changes_with_data(tmp_path):
    a = load_suite(write_suite(tmp_path, GOOD)).suite_id
    b = load_suite(write_suite(tmp_path, GOOD, [{"id": "a", "question": "Other?", "answer": "x"}])).suite_id
    assert a != b


def test_broken_suite_reports_every_error_with_lines(tmp_path):
    bad = GOOD.replace("name: my-suite", "name: My Suite").replace("max_new_tokens: 8", "max_new_tokens: 0")
    bad = bad.replace("- name: alias_match", "- name: no_such_scorer\n  - name: exact_match\n    args: {bogus: 1}")
    bad += "colour: blue\n"
    with pytest.raises(SuiteError) as e:
        load_suite(write_suite(tmp_path, bad))
    msg = str(e.value)
    assert "5 problem(s)" in msg, msg
    y = tmp_path / "suite.yaml"
    for needle in (f"{y}:1: name must be", f"{y}:10: generation.max_new_tokens", f"{y}:13: unknown scorer 'no_such_scorer'",
                   f"{y}:15: scorer 'exact_match'", f"{y}:19: unknown key 'colour'"):
        assert needle in msg, needle


def test_malformed_jsonl_line_named(tmp_path):
    p = write_suite(tmp_path, GOOD)
    (tmp_path / "data.jsonl").write_text('{"question": "a"}\n{"question": \n')
    with pytest.raises(SuiteError, match=r"data.jsonl:2: malformed JSON"):
        load_suite(p)


def test_duplicate_ids_and_empty_input(tmp_path):
    rows = [{"id": "a", "question": "x"}, {"id": "a", "question": "y"}, {"id": "b", "question": " "}]
    suite = load_suite(write_suite(tmp_path, GOOD, rows))
    with pytest.raises(SuiteError, match=r"(?s)duplicate id 'a'.*empty"):
        load_examples(suite)


def test_missing_column_names_fix(tmp_path):
    suite = load_suite(write_suite(tmp_path, GOOD, [{"id": "a", "text": "x"}]))
    with pytest.raises(SuiteError, match="data.fields"):
        load_examples(suite)


def test_csv_data(tmp_path):
    (tmp_path / "d.csv").write_text("question,answer\nWhat is 2+2?,4\n")
    suite = load_suite(write_suite(tmp_path, GOOD.replace("data.jsonl", "d.csv")))
    assert load_examples(suite)[0].target == "4"


def test_unknown_suite_lists_builtins(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SuiteError, match="built-in suites"):
        load_suite("nope")


def test_every_builtin_suite_loads():
    names = builtin_suites()
    for name in names:
        suite = load_suite(name)
        assert load_examples(suite), name


def test_limit_takes_a_balanced_deterministic_subset_across_categories():
    from collections import Counter

    suite = load_suite("general-knowledge")
    every = load_examples(suite)
    some = load_examples(suite, limit=40)
    assert len(some) == 40 and [e.id for e in some] == [e.id for e in load_examples(suite, limit=40)]
    counts = Counter(e.category for e in some)
    assert len(counts) == len({e.category for e in every}) and max(counts.values()) - min(counts.values()) <= 1
    order = {e.id: i for i, e in enumerate(every)}
    assert [order[e.id] for e in some] == sorted(order[e.id] for e in some)  # file order kept


def test_parquet_and_saved_dataset_directory_data(tmp_path):
    import datasets

    rows = {"id": ["p1", "p2"], "question": ["What is 2+2?", "Capital of Italy?"], "answer": ["4", "Rome"]}
    datasets.Dataset.from_dict(rows).to_parquet(str(tmp_path / "d.parquet"))
    suite = load_suite(write_suite(tmp_path, GOOD.replace("data.jsonl", "d.parquet")))
    assert [(e.id, e.target) for e in load_examples(suite)] == [("p1", "4"), ("p2", "Rome")]

    datasets.DatasetDict({"test": datasets.Dataset.from_dict(rows)}).save_to_disk(str(tmp_path / "saved"))
    yaml_text = GOOD.replace("  path: data.jsonl\n", "  path: saved\n  split: test\n")
    suite = load_suite(write_suite(tmp_path, yaml_text))
    assert [e.input for e in load_examples(suite)] == rows["question"]


def test_empty_data_file_is_a_suite_error(tmp_path):
    write_suite(tmp_path, GOOD, rows=[])
    with pytest.raises(SuiteError, match=r"data\.jsonl: empty"):
        load_suite(tmp_path / "suite.yaml")
