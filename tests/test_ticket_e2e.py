"""A new user's own task, end to end on the real base model (issues 16 and 12, first acceptance points).

A support desk turns tickets into ``{"category", "priority"}`` JSON. Starting from the raw
``{id, ticket, answer}`` rows as they are (nothing rewritten by hand), a training spec and a task
suite written the way the README and ``suites/FORMAT.md`` describe them, the real command line goes
``suites check`` -> ``train`` -> ``eval --suite their-suite --suite general-knowledge --suite
format-leakage`` -> ``report``. The summary must show the user's headline, the retention of general
knowledge and the leakage of *the ticket format* (keys category and priority, not the demo's order
keys), and every figure is checked against an independent computation from the raw DuckDB rows.
Input mistakes (a template typo, a column mapping naming a missing column) must be exit 2 naming the
culprit within seconds, before any model loads.

Marked slow (real SmolLM2-135M, CPU): a few minutes on an idle 2-core machine.
"""

from __future__ import annotations

import html
import json
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow

TICKET_KEYS = ("category", "priority")
ORDER_KEYS = ("item", "quantity", "size", "colour", "shipping")  # the demo task's keys: must not be used here
EVAL_LIMIT = 8  # --limit: a stratified sample of this many examples per suite
FAST_S = 8.0  # an input mistake is reported within this many seconds (Python start-up included), no model loaded

_TEMPLATES = {
    "billing": ["I was charged twice for my {thing} subscription", "My invoice for {thing} shows the wrong amount",
                "Please refund the {thing} payment from last week", "Why did my card get billed for {thing} again"],
    "shipping": ["My {thing} order has not arrived yet", "The parcel with my {thing} went to the wrong address",
                 "Tracking for my {thing} has not moved in days", "The {thing} I ordered arrived damaged in the box"],
    "account": ["I cannot log in to my account since the {thing} update", "Please change the email on my {thing} account",
                "My password reset link for {thing} never comes", "Someone else may be using my account on {thing}"],
    "technical": ["The {thing} app crashes when I open settings", "Error 500 every time I upload a file to {thing}",
                  "The {thing} sync stopped working on my laptop", "Pages in {thing} load very slowly since yesterday"],
}
_THINGS = ["Pro plan", "photo", "music", "storage", "team", "family", "premium", "backup"]
_TONE = {"low": ["No rush.", "Whenever you can.", "Just letting you know."],
         "normal": ["Thanks.", "Please help.", "Can you look into it?"],
         "high": ["This is urgent!", "I need this fixed today!", "Please help ASAP, it is blocking my work!"]}


