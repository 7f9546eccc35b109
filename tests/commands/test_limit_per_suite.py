"""--limit (a stratified sample of each suite) and --limit-per-suite (the first N of each suite, in file order)
for `harness eval`, `harness sweep` and `harness check` (issue 16.7): which examples each takes, checked against
the data file itself, stored with the run, and said in the help."""

from __future__ import annotations

import json
import re

import duckdb
import pytest

from harness.cli import main
from harness.suites.spec import Limit, load_examples, load_suite, subsample
from tests.commands.test_results_cli import _adapter

SUITE = """\
name: cats
version: 1
role: general
data: {path: data.jsonl, fields: {input: question, target: answer, category: topic}}
generation: {max_new_tokens: 3}
scorers:
  - name: regex  # every answer matches: the base answers all correctly, so retention is measured
    args: {pattern: "^"}
"""
# sorted by category, as exported data often is: the first rows are all one category
ROWS = [{"id": f"{t}-{i}", "topic": t, "question": f"{t} question {i}?", "answer": "x"} for t in ("art", "geo", "sci")
        for i in range(3)]


@pytest.fixture(scope="module")
def env(tiny_model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("limits")
    (tmp / "suite.yaml").write_text(SUITE)
    (tmp / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    (tmp / "harness.toml").write_text('[gates]\nmin_retention = 0.0\nskip = ["leakage", "task"]\n')
    return {"tmp": tmp, "suite": tmp / "suite.yaml", "adapter": _adapter(tiny_model_dir, tmp / "adapter", 3),
            "base": tiny_model_dir}


def _newest_run(db) -> tuple[list[str], dict]:
    """The example ids the newest run evaluated (any target) and its stored config, from the raw tables."""
    con = duckdb.connect(str(db), read_only=True)
    try:
        run_id, config = con.execute("SELECT run_id, config FROM runs ORDER BY started_at DESC LIMIT 1").fetchone()
        ids = [r[0] for r in con.execute("SELECT DISTINCT g.example_id FROM run_results rr JOIN generations g USING "
                                         "(cache_key) WHERE rr.run_id = ?", [run_id]).fetchall()]
    finally:
        con.close()
    return sorted(ids), json.loads(config)


FIRST_2 = sorted(r["id"] for r in ROWS[:2])  # both "art"
ONE_PER_TOPIC = sorted(next(r["id"] for r in ROWS if r["topic"] == t) for t in ("art", "geo", "sci"))


def test_first_n_in_file_order_and_the_stratified_sample_differ_on_sorted_data(env):
    suite = load_suite(env["suite"])
    every = load_examples(suite)
    assert [e.id for e in every] == [r["id"] for r in ROWS]
    first = load_examples(suite, Limit(2, "first"))
    assert [e.id for e in first] == [r["id"] for r in ROWS[:2]] == [e.id for e in subsample(every, Limit(2, "first"))]
    assert sorted(e.id for e in load_examples(suite, Limit(3))) == ONE_PER_TOPIC == sorted(e.id for e in load_examples(suite, 3))
    assert [e.id for e in load_examples(suite, Limit(50, "first"))] == [e.id for e in every]


def test_eval_takes_the_first_n_per_suite_or_a_stratified_sample(env, tmp_path, capsys):
    db = tmp_path / "h.duckdb"
    common = ["eval", "--base", str(env["base"]), "--db", str(db), "--suite", str(env["suite"]), "--no-gates"]
    assert main([*common, "--limit-per-suite", "2"]) == 0
    ids, config = _newest_run(db)
    assert ids == FIRST_2 and config["limit"] == {"n": 2, "how": "first"}
    assert main([*common, "--limit", "3"]) == 0
    ids, config = _newest_run(db)
    assert ids == ONE_PER_TOPIC and config["limit"] == {"n": 3, "how": "stratified"}
    assert main(common) == 0
    ids, config = _newest_run(db)
    assert ids == sorted(r["id"] for r in ROWS) and config["limit"] is None


def test_sweep_and_check_take_the_first_n_per_suite(env, tmp_path, capsys):
    db = tmp_path / "h.duckdb"
    assert main(["sweep", "--base", str(env["base"]), "--db", str(db), "--suite", str(env["suite"]), "--adapter",
                 str(env["adapter"]), "--scales", "0.5,1", "--no-gates", "--limit-per-suite", "2"]) == 0
    ids, config = _newest_run(db)
    assert ids == FIRST_2 and config["limit"] == {"n": 2, "how": "first"}
    assert main(["check", "--base", str(env["base"]), "--db", str(db), "--suite", str(env["suite"]), "--adapter",
                 str(env["adapter"]), "--gates", str(env["tmp"] / "harness.toml"), "--limit-per-suite", "2"]) == 0
    ids, config = _newest_run(db)
    assert ids == FIRST_2 and config["limit"] == {"n": 2, "how": "first"}


@pytest.mark.parametrize("command", ["eval", "sweep", "check"])
def test_limits_are_positive_and_one_or_the_other(env, tmp_path, command, capsys):
    args = [command, "--base", str(env["base"]), "--db", str(tmp_path / "h.duckdb"), "--suite", str(env["suite"]),
            "--adapter", str(env["adapter"])]
    with pytest.raises(SystemExit) as both:
        main([*args, "--limit", "2", "--limit-per-suite", "2"])
    assert both.value.code == 2 and "not allowed with argument" in capsys.readouterr().err
    assert main([*args, "--limit-per-suite", "0"]) == 2
    assert "--limit-per-suite 0: must be a positive number" in capsys.readouterr().err
    assert not (tmp_path / "h.duckdb").exists()  # refused before anything was opened


@pytest.mark.parametrize("command", ["eval", "sweep", "check"])
def test_help_says_how_each_limit_picks_its_examples(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split()).split("options:")[1]  # the option list, not the usage line
    limit = re.search(r"--limit N (.*?) --limit-per-suite N", text).group(1)
    per_suite = re.search(r"--limit-per-suite N (.*?) --batch-size", text).group(1)
    assert "stratified sample of N examples from each suite" in limit and "not the first N rows" in limit
    assert "the same subset every run" in limit
    assert "the first N examples of each suite, in file order" in per_suite and "the same N every run" in per_suite
