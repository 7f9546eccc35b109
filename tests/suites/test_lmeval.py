"""lm-evaluation-harness task YAMLs read as suites (harness.suites.lmeval), native likelihood suites, and what an
evaluation of them stores.

Expected contexts, few-shot draws, gold indices and log-probabilities are computed here from the jsonl files and
the model itself (plain torch), never taken from the code under test."""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path

import pytest

from harness.cli import main
from harness.errors import SafetyError, SuiteError
from harness.suites.spec import load_examples, load_suite

CAPITALS = Path(__file__).resolve().parents[2] / "suites" / "lmeval-capitals"
DESCRIPTION = "Answer with the country's capital city.\n\n"


def _rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (CAPITALS / name).read_text().splitlines() if line.strip()]


def _question(row: dict) -> str:
    return f"Question: What is the capital of {row['country']}?\nAnswer:"


def _copy(tmp_path: Path, name: str = "cap", text: str | None = None) -> Path:
    """The shipped task folder copied (data files and all), the task file replaced by ``text`` when given."""
    d = tmp_path / name
    shutil.copytree(CAPITALS, d)
    if text is not None:
        (d / "task.yaml").write_text(text)
    return d / "task.yaml"


def _task_text() -> str:
    return (CAPITALS / "task.yaml").read_text()


def _line_of(text: str, fragment: str) -> int:
    [n] = [i + 1 for i, line in enumerate(text.splitlines()) if fragment in line]
    return n


def _check(path: Path, capsys) -> tuple[int, str]:
    capsys.readouterr()
    rc = main(["suites", "check", str(path)])
    return rc, capsys.readouterr().err


@pytest.fixture(autouse=True)
def _no_extra_roots(monkeypatch):
    monkeypatch.delenv("HARNESS_SUITE_ROOTS", raising=False)


# --- the shipped task ---------------------------------------------------------------------------------------------


def test_the_shipped_multiple_choice_task_loads_as_lm_eval_reads_it():
    suite = load_suite(CAPITALS / "task.yaml")
    assert suite.kind == "multiple_choice" and suite.headline == "acc" and suite.role == "general"
    assert suite.target_delimiter == " "
    examples = load_examples(suite)
    rows = _rows("capitals_test.jsonl")
    assert len(examples) == len(rows) == 32
    for ex, row in zip(examples, rows):
        assert len(ex.choices) == 4 and ex.choices == tuple(row["choices"])
        assert 0 <= ex.gold < 4 and ex.gold == row["answer"]
        assert ex.target == row["choices"][row["answer"]] == row["capital"]
        assert ex.input == DESCRIPTION + _question(row)
    assert examples[0].input == "Answer with the country's capital city.\n\nQuestion: What is the capital of France?\nAnswer:"


def test_the_shipped_loglikelihood_task_loads():
    suite = load_suite(CAPITALS / "task_loglikelihood.yaml")
    assert suite.kind == "loglikelihood" and suite.headline == "acc"
    examples = load_examples(suite)
    rows = _rows("capitals_test.jsonl")
    assert len(examples) == 32
    for ex, row in zip(examples, rows):
        assert ex.input == f"The capital of {row['country']} is"
        assert ex.target == " " + row["capital"]
        assert ex.choices == () and ex.gold is None


# --- few-shot -----------------------------------------------------------------------------------------------------


def _block(row: dict) -> str:
    return _question(row) + " " + row["choices"][row["answer"]] + "\n\n"


def test_two_shot_contexts_are_drawn_from_the_train_split_as_lm_eval_draws_them(tmp_path):
    task = _copy(tmp_path, text=_task_text().replace("num_fewshot: 0", "num_fewshot: 2"))
    first = load_examples(load_suite(task))
    again = load_examples(load_suite(task))
    assert [e.input for e in first] == [e.input for e in again]  # deterministic
    test_rows, train_rows = _rows("capitals_test.jsonl"), _rows("capitals_train.jsonl")
    blocks = {_block(r) for r in train_rows}
    # lm-eval's default sampler: one random.Random(1234) for the task, rnd.sample(fewshot docs, n) per document
    rnd = random.Random(1234)
    for ex, row in zip(first, test_rows):
        assert ex.input.startswith(DESCRIPTION) and ex.input.endswith(_question(row))
        shots = ex.input[len(DESCRIPTION):-len(_question(row))]
        parts = [p + "\n\n" for p in shots.split("\n\n") if p]
        assert len(parts) == 2 and "".join(parts) == shots
        assert set(parts) <= blocks and parts[0] != parts[1]
        assert _question(row) + " " not in shots  # not the evaluated document itself
        assert parts == [_block(r) for r in rnd.sample(train_rows, 2)]


