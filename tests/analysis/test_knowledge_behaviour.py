"""Knowledge (likelihood), behaviour (answers) and drift in the sweep: the sentence that tells them apart, the gate
rule that judges both, and the sweep's table checked against the raw rows of its DuckDB file."""

from __future__ import annotations

import json
import re
from pathlib import Path

import duckdb
import pytest

from harness.analysis.sweep import ScalePoint, knowledge_or_behaviour, passes, recommend
from harness.cli import main
from tests.analysis.test_sweep import make_adapter


def K(scale: float, knowledge: float | None, behaviour: float | None, leakage: float = 0.0, task: float = 0.5) -> ScalePoint:
    return ScalePoint(scale, task, behaviour, leakage, n_task=40, kept=round((behaviour or 0) * 100), base_correct=100,
                      n_leakage=50, n_leaked=round(leakage * 50), knowledge=knowledge,
                      knowledge_kept=round((knowledge or 0) * 200), knowledge_base_correct=200)


def test_the_sentence_names_what_was_lost():
    kept_knowledge = knowledge_or_behaviour(K(1.0, 0.98, 0.40, leakage=0.6))
    assert kept_knowledge is not None
    assert "knowledge is still there" in kept_knowledge and "behaviour broke" in kept_knowledge
    assert "98.0% (196/200)" in kept_knowledge and "40.0% (40/100)" in kept_knowledge and "60% of general answers" in kept_knowledge
    both = knowledge_or_behaviour(K(1.0, 0.50, 0.40))
    assert both is not None and both.startswith("scale 1: knowledge lost") and "behaviour with it" in both
    only_knowledge = knowledge_or_behaviour(K(0.5, 0.80, 0.99))
    assert only_knowledge is not None and "knowledge lost" in only_knowledge and "still look right" in only_knowledge
    fine = knowledge_or_behaviour(K(0.25, 0.99, 0.97))
    assert fine is not None and "both kept" in fine
    # not measured: no sentence rather than a guess
    assert knowledge_or_behaviour(K(1.0, None, 0.4)) is None and knowledge_or_behaviour(K(1.0, 0.9, None)) is None
    assert knowledge_or_behaviour(K(0.0, 1.0, 1.0)) is None
    # the limit decides "kept": at the boundary it counts; below it, a share the sample cannot tell from the limit
    # (94/100: the 95% Wilson interval reaches 0.95) is "short", one it can (85/100) is lost
    assert "both kept" in (knowledge_or_behaviour(K(1.0, 0.95, 0.95)) or "")
    short = knowledge_or_behaviour(K(1.0, 0.95, 0.94)) or ""
    assert "neither clearly lost" in short and "short of 95%" in short
    assert "behaviour broke" in (knowledge_or_behaviour(K(1.0, 0.95, 0.85)) or "")


def test_the_demo_case_knowledge_short_of_the_limit_behaviour_gone():
    # the demo's plain adapter at scale 1 (README): 35 of 37 base-correct choices kept, 0 of 25 answers
    p = ScalePoint(1.0, 0.75, 0.0, 0.99, n_task=48, kept=0, base_correct=25, n_leakage=96, n_leaked=95,
                   knowledge=35 / 37, knowledge_kept=35, knowledge_base_correct=37)
    sentence = knowledge_or_behaviour(p) or ""
    assert sentence.startswith("scale 1: the knowledge is still there (knowledge 94.6% (35/37) kept by likelihood, short of 95%")
    assert "behaviour broke (behaviour 0.0% (0/25)" in sentence and "99% of general answers in the task's format" in sentence


def test_a_scale_that_keeps_behaviour_but_loses_knowledge_is_not_recommended():
    points = [K(0.0, 1.0, 1.0, task=0.1), K(0.5, 0.97, 0.99, task=0.5), K(1.0, 0.60, 1.0, task=0.9)]
    assert passes(points[1]) and not passes(points[2])
    rec = recommend(points)
    assert rec.scale == 0.5
    assert "retention of knowledge 97.0% (194/200) and of behaviour 99.0% (99/100)" in rec.sentence


SUITES = {
    "task": ("role: task\ndata: {path: data.jsonl, fields: {input: q, target: a}}\ngeneration: {max_new_tokens: 4}\n"
             "scorers: [exact_match]\n", [{"q": f"Order {i}?", "a": "yes"} for i in range(3)]),
    # a random model answers nothing right: every answer counts as "right" here, so the base has a correct set to keep
    "behaviour": ("role: general\ndata: {path: data.jsonl, fields: {input: q, target: a}}\n"
                  "generation: {max_new_tokens: 5}\nscorers: [{name: regex, args: {pattern: '(?s).*'}}]\n",
                  [{"q": q, "a": a} for q, a in [("Two plus two?", "four"), ("Sky colour?", "blue"), ("Hot or cold?", "cold"),
                                                 ("Capital of France?", "Paris")]]),
    "knowledge": ("role: general\nkind: multiple_choice\ndata: {path: data.jsonl, fields: {input: q, target: a, choices: c}}\n"
                  "prompt: {raw: true, template: \"Question: {{ input }}\\nAnswer:\"}\n",
                  [{"q": f"Fact number {i}?", "c": ["red", "green", "blue", "yellow cat"], "a": i % 4} for i in range(12)]),
}