def ticket_rows(n: int, seed: int, prefix: str) -> list[dict[str, str]]:
    """``n`` raw rows ``{id, ticket, answer}``; every 12 consecutive rows cover each category x priority."""
    rng = random.Random(seed)
    cats, pris = sorted(_TEMPLATES), sorted(_TONE)
    rows = []
    for i in range(n):
        cat, pri = cats[i % len(cats)], pris[(i // len(cats)) % len(pris)]
        text = rng.choice(_TEMPLATES[cat]).format(thing=rng.choice(_THINGS)) + ". " + rng.choice(_TONE[pri])
        rows.append({"id": f"{prefix}-{i:03d}", "ticket": text,
                     "answer": json.dumps({"category": cat, "priority": pri})})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


# The training spec as the README's Training section writes one, with the data as it is: a field mapping
# instead of a rewritten file. Kept short for a CPU test: 6 steps of 8, a high learning rate (as the quick
# demo), prompts cut to 128 tokens (the tickets are far shorter).
SPEC = """\
data:
  path: tickets_raw.jsonl
  fields: {prompt: ticket, completion: answer}
r: 16
lora_alpha: 32
learning_rate: 2e-3
max_steps: 6
per_device_train_batch_size: 8
max_seq_length: 128
"""

# The user's own task suite, from suites/FORMAT.md: role task, a headline, the README's json_field scorer.
SUITE = """\
name: ticket-triage
version: 1
role: task
headline: json_exact
description: Support tickets in, {"category", "priority"} JSON out.
data:
  path: tickets_heldout.jsonl
  fields: {id: id, input: ticket, target: answer}
prompt:
  template: "{{ input }}"
generation:
  max_new_tokens: 20
  stop: ["\\n\\n"]
scorers:
  - name: json_field
    args: {fields: [category, priority]}
"""


def harness(cwd: Path, *args: str, timeout: float = 1200) -> tuple[subprocess.CompletedProcess, float]:
    """Run the real command line as a user would (``python -m harness`` is ``.venv/bin/harness``)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "harness", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)
    return proc, time.monotonic() - t0


def n_runs(db: Path) -> int:
    if not db.exists():
        return 0
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute("SELECT count(*) FROM runs").fetchone()[0]
    finally:
        con.close()


@pytest.fixture(scope="module")
def ticket(tmp_path_factory):
    """The whole journey, once; each test below reads what it left."""
    work = tmp_path_factory.mktemp("tickets")
    write_jsonl(work / "tickets_raw.jsonl", ticket_rows(120, seed=1, prefix="t"))
    (work / "suite").mkdir()
    write_jsonl(work / "suite" / "tickets_heldout.jsonl", ticket_rows(24, seed=2, prefix="h"))
    (work / "suite" / "suite.yaml").write_text(SUITE, encoding="utf-8")
    (work / "tickets.yaml").write_text(SPEC, encoding="utf-8")
    # the same suite with a typo in its template, and the spec with a typo in its column mapping
    (work / "typo").mkdir()
    write_jsonl(work / "typo" / "tickets_heldout.jsonl", ticket_rows(24, seed=2, prefix="h"))
    (work / "typo" / "suite.yaml").write_text(SUITE.replace('"{{ input }}"', '"Ticket: {{ tikcet }}"'), encoding="utf-8")
    (work / "typo.yaml").write_text(SPEC.replace("prompt: ticket", "prompt: tikcet"), encoding="utf-8")
    # and the spec a user writes before learning about the mapping: the raw file as the data
    (work / "plain.yaml").write_text("data: tickets_raw.jsonl\nmax_steps: 6\n", encoding="utf-8")

    out: dict = {"work": work, "db": work / "harness.duckdb"}
    out["check"] = harness(work, "suites", "check", "suite/suite.yaml")
    out["train_plain"] = harness(work, "train", "plain.yaml")
    out["train_typo"] = harness(work, "train", "typo.yaml")
    out["runs_after_train_typo"] = n_runs(out["db"])
    out["train"] = harness(work, "train", "tickets.yaml")
    suites = ["--suite", "general-knowledge", "--suite", "format-leakage", "--limit", str(EVAL_LIMIT)]
    runs_before = n_runs(out["db"])
    out["eval_typo"] = harness(work, "eval", "--adapter", "adapters/tickets", "--suite", "typo/suite.yaml", *suites)
    out["runs_added_by_eval_typo"] = n_runs(out["db"]) - runs_before
    out["eval"] = harness(work, "eval", "--adapter", "adapters/tickets", "--suite", "suite/suite.yaml", *suites)
    out["report"] = harness(work, "report", "--out", "r.html")
    steps = ("check", "train_plain", "train_typo", "train", "eval_typo", "eval", "report")
    print("\nseconds per command: " + ", ".join(f"{k} {out[k][1]:.1f}" for k in steps))  # shown with -s
    return out


def ok(step: tuple[subprocess.CompletedProcess, float], *codes: int) -> subprocess.CompletedProcess:
    proc, _ = step
    assert proc.returncode in (codes or (0,)), f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


# ---------------------------------------------------------------------------------------------- the raw rows


def stored(db: Path) -> dict:
    """The eval run's rows straight from the tables (not the views the summary is built from)."""
    con = duckdb.connect(str(db), read_only=True)
    try:
        (run_id, config), = con.execute("SELECT run_id, config FROM runs WHERE kind = 'eval'").fetchall()
        gens = con.execute(
            """
            SELECT s.name, s.role, g.example_id, g.adapter_id IS NULL AND g.scale = 0 AS is_base, g.output, e.target,
                   g.cache_key
            FROM run_results rr JOIN generations g USING (cache_key) JOIN suites s USING (suite_id)
            JOIN examples e ON e.suite_id = g.suite_id AND e.example_id = g.example_id
            WHERE rr.run_id = ? AND g.error IS NULL
            """, [run_id]).fetchall()
        scores = con.execute(
            "SELECT sc.cache_key, sc.metric, sc.value FROM run_results rr JOIN scores sc USING (cache_key) WHERE rr.run_id = ?",
            [run_id]).fetchall()
        n_errors = con.execute("SELECT count(*) FROM run_results rr JOIN generations g USING (cache_key) "
                               "WHERE rr.run_id = ? AND g.error IS NOT NULL", [run_id]).fetchone()[0]
    finally:
        con.close()
    by_key: dict[str, dict[str, float | None]] = {}
    for key, metric, value in scores:
        by_key.setdefault(key, {})[metric] = value
    rows = [dict(suite=s, role=role, example_id=ex, is_base=bool(b), output=o or "", target=t, scores=by_key.get(k, {}))
            for s, role, ex, b, o, t, k in gens]
    return {"run_id": run_id, "config": json.loads(config), "rows": rows, "n_errors": n_errors}


def first_json_object(text: str):
    """The first JSON object in ``text`` (prose or a code fence around it allowed), or None."""
    start = text.find("{")
    if start < 0:
        return None
    try:
        obj, _ = json.JSONDecoder().raw_decode(text[start:])
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


def leaks_ticket_format(output: str) -> bool:
    """A general answer in the ticket format: a JSON object with a ticket key, or one cut off mid-object."""
    obj = first_json_object(output)
    if obj is not None:
        return bool(set(obj) & set(TICKET_KEYS))
    head = output.lstrip().removeprefix("```json").removeprefix("```").lstrip()
    return head.startswith("{") and re.search(r'"(category|priority)"\s*:', head) is not None


def ticket_right(output: str, target: str) -> bool:
    obj, want = first_json_object(output), json.loads(target)
    norm = lambda v: " ".join(str(v).lower().split())  # noqa: E731
    return obj is not None and set(obj) == set(want) and all(norm(obj[k]) == norm(want[k]) for k in want)


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def summary_rows(stdout: str) -> dict[tuple[str, str], list[str]]:
    """The eval summary table: (suite, metric without its arrow) -> cells (base, adapter)."""
    out = {}
    for line in stdout.splitlines():
        cells = re.split(r"\s{2,}", line.strip())
        if len(cells) >= 4 and cells[0] in ("ticket-triage", "general-knowledge", "format-leakage"):
            out[(cells[0], cells[1].rstrip(" ↑↓"))] = cells[2:]
    return out


# ---------------------------------------------------------------------------------------------- the tests


def test_suite_check_passes_without_a_model(ticket):
    proc = ok(ticket["check"])
    assert "ticket-triage" in proc.stdout and "role task" in proc.stdout and "headline json_exact" in proc.stdout
    assert "24 examples" in proc.stdout, proc.stdout
    assert ticket["check"][1] < FAST_S, f"suites check took {ticket['check'][1]:.1f}s"


def test_input_mistakes_are_exit_2_at_once_naming_the_culprit(ticket):
    proc, seconds = ticket["train_plain"]  # raw columns without a mapping: the error says how to map them
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "columns: answer, id, ticket" in proc.stderr and "fields: {prompt: COLUMN, completion: COLUMN}" in proc.stderr, proc.stderr
    assert "Loading weights" not in proc.stderr and seconds < FAST_S, (seconds, proc.stderr[-2000:])

    proc, seconds = ticket["train_typo"]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "tikcet" in proc.stderr and "ticket" in proc.stderr, proc.stderr  # the wrong name and the columns there are
    assert "Loading weights" not in proc.stderr and seconds < FAST_S, (seconds, proc.stderr[-2000:])
    assert ticket["runs_after_train_typo"] == 0  # both refused before a training run was even recorded

    proc, seconds = ticket["eval_typo"]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "{{ tikcet }}" in proc.stderr and "typo/suite.yaml" in proc.stderr, proc.stderr
    assert "Loading weights" not in proc.stderr and seconds < FAST_S, (seconds, proc.stderr[-2000:])
    assert ticket["runs_added_by_eval_typo"] == 0  # no run started: nothing was loaded or generated


def test_train_writes_an_adapter_from_the_raw_rows(ticket):
    proc = ok(ticket["train"])
    adapter = ticket["work"] / "adapters" / "tickets"  # the README's default: adapters/<spec stem>
    assert (adapter / "adapter_model.safetensors").is_file(), proc.stderr[-2000:]
    record = json.loads((adapter / "harness.json").read_text())
    assert record["spec"]["data_fields"] == {"prompt": "ticket", "completion": "answer"}
    assert record["data"]["n_examples"] == 120
    steps = [json.loads(line) for line in (adapter / "step_logs.jsonl").read_text().splitlines() if line.strip()]
    assert [s["step"] for s in steps] == list(range(1, 7))
    assert steps[-1]["loss"] < steps[0]["loss"], steps  # it learned something
    # the task format, recorded from the training answers: the ticket keys
    assert record["task_format"] == {"kind": "json_keys", "keys": list(TICKET_KEYS)}, record.get("task_format")


def test_eval_measures_the_ticket_format_not_the_order_format(ticket):
    proc = ok(ticket["eval"], 0, 1)  # 1: a gate of a built-in suite failed; never an errored result
    assert "0 errors" in proc.stderr, proc.stderr[-3000:]
    if proc.returncode == 1:
        assert "gate failed" in proc.stderr, proc.stderr[-3000:]
    s = stored(ticket["db"])
    assert s["n_errors"] == 0
    fmt = s["config"]["task_format"]
    assert tuple(fmt["keys"]) == TICKET_KEYS and "ticket-triage" in fmt["source"], fmt
    for suite in ("general-knowledge", "format-leakage"):
        args = [sc["args"] for sc in s["config"]["scorers"][suite] if sc["name"] == "format_leakage"]
        assert args == [{"keys": list(TICKET_KEYS)}], (suite, s["config"]["scorers"][suite])
    assert not any(k in json.dumps(s["config"]["scorers"]) for k in ORDER_KEYS)


def test_summary_figures_equal_an_independent_computation_from_the_stored_rows(ticket):
    proc = ok(ticket["eval"], 0, 1)
    rows = stored(ticket["db"])["rows"]
    table = summary_rows(proc.stdout)
    col = {True: 0, False: 1}  # base, then the adapter

    def of(suite: str, base: bool) -> list[dict]:
        return [r for r in rows if r["suite"] == suite and r["is_base"] == base]

    for base in (True, False):
        # the user's headline, recomputed from the outputs and the targets
        task = of("ticket-triage", base)
        assert len(task) == EVAL_LIMIT
        right = [ticket_right(r["output"], r["target"]) for r in task]
        assert right == [r["scores"]["json_exact"] == 1.0 for r in task], [(r["output"], r["target"]) for r in task]
        cell = table[("ticket-triage", "json_exact")][col[base]]
        assert cell.startswith(pct(sum(right) / len(task))) and f"n={len(task)}/{len(task)}" in cell, cell

        # leakage of the ticket format on the general and leakage suites, recomputed from the outputs
        for suite in ("general-knowledge", "format-leakage"):
            got = of(suite, base)
            assert len(got) == EVAL_LIMIT
            leaked = [leaks_ticket_format(r["output"]) for r in got]
            assert leaked == [r["scores"]["format_leakage"] == 1.0 for r in got], [r["output"] for r in got]
            cell = table[(suite, "format_leakage")][col[base]]
            assert cell.startswith(pct(sum(leaked) / len(got))), (suite, cell)

    # retention: of the questions the base answers right, the share the adapter still answers right
    base_right = {r["example_id"] for r in of("general-knowledge", True) if r["scores"]["alias_match"] == 1.0}
    kept = {r["example_id"] for r in of("general-knowledge", False) if r["scores"]["alias_match"] == 1.0} & base_right
    assert base_right, "the base model answers none of the sampled general questions: retention is undefined"
    retention = table[("general-knowledge", "retention")][col[False]]
    assert retention == f"{pct(len(kept) / len(base_right))} ({len(kept)}/{len(base_right)})", retention

    # the adapter learned the ticket format, and it shows where it must not
    adapter_task = of("ticket-triage", False)
    assert sum(r["scores"]["json_valid"] for r in adapter_task) >= EVAL_LIMIT / 2, [r["output"] for r in adapter_task]
    general = of("general-knowledge", False) + of("format-leakage", False)
    assert any(leaks_ticket_format(r["output"]) for r in general), [r["output"] for r in general]
    assert not any(leaks_ticket_format(r["output"]) for r in of("general-knowledge", True) + of("format-leakage", True))


def test_report_shows_the_headline_retention_and_leakage(ticket):
    ok(ticket["report"])
    page = (ticket["work"] / "r.html").read_text(encoding="utf-8")
    text = re.sub(r"<(style|script|svg)\b.*?</\1>", " ", page, flags=re.S)
    text = " ".join(html.unescape(re.sub(r"<[^>]+>", " ", text)).split())
    assert "ticket-triage json_exact" in text, text[:2000]
    rows = stored(ticket["db"])["rows"]
    gk = [r for r in rows if r["suite"] == "general-knowledge"]
    base_right = {r["example_id"] for r in gk if r["is_base"] and r["scores"]["alias_match"] == 1.0}
    kept = {r["example_id"] for r in gk if not r["is_base"] and r["scores"]["alias_match"] == 1.0} & base_right
    assert f"{pct(len(kept) / len(base_right))} ({len(kept)}/{len(base_right)})" in text, text[:3000]
    assert "general-knowledge retention" in text and "general-knowledge leakage" in text, text[:2000]
    # leakage pooled over the general and leakage suites, as the sweep and the gates count it
    general = [r for r in rows if r["role"] in ("general", "leakage") and not r["is_base"]]
    n_leaked = sum(leaks_ticket_format(r["output"]) for r in general)
    assert f"{pct(n_leaked / len(general))} ({n_leaked}/{len(general)})" in text, text[:3000]