def test_few_shot_from_the_test_split_leaves_the_document_itself_out(tmp_path):
    text = _task_text().replace("num_fewshot: 0", "num_fewshot: 2").replace("fewshot_split: train", "fewshot_split: test")
    examples = load_examples(load_suite(_copy(tmp_path, text=text)))
    test_rows = _rows("capitals_test.jsonl")
    rnd = random.Random(1234)
    for ex, row in zip(examples, test_rows):
        # lm-eval: sample n + 1, drop the document itself, keep n
        picked = [r for r in rnd.sample(test_rows, 3) if r != row][:2]
        assert ex.input == DESCRIPTION + "".join(_block(r) for r in picked) + _question(row)
        assert ex.input.count(_question(row)) == 1


# --- refusals -----------------------------------------------------------------------------------------------------


def test_a_function_tag_is_refused_with_its_file_and_line_and_never_run(tmp_path, capsys):
    text = _task_text().replace("doc_to_choice:", "process_docs: !function utils.process_docs\ndoc_to_choice:")
    task = _copy(tmp_path, text=text)
    ran = tmp_path / "ran"
    (task.parent / "utils.py").write_text(f"open({str(ran)!r}, 'w').write('imported')\n"
                                          "def process_docs(dataset):\n    return dataset\n")
    rc, err = _check(task, capsys)
    assert rc == 2
    assert f"{task}:{_line_of(text, '!function')}: !function utils.process_docs" in err
    assert not ran.exists()
    with pytest.raises(SuiteError, match="names Python code"):
        load_suite(task)


def test_a_hub_dataset_id_is_refused_with_how_to_make_it_local(tmp_path, capsys):
    text = _task_text().replace("dataset_path: json", "dataset_path: cais/mmlu\ndataset_name: all")
    task = _copy(tmp_path, text=text)
    rc, err = _check(task, capsys)
    assert rc == 2
    assert f"{task}:{_line_of(text, 'cais/mmlu')}: dataset_path: 'cais/mmlu'" in err
    assert "save_to_disk" in err and "load_dataset('cais/mmlu', 'all')" in err and "dataset_path: ./mmlu" in err


def test_process_results_is_refused_naming_the_key(tmp_path, capsys):
    text = _task_text().replace("doc_to_choice:", "process_results: utils.process_results\ndoc_to_choice:")
    task = _copy(tmp_path, text=text)
    rc, err = _check(task, capsys)
    assert rc == 2
    assert f"{task}:{_line_of(text, 'process_results')}: process_results: refused" in err


def test_an_unknown_key_is_reported_with_its_line(tmp_path, capsys):
    text = _task_text().replace("doc_to_choice:", "bogus_key: 1\ndoc_to_choice:")
    task = _copy(tmp_path, text=text)
    rc, err = _check(task, capsys)
    assert rc == 2
    assert f"{task}:{_line_of(text, 'bogus_key')}: bogus_key: not an lm-eval task key read here" in err


def test_an_include_beside_the_task_is_merged_and_one_outside_is_a_safety_error(tmp_path, capsys):
    folder = _copy(tmp_path).parent
    shutil.copy(folder / "task.yaml", folder / "base.yaml")
    (folder / "inc.yaml").write_text("include: base.yaml\ntask: capitals_inc\ndescription: ''\n")
    suite = load_suite(folder / "inc.yaml")
    assert suite.name == "capitals-inc" and suite.kind == "multiple_choice"
    first = load_examples(suite)[0]
    assert first.input == _question(_rows("capitals_test.jsonl")[0])  # the includer's description wins
    # a real task file, but outside the folder
    shutil.copy(CAPITALS / "task.yaml", tmp_path / "outside.yaml")
    (folder / "out.yaml").write_text("include: ../outside.yaml\ntask: capitals_out\n")
    rc, err = _check(folder / "out.yaml", capsys)
    assert rc == 4
    assert "include '../outside.yaml'" in err and "outside the suite's folder" in err
    with pytest.raises(SafetyError):
        load_suite(folder / "out.yaml")