def _suite(root: Path, name: str) -> Path:
    spec, rows = SUITES[name]
    d = root / name
    d.mkdir()
    (d / "suite.yaml").write_text(f"name: {name}\nversion: 1\n{spec}")
    (d / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d / "suite.yaml"


def _raw(db: Path, sql: str) -> list[tuple]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def test_the_sweep_table_shows_knowledge_behaviour_leakage_and_drift_as_the_raw_rows_give_them(tiny_model_dir, tmp_path, capsys):
    a = make_adapter(tiny_model_dir, tmp_path / "a", 7)
    db = tmp_path / "h.duckdb"
    args = ["sweep", "--base", str(tiny_model_dir), "--db", str(db), "--adapter", str(a), "--scales", "0,0.5,1",
            "--task-format", "labels:yes|no", "--no-gates"]
    for name in ("task", "behaviour", "knowledge"):
        args += ["--suite", str(_suite(tmp_path, name))]
    assert main(args) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("scale"))
    assert re.split(r"\s{2,}", header.strip())[:6] == ["scale", "task", "knowledge", "behaviour", "leakage", "drift (KL)"]
    rows = {line.split()[0]: line for line in out.splitlines() if re.match(r"^(0|0\.5|1)( \(base\))?\s", line)}

    # independent figures from the raw tables: per (scale, suite, example, metric) values of this run
    vals: dict[tuple, float | None] = {}
    for scale, suite, ex, metric, value in _raw(db, "SELECT g.scale, s.name, g.example_id, sc.metric, sc.value "
                                                    "FROM generations g JOIN scores sc USING (cache_key) "
                                                    "JOIN suites s USING (suite_id)"):
        vals[(scale, suite, ex, metric)] = value
    for scale in (0.5, 1.0):
        for suite, metric, shown in (("knowledge", "acc", 2), ("behaviour", "regex", 3)):
            base_ok = [ex for (sc, su, ex, m), v in vals.items() if (sc, su, m) == (0.0, suite, metric) and v == 1.0]
            kept = [ex for ex in base_ok if vals.get((scale, suite, ex, metric)) == 1.0]
            cell = re.split(r"\s{2,}", rows[f"{scale:g}"].strip())[shown]
            if base_ok:
                assert cell == f"{100 * len(kept) / len(base_ok):5.1f}% ({len(kept)}/{len(base_ok)})".strip()
            else:
                assert cell.startswith("—")
        kls = [v for (sc, su, ex, m), v in vals.items() if sc == scale and m == "drift_kl"]
        # drift on the general suite that answers (4 questions), none on the multiple-choice one
        assert len(kls) == 4 and all(v is not None and v >= 0 for v in kls)
        assert f"{sum(kls) / len(kls):.4f}" in rows[f"{scale:g}"]
    assert "0.0000" in rows["0"]  # the base model does not drift from itself
    assert not [1 for (sc, su, ex, m) in vals if su == "knowledge" and m.startswith("drift")]
    # the multiple-choice rows: acc is 1 exactly when the stored log-likelihood of the right choice is the highest
    for (gold, settings, output) in _raw(db, "SELECT e.target, g.settings, g.output FROM generations g JOIN examples e "
                                             "USING (suite_id, example_id) JOIN suites s USING (suite_id) "
                                             "WHERE s.name = 'knowledge'"):
        lls = json.loads(settings)["logprobs"]
        choices = SUITES["knowledge"][1][0]["c"]
        assert output == choices[max(range(4), key=lambda i: (lls[i], -i))]
        assert gold in choices
    assert "knowledge or behaviour: scale 1:" in out, out

    # a second sweep reuses every row, drift included: nothing generated, the same table
    assert main(args) == 0
    again = capsys.readouterr()
    assert "0 generated" in again.err and header in again.out


@pytest.mark.parametrize("with_behaviour", [True, False])
def test_the_release_check_judges_knowledge_and_behaviour_retention_apart(tiny_model_dir, tmp_path, capsys, with_behaviour):
    a = make_adapter(tiny_model_dir, tmp_path / "a", 3)
    args = ["check", "--base", str(tiny_model_dir), "--db", str(tmp_path / "h.duckdb"), "--adapter", str(a),
            "--scale", "1", "--task-format", "labels:yes|no", "--suite", str(_suite(tmp_path, "task")),
            "--suite", str(_suite(tmp_path, "knowledge"))]
    if with_behaviour:
        args += ["--suite", str(_suite(tmp_path, "behaviour"))]
    main(args)
    out = capsys.readouterr().out
    assert "knowledge_retention" in out and "knowledge retention (every general multiple-choice suite)" in out
    if not with_behaviour:
        # behaviour not measured is a failed gate that says what to add, never a pass
        assert "retention (every general suite that answers): not measured" in out and "e.g. --suite general-knowledge" in out


def test_knowledge_alone_says_what_behaviour_leakage_and_drift_need(tiny_model_dir, tmp_path, capsys):
    a = make_adapter(tiny_model_dir, tmp_path / "a", 5)
    args = ["sweep", "--base", str(tiny_model_dir), "--db", str(tmp_path / "h.duckdb"), "--adapter", str(a),
            "--scales", "0,1", "--task-format", "labels:yes|no", "--no-gates",
            "--suite", str(_suite(tmp_path, "task")), "--suite", str(_suite(tmp_path, "knowledge"))]
    main(args)
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("scale"))
    assert re.split(r"\s{2,}", header.strip())[:6] == ["scale", "task", "knowledge", "behaviour", "leakage", "drift (KL)"]
    row = next(line for line in out.splitlines() if line.startswith("1 "))
    assert re.split(r"\s{2,}", row.strip())[3:6] == ["—", "—", "—"]
    assert "behaviour, leakage and drift not measured" in out and "--suite general-knowledge" in out
    assert "knowledge or behaviour:" not in out  # no sentence without both figures
