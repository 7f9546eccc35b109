"""Helpers for the gate tests (no tests here): suites on disk and runs written straight into a store, no model."""

from __future__ import annotations

import json
from pathlib import Path

from harness.store import (
    AdapterRow,
    BaseModelRow,
    ExampleRow,
    GenerationRow,
    RunInfo,
    ScoreRow,
    Store,
    SuiteRow,
)
from harness.suites.spec import Suite, load_suite, suite_directions

A = "a" * 64  # the candidate adapter's id
B = "b" * 64  # the baseline adapter's id


def write_suite(root: Path, name: str, role: str, scorer: str, headline: str, n: int, gates: str = "") -> Suite:
    d = root / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "data.jsonl").write_text("".join(json.dumps({"id": f"e{i}", "input": f"q{i}", "target": "t"}) + "\n" for i in range(n)))
    scorers = "scorers: []\n" if scorer == "" else f"scorers: [{{name: {scorer}}}]\n"
    (d / "suite.yaml").write_text(f"name: {name}\nversion: 1\nrole: {role}\nheadline: {headline}\n"
                                  f"data: {{path: data.jsonl}}\n{scorers}{gates}")
    return load_suite(d / "suite.yaml")


def fake_run(store: Store, suites: list[Suite], scores: dict, errors: dict | None = None, harness: dict | None = None,
             n_expected: int | None = None) -> str:
    """scores: {(adapter_id or None, scale, suite name): {metric: [value per example]}}; errors:
    {(adapter_id, scale, suite): [example index]} (error rows instead of outputs)."""
    errors = errors or {}
    by_name = {s.name: s for s in suites}
    with store.run(RunInfo(kind="eval", command="test")) as run:
        run.add_base_model(BaseModelRow("base", "tiny", "/base"))
        for aid in {k[0] for k in scores} - {None}:
            run.add_adapter(AdapterRow(aid, "base", f"/adapters/{aid[:4]}", "{}", None,
                                       json.dumps(harness) if harness and aid == A else None, f"ad-{aid[:1]}"))
        for s in suites:
            n = max(len(v) for k, m in scores.items() if k[2] == s.name for v in m.values())
            run.add_suite(SuiteRow(s.suite_id, s.name, s.version, str(s.path), n, s.role, s.headline,
                                   json.dumps(suite_directions(s))))
            run.add_examples(ExampleRow(s.suite_id, f"e{i}", f"q{i}", "t", None) for i in range(n))
        total = 0
        for (aid, scale, suite), metrics in scores.items():
            s = by_name[suite]
            n = max(len(v) for v in metrics.values())
            for i in range(n):
                key = f"{aid}-{scale}-{suite}-{i}"
                err = "boom" if i in errors.get((aid, scale, suite), ()) else None
                run.add_generations([GenerationRow(key, "base", aid, scale, s.suite_id, f"e{i}", f"q{i}",
                                                   None if err else f"out{i}", "{}", 1, 1, err, 0.0)])
                if not err:
                    run.add_scores(ScoreRow(key, m, v[i], None if v[i] is not None else "no score", "x", "1")
                                   for m, v in metrics.items() if i < len(v))
                total += 1
        run.expect(n_expected if n_expected is not None else total)
        return run.run_id


# -- tiny models: a general suite the base model passes, adapters that keep it or forget it ----------

def make_lora(base_dir: Path, out: Path, seed: int, std: float) -> Path:
    """A LoRA adapter of the tiny base: std 0 leaves the base's outputs as they are (lora_B = 0, and
    lora_A seeded, so each seed is another adapter); std 1 changes them."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    pm = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.normal_(0, std) if std else p.zero_()
    pm.save_pretrained(out)
    return out


def base_answer_suite(base_dir: Path, root: Path, n: int = 8, gates: str = "") -> Path:
    """A general suite whose targets are the tiny base model's own greedy answers, so the base scores
    1.0 on every item and retention means something: the share of those answers an adapter keeps."""
    from harness.evaluation.runner import run_eval
    from harness.evaluation.targets import expand_targets
    from harness.models.base import load_base, resolve_base

    d = root / "gk"
    d.mkdir(parents=True, exist_ok=True)
    questions = [f"Question {i}: what is {i} plus {i}?" for i in range(n)]

    def write(targets: list[str], extra: str) -> None:
        (d / "data.jsonl").write_text("".join(json.dumps({"id": f"q{i}", "input": q, "target": t}) + "\n"
                                              for i, (q, t) in enumerate(zip(questions, targets))))
        (d / "suite.yaml").write_text("name: gk\nversion: 1\nrole: general\nheadline: exact_match\n"
                                      "data: {path: data.jsonl}\ngeneration: {max_new_tokens: 4}\n"
                                      "scorers: [{name: exact_match, args: {normalize: false}}]\n" + extra)

    write(["x"] * n, "")
    store = Store(root / "probe.duckdb")
    with store.run(RunInfo(kind="eval", command="probe")) as run:
        run_eval(load_base(resolve_base(str(base_dir))), expand_targets([], [1.0]), [load_suite(d / "suite.yaml")], run, store,
                 log=lambda m: None)
    outs = {r["example_id"]: r["output"] for r in store.query("SELECT example_id, output FROM generations")}
    write([outs[f"q{i}"] for i in range(n)], gates)
    return d / "suite.yaml"


_SHARED: dict = {}


def shared_gate_setup(tiny_model_dir: Path, tmp_path_factory) -> dict:
    """Built once per test process for test_check and test_pytest_plugin: the base-answer suite (its
    own gate: exact_match >= 0.9), two adapters that keep the base's answers, one that changes them,
    and a results database that caches their results."""
    if not _SHARED:
        root = tmp_path_factory.mktemp("gates-shared")
        # 64 items: enough for an adapter that keeps every answer to show retention >= 0.95 on the one-sided
        # 95% bound (59 would do; 8 never could)
        suite = base_answer_suite(tiny_model_dir, root, n=64, gates="gates:\n  - {metric: exact_match, min: 0.9}\n")
        _SHARED.update(
            root=root, suite=suite, suite_dir=suite.parent, db=root / "h.duckdb", tiny=tiny_model_dir,
            good=make_lora(tiny_model_dir, root / "good", seed=1, std=0.0),
            good2=make_lora(tiny_model_dir, root / "good2", seed=2, std=0.0),
            bad=make_lora(tiny_model_dir, root / "bad", seed=3, std=1.0))
    return dict(_SHARED)