def test_data_files_outside_the_folder_are_a_safety_error(tmp_path, capsys):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(CAPITALS / "capitals_test.jsonl", elsewhere / "capitals_test.jsonl")
    text = _task_text().replace("test: capitals_test.jsonl", "test: ../elsewhere/capitals_test.jsonl")
    task = _copy(tmp_path, text=text)
    rc, err = _check(task, capsys)
    assert rc == 4
    assert "dataset_kwargs.data_files '../elsewhere/capitals_test.jsonl'" in err and "outside the suite's folder" in err
    # a link out of the folder under the expected name is refused too
    link_task = _copy(tmp_path, "linked")
    (link_task.parent / "capitals_test.jsonl").unlink()
    (link_task.parent / "capitals_test.jsonl").symlink_to(elsewhere / "capitals_test.jsonl")
    rc, err = _check(link_task, capsys)
    assert rc == 4 and "outside the suite's folder" in err


def test_a_target_that_is_not_one_of_the_choices_names_the_document(tmp_path, capsys):
    text = _task_text().replace('doc_to_target: "{{answer}}"', 'doc_to_target: "{{capital}}"')
    task = _copy(tmp_path, text=text)
    assert _check(task, capsys)[0] == 0  # the capital is one of the choices in every row
    data = task.parent / "capitals_test.jsonl"
    rows = _rows("capitals_test.jsonl")
    rows[2]["capital"] = "Roma"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    rc, err = _check(task, capsys)
    assert rc == 2
    assert "document 2 of split test" in err and "'Roma' is not one of the choices" in err


# --- an evaluation end to end ---------------------------------------------------------------------------------------


def _first_argmax(values: list[float]) -> int:
    best = 0
    for i, v in enumerate(values):
        if v > values[best]:
            best = i
    return best


@pytest.fixture(scope="module")
def reference_model(tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(str(tiny_model_dir))


def _logprob(reference_model, context: str, continuation: str) -> tuple[float, bool]:
    """lm-eval 0.4 by hand: the context's trailing whitespace to the continuation, the whole encoded, cut at the
    context's token count; one forward; the continuation tokens' log-probabilities summed; all of them greedy?"""
    import torch

    model, tok = reference_model
    n = len(context) - len(context.rstrip())
    if n:
        context, continuation = context[:-n], context[-n:] + continuation
    ctx = tok(context)["input_ids"]
    cont = tok(context + continuation)["input_ids"][len(ctx):]
    with torch.no_grad():
        lp = torch.log_softmax(model(input_ids=torch.tensor([ctx + cont])).logits[0].float(), -1)
    at = lp[len(ctx) - 1:len(ctx) - 1 + len(cont)]
    want = torch.tensor(cont)
    return float(at.gather(-1, want[:, None]).sum()), bool((at.argmax(-1) == want).all())


def _stored(db: Path) -> dict[str, dict]:
    """Per example of the base rows: prompt, output, settings, scores (read with duckdb, read-only)."""
    import duckdb

    con = duckdb.connect(str(db), read_only=True)
    try:
        rows = con.execute(
            "SELECT g.example_id, g.prompt, g.output, g.settings, s.metric, s.value FROM generations g "
            "JOIN scores s USING (cache_key) WHERE g.adapter_id IS NULL").fetchall()
    finally:
        con.close()
    out: dict[str, dict] = {}
    for ex_id, prompt, output, settings, metric, value in rows:
        row = out.setdefault(ex_id, {"prompt": prompt, "output": output, "settings": json.loads(settings), "scores": {}})
        row["scores"][metric] = value
    return out


def test_eval_of_the_multiple_choice_task_stores_what_lm_eval_would_score(tiny_model_dir, tmp_path, reference_model):
    task = _copy(tmp_path)
    db = tmp_path / "h.duckdb"
    assert main(["eval", "--suite", str(task), "--base", str(tiny_model_dir), "--db", str(db), "--no-gates"]) == 0
    stored = _stored(db)
    rows = _rows("capitals_test.jsonl")
    assert sorted(stored, key=int) == [str(i) for i in range(len(rows))]
    for ex_id, got in stored.items():
        row = rows[int(ex_id)]
        choices, gold = row["choices"], row["answer"]
        lps = got["settings"]["logprobs"]
        assert got["settings"]["kind"] == "multiple_choice" and len(lps) == len(choices) == 4
        assert got["prompt"] == DESCRIPTION + _question(row)
        pred = _first_argmax(lps)
        assert got["output"] == choices[pred]
        assert set(got["scores"]) == {"acc", "acc_norm", "margin"}
        assert got["scores"]["acc"] == (1.0 if pred == gold else 0.0), ex_id
        norm = _first_argmax([lp / len(c) for lp, c in zip(lps, choices)])
        assert got["scores"]["acc_norm"] == (1.0 if norm == gold else 0.0), ex_id
        # the stored log-probabilities are rounded to 6 places, the margin is not: at most 1e-6 apart
        want_margin = lps[gold] - max(lp for i, lp in enumerate(lps) if i != gold)
        assert got["scores"]["margin"] == pytest.approx(want_margin, abs=1.5e-6), ex_id
    # the numbers themselves, for a few examples, from the model by hand
    for ex_id in ("0", "5", "17", "31"):
        got = stored[ex_id]
        for c, stored_lp in zip(rows[int(ex_id)]["choices"], got["settings"]["logprobs"]):
            want, _ = _logprob(reference_model, got["prompt"], " " + c)
            assert stored_lp == pytest.approx(want, abs=1e-4), (ex_id, c)
    # the scores are not all one value, so the checks above could fail either way
    assert {s["scores"]["acc"] for s in stored.values()} == {0.0, 1.0}


def test_eval_of_the_loglikelihood_task_stores_the_continuations_logprob(tiny_model_dir, tmp_path, reference_model):
    task = _copy(tmp_path).parent / "task_loglikelihood.yaml"
    db = tmp_path / "h.duckdb"
    assert main(["eval", "--suite", str(task), "--base", str(tiny_model_dir), "--db", str(db), "--no-gates",
                 "--limit-per-suite", "6"]) == 0
    stored = _stored(db)
    rows = _rows("capitals_test.jsonl")
    assert sorted(stored, key=int) == [str(i) for i in range(6)]
    for ex_id, got in stored.items():
        row = rows[int(ex_id)]
        assert got["prompt"] == f"The capital of {row['country']} is" and got["output"] == " " + row["capital"]
        want, greedy = _logprob(reference_model, got["prompt"], " " + row["capital"])
        assert got["scores"]["loglikelihood"] == pytest.approx(want, abs=1e-4), ex_id
        assert got["scores"]["acc"] == (1.0 if greedy else 0.0), ex_id


# --- native likelihood suites ---------------------------------------------------------------------------------------

MC = ("name: mc\nversion: 1\nkind: multiple_choice\ndata: {path: d.jsonl, fields: {input: q, target: a, choices: opts}}\n"
      "prompt: {raw: true, template: \"Q: {{ input }}\\nA:\"}\n")
LL = ("name: ll\nversion: 1\nkind: loglikelihood\ndata: {path: d.jsonl, fields: {input: q, target: a}}\n"
      "prompt: {raw: true, template: \"Q: {{ input }}\\nA:\"}\n")
GOOD = [{"id": "r1", "q": "capital of France?", "opts": ["Paris", "Lyon"], "a": "Paris"},
        {"id": "r2", "q": "two plus two?", "opts": ["three", "four", "five"], "a": 1}]


def _native(tmp_path: Path, spec: str, rows: list[dict], name: str = "s") -> Path:
    d = tmp_path / name
    d.mkdir()
    (d / "suite.yaml").write_text(spec)
    (d / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d / "suite.yaml"


def test_a_native_multiple_choice_suite_loads_a_target_by_text_or_index(tmp_path, capsys):
    path = _native(tmp_path, MC, GOOD)
    assert _check(path, capsys)[0] == 0
    examples = load_examples(load_suite(path))
    assert [(e.choices, e.gold, e.target) for e in examples] == [(("Paris", "Lyon"), 0, "Paris"),
                                                                 (("three", "four", "five"), 1, "four")]


@pytest.mark.parametrize(("bad", "message"), [
    ({"id": "r3", "q": "x?", "opts": "Paris, Lyon", "a": "Paris"}, "'opts' must be a list of at least two"),
    ({"id": "r3", "q": "x?", "opts": ["Paris", "Lyon"], "a": "Rome"}, "'a' 'Rome' is neither one of the choices"),
    ({"id": "r3", "q": "x?", "opts": ["Paris", "Lyon"], "a": 5}, "'a' is 5, not an index into its 2 choices"),
    ({"id": "r3", "q": "x?", "opts": ["Paris", "Paris", "Lyon"], "a": "Lyon"}, "'opts' lists the same choice twice"),
])
def test_a_bad_multiple_choice_row_is_reported_naming_the_row(tmp_path, capsys, bad, message):
    rc, err = _check(_native(tmp_path, MC, [*GOOD, bad]), capsys)
    assert rc == 2
    assert f"d.jsonl: row 3 (id r3): {message}" in err


def test_a_loglikelihood_suite_with_a_target_delimiter_is_refused_naming_the_key(tmp_path, capsys):
    rows = [{"id": "r1", "q": "capital of France?", "a": " Paris"}]
    assert _check(_native(tmp_path, LL, rows, "ok"), capsys)[0] == 0
    path = _native(tmp_path, LL + "target_delimiter: ' '\n", rows, "bad")
    rc, err = _check(path, capsys)
    assert rc == 2
    assert f"{path}:{_line_of(path.read_text(), 'target_delimiter')}: target_delimiter goes between" in err


def test_a_multiple_choice_suite_with_scorers_is_refused(tmp_path, capsys):
    path = _native(tmp_path, MC + "scorers: [exact_match]\n", GOOD)
    rc, err = _check(path, capsys)
    assert rc == 2
    assert f"{path}:{_line_of(path.read_text(), 'scorers')}: a multiple_choice suite scores log-likelihoods" in err
    assert "drop scorers:" in err


def test_eval_of_a_native_suite_puts_the_target_delimiter_before_each_choice(tiny_model_dir, tmp_path, reference_model):
    path = _native(tmp_path, MC + "target_delimiter: ' => '\n", GOOD)
    db = tmp_path / "h.duckdb"
    assert main(["eval", "--suite", str(path), "--base", str(tiny_model_dir), "--db", str(db), "--no-gates"]) == 0
    stored = _stored(db)
    assert set(stored) == {"r1", "r2"}
    for row in GOOD:
        got = stored[row["id"]]
        assert got["prompt"] == f"Q: {row['q']}\nA:"
        assert got["settings"]["target_delimiter"] == " => "
        want = [_logprob(reference_model, got["prompt"], " => " + c)[0] for c in row["opts"]]
        assert got["settings"]["logprobs"] == pytest.approx(want, abs=1e-4)
        gold = row["opts"].index(row["a"]) if isinstance(row["a"], str) else row["a"]
        assert got["scores"]["acc"] == (1.0 if _first_argmax(want) == gold else 0.0)


# --- harness bugs -------------------------------------------------------------------------------------------------

_MC_TASK = """task: t
dataset_path: json
dataset_kwargs:
  data_files:
    test: d.jsonl
test_split: test
output_type: multiple_choice
doc_to_text: "Q: {{q}}\\nA:"
doc_to_target: "{{a}}"
doc_to_choice: "{{c}}"
"""


@pytest.mark.parametrize("choices", [["four"], ["four", ""]], ids=["one-choice", "empty-choice"])
def test_an_lm_eval_document_with_unusable_choices_is_refused_or_scored_not_a_crash(tiny_model_dir, tmp_path, capsys,
                                                                                  monkeypatch, choices):
    monkeypatch.setenv("HARNESS_HOME", str(tmp_path / "home"))  # the crash report lands here, not in the shared home
    d = tmp_path / "t"
    d.mkdir()
    (d / "task.yaml").write_text(_MC_TASK)
    rows = [{"q": "capital of France?", "c": ["Paris", "Lyon"], "a": 0}, {"q": "two plus two?", "c": choices, "a": 0}]
    (d / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    capsys.readouterr()
    rc = main(["eval", "--suite", str(d / "task.yaml"), "--base", str(tiny_model_dir), "--db", str(tmp_path / "h.duckdb"),
               "--no-gates"])
    err = capsys.readouterr().err
    assert "internal error" not in err
    assert rc == 0 or (rc == 2 and re.search(r"document 1\b", err)), err
