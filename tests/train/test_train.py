"""The training recipe on a tiny model: deterministic, answers-only loss, refuses unsupervised data,
leaves the base model as it was, writes a loadable adapter with its record."""

import json
import re

import pytest
import torch

from harness.errors import DatasetError, UsageError
from harness.models.adapters import inspect_adapter
from harness.models.base import load_base, resolve_base
from harness.train.data import normalize_row
from harness.train.recipe import train_adapter
from harness.train.spec import TrainSpec

ROWS = [{"prompt": f"Order {i} red hoodies, size M.", "completion": f'{{"item": "hoodie", "quantity": {i}}}'} for i in range(1, 9)]


@pytest.fixture(scope="module")
def base(tiny_model_dir):
    return load_base(resolve_base(str(tiny_model_dir)))


def _spec(tiny_model_dir, **kw):
    fields = dict(base=str(tiny_model_dir), learning_rate=1e-2, max_steps=3, per_device_train_batch_size=4, r=4, lora_alpha=8)
    return TrainSpec(**{**fields, **kw})


def test_same_spec_and_seed_give_identical_losses_and_weights(base, tiny_model_dir, tmp_path):
    before = {k: v.clone() for k, v in base.model.state_dict().items()}
    a = train_adapter(_spec(tiny_model_dir), tmp_path / "a", examples=ROWS, base=base, log=lambda s: None)
    b = train_adapter(_spec(tiny_model_dir), tmp_path / "b", examples=ROWS, base=base, log=lambda s: None)
    assert a.n_steps == 3 and len([s for s in a.step_logs if s.loss is not None]) == 3
    assert [s.loss for s in a.step_logs] == [s.loss for s in b.step_logs]
    assert a.adapter_id == b.adapter_id  # byte-identical weights
    # the shared base model is handed back untouched, without LoRA layers
    assert not any("lora" in n for n, _ in base.model.named_modules())
    after = base.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_adapter_directory_holds_safetensors_and_its_record(base, tiny_model_dir, tmp_path):
    r = train_adapter(_spec(tiny_model_dir), tmp_path / "ad", examples=ROWS, base=base, log=lambda s: None)
    files = {p.name for p in r.adapter_dir.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "harness.json", "step_logs.jsonl"} <= files
    assert not any(f.endswith(".bin") for f in files)
    record = json.loads((r.adapter_dir / "harness.json").read_text())
    assert record["spec"]["r"] == 4 and record["data"]["n_examples"] == len(ROWS)
    assert record["base_model"]["model_id"] == base.ref.model_id and record["precision"] == "fp32"
    assert inspect_adapter(r.adapter_dir).adapter_id == r.adapter_id
    # LoRA B starts at zero; after training with lr 1e-2 it must not be
    from safetensors.torch import load_file

    weights = load_file(str(r.adapter_dir / "adapter_model.safetensors"))
    assert any(k.endswith("lora_B.weight") and v.abs().sum() > 0 for k, v in weights.items())


def test_refuses_examples_with_no_answer_token_after_truncation(base, tiny_model_dir, tmp_path):
    rows = ROWS[:3] + [{"prompt": "word " * 400, "completion": "x"}]
    with pytest.raises(DatasetError, match=r"1 of 4 examples keep no answer token.*max_seq_length=64 \(examples row 4\)"):
        train_adapter(_spec(tiny_model_dir, max_seq_length=64), tmp_path / "x", examples=rows, base=base, log=lambda s: None)
    assert not (tmp_path / "x" / "adapter_model.safetensors").exists()


@pytest.mark.parametrize(
    "row, user, answer",
    [
        ({"prompt": "p", "completion": "c"}, "p", "c"),
        ({"instruction": "Translate", "input": "chat", "output": "cat"}, "Translate\n\nchat", "cat"),
        ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}, "hi", "hello"),
    ],
)
def test_common_dataset_shapes_normalise_to_prompt_completion(row, user, answer):
    conv = normalize_row(row, "data row 1")
    assert conv["prompt"][-1] == {"role": "user", "content": user}
    assert conv["completion"] == [{"role": "assistant", "content": answer}]


@pytest.mark.parametrize(
    "row, match",
    [
        ({"text": "x"}, "unknown shape.*columns: text"),
        ({"prompt": "p", "completion": "  "}, "empty answer"),
        ({"messages": [{"role": "user", "content": "hi"}]}, "must end with the assistant"),
    ],
)
def test_bad_rows_name_the_row_and_fix(row, match):
    with pytest.raises(DatasetError, match=match):
        normalize_row(row, "data.jsonl row 7")


# --- checkpoints, resume, SIGTERM-style stop -------------------------------------------------------

def _stop_at(stopper, step):
    """A callback that asks for a clean stop during ``step`` (as the SIGTERM handler would)."""
    from transformers import TrainerCallback

    class StopAt(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step + 1 == step:
                stopper.request()

    return StopAt()


def _losses(result):
    return [(s.step, s.loss) for s in result.step_logs if s.loss is not None]


def test_stopped_then_resumed_run_matches_an_uninterrupted_one(base, tiny_model_dir, tmp_path):
    from harness.train.checkpoints import MARKER, SaveAndStop

    spec = _spec(tiny_model_dir, max_steps=4)
    whole = train_adapter(spec, tmp_path / "whole", examples=ROWS * 2, base=base, log=lambda s: None)

    stopper = SaveAndStop()
    part = train_adapter(spec, tmp_path / "run", examples=ROWS * 2, base=base, log=lambda s: None,
                         stopper=stopper, callbacks=[_stop_at(stopper, 2)])
    assert part.interrupted and part.n_steps == 2 and part.adapter_id is None
    assert (part.checkpoint / MARKER).is_file() and part.checkpoint.name == "checkpoint-2"
    assert not (tmp_path / "run" / "adapter_model.safetensors").exists()
    # a save that a kill cut short: newer, but without the marker
    partial = tmp_path / "run" / "checkpoints" / "checkpoint-3"
    partial.mkdir()
    (partial / "adapter_model.safetensors").write_bytes(b"truncated")

    resumed = train_adapter(spec, tmp_path / "run", examples=ROWS * 2, base=base, log=lambda s: None, resume=True)
    assert not partial.exists()
    assert [p.name.startswith("checkpoint-3-") for p in (tmp_path / "run" / "checkpoints" / "quarantine").iterdir()] == [True]
    assert resumed.n_steps == 4
    assert _losses(resumed) == _losses(whole)  # CPU, fixed seed: exactly equal, steps 1-4
    assert resumed.adapter_id == whole.adapter_id
    record = json.loads((tmp_path / "run" / "harness.json").read_text())
    assert record["resumed_from"].endswith("checkpoint-2")


def test_resume_refuses_a_changed_spec_or_data_and_needs_a_marked_checkpoint(base, tiny_model_dir, tmp_path):
    from harness.errors import InputError
    from harness.train.checkpoints import SaveAndStop

    spec = _spec(tiny_model_dir, max_steps=4)
    with pytest.raises(InputError, match="no complete checkpoint"):
        train_adapter(spec, tmp_path / "run", examples=ROWS, base=base, log=lambda s: None, resume=True)
    stopper = SaveAndStop()
    train_adapter(spec, tmp_path / "run", examples=ROWS, base=base, log=lambda s: None,
                  stopper=stopper, callbacks=[_stop_at(stopper, 1)])
    with pytest.raises(InputError, match=r"spec changed \(learning_rate: 0.01 -> 0.001\)"):
        train_adapter(_spec(tiny_model_dir, max_steps=4, learning_rate=1e-3), tmp_path / "run", examples=ROWS, base=base, log=lambda s: None, resume=True)
    with pytest.raises(InputError, match="training data changed"):
        train_adapter(spec, tmp_path / "run", examples=ROWS[:6], base=base, log=lambda s: None, resume=True)


def test_sigterm_handler_only_sets_a_flag_and_a_second_signal_is_not_caught():
    import signal

    from harness.train.checkpoints import SaveAndStop

    stopper = SaveAndStop()
    before = signal.getsignal(signal.SIGTERM)
    stopper.install()
    try:
        assert signal.getsignal(signal.SIGTERM) == stopper.request
        stopper.request(signal.SIGTERM, None)
        assert stopper.requested and stopper.signal_name == "SIGTERM"
        assert signal.getsignal(signal.SIGTERM) == before  # the next SIGTERM acts as usual
    finally:
        signal.signal(signal.SIGTERM, before)


# --- continued fine-tuning ---------------------------------------------------------------------------

def test_continued_fine_tuning_changes_the_weights_and_stores_lineage(base, tiny_model_dir, tmp_path):
    from safetensors.torch import load_file

    from harness.store import Store
    from harness.train.record import store_training

    parent = train_adapter(_spec(tiny_model_dir), tmp_path / "parent", examples=ROWS, base=base, log=lambda s: None)
    more = [{"prompt": f"Cancel order {i}.", "completion": f'{{"cancel": {i}}}'} for i in range(1, 9)]
    child = train_adapter(_spec(tiny_model_dir, learning_rate=5e-3), tmp_path / "child", examples=more, base=base,
                          log=lambda s: None, from_adapter=tmp_path / "parent")
    assert child.parent_adapter_id == parent.adapter_id != child.adapter_id
    w_parent = load_file(str(tmp_path / "parent" / "adapter_model.safetensors"))
    w_child = load_file(str(tmp_path / "child" / "adapter_model.safetensors"))
    assert w_parent.keys() == w_child.keys()
    changed = [k for k in w_parent if not torch.equal(w_parent[k], w_child[k])]
    assert any("lora_A" in k for k in changed) and any("lora_B" in k for k in changed)
    record = json.loads((tmp_path / "child" / "harness.json").read_text())
    assert record["parent_adapter"]["adapter_id"] == parent.adapter_id and record["init_lora_weights"] == "parent"
    assert not any("lora" in n for n, _ in base.model.named_modules())

    store = Store(tmp_path / "h.duckdb")
    store_training(store, parent, "parent", "test", {})
    store_training(store, child, "child", "test", {})
    rows = store.query("SELECT name, parent_adapter_id FROM adapters WHERE adapter_id = ?", [child.adapter_id])
    assert rows == [{"name": "child", "parent_adapter_id": parent.adapter_id}]
    logs = store.query("SELECT step, loss FROM step_logs WHERE adapter_id = ? ORDER BY step", [child.adapter_id])
    assert [(r["step"], r["loss"]) for r in logs] == _losses(child)


# --- spec options --------------------------------------------------------------------------------------

def test_pissa_and_gaussian_init_give_adapters_for_the_untouched_base(base, tiny_model_dir, tmp_path):
    from harness.models.adapters import load_adapter

    before = {k: v.clone() for k, v in base.model.state_dict().items()}
    for init in ("gaussian", "pissa"):
        r = train_adapter(_spec(tiny_model_dir, init_lora_weights=init, max_steps=1), tmp_path / init, examples=ROWS,
                          base=base, log=lambda s: None)
        info = inspect_adapter(r.adapter_dir)
        assert all(torch.equal(before[k], v) for k, v in base.model.state_dict().items())
        # PiSSA is saved converted to plain LoRA (rank 2r) against the original base weights
        assert info.config["r"] == (8 if init == "pissa" else 4)
        load_adapter(base.model, info).unload()


def test_loftq_without_bitsandbytes_or_gpu_is_refused_clearly(base, tiny_model_dir, tmp_path):
    import importlib.util

    from harness.errors import UsageError

    if importlib.util.find_spec("bitsandbytes") and torch.cuda.is_available():
        pytest.skip("LoftQ can run here")
    with pytest.raises(UsageError, match="loftq needs .*use pissa"):
        train_adapter(_spec(tiny_model_dir, init_lora_weights="loftq"), tmp_path / "q", examples=ROWS, base=base,
                      log=lambda s: None)


def test_warmup_steps_eval_split_and_fp16_warning_on_cpu(base, tiny_model_dir, tmp_path):
    r = train_adapter(_spec(tiny_model_dir, max_steps=4, warmup_steps=2, eval_split=0.25, eval_steps=2,
                            precision="fp16"), tmp_path / "w", examples=ROWS * 2, base=base, log=lambda s: None)
    lrs = [s.learning_rate for s in r.step_logs if s.loss is not None]
    assert lrs[0] == 0 and lrs[1] == pytest.approx(5e-3) and lrs[2] == pytest.approx(1e-2)
    assert [s.step for s in r.step_logs if s.eval_loss is not None] == [2, 4]
    assert any("fp16" in w and "cpu" in w for w in r.warnings)
    record = json.loads((tmp_path / "w" / "harness.json").read_text())
    assert record["precision"] == "fp32" and record["data"]["n_eval"] == 4


def test_early_stopping_ends_a_diverging_run(base, tiny_model_dir, tmp_path):
    r = train_adapter(_spec(tiny_model_dir, max_steps=12, learning_rate=3.0, eval_split=0.25, eval_steps=1,
                            early_stopping_patience=1, max_grad_norm=0), tmp_path / "e", examples=ROWS * 2, base=base,
                      log=lambda s: None)
    assert r.n_steps < 12


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"init_lora_weights": "olora2"}, "init_lora_weights"),
        ({"eval_split": 1.5}, "eval_split"),
        ({"early_stopping_patience": 2}, "early_stopping_patience needs an eval loss"),
        ({"warmup_steps": -1}, "warmup_steps"),
        ({"save_steps": 0}, "save_steps"),
    ],
)
def test_spec_validation_names_the_field(overrides, match):
    from harness.errors import InputError
    from harness.train.spec import load_spec

    with pytest.raises(InputError, match=match):
        load_spec(None, overrides)


def test_spec_values_are_typed_by_field_so_yaml_and_flags_agree():
    from harness.train.spec import coerce_value, load_spec

    spec = load_spec(None, {"learning_rate": "1e-4", "lora_alpha": "16", "r": "8", "save_steps": "none",
                            "target_modules": "q_proj,v_proj", "mix": "{general: 0.2}"})
    assert (spec.learning_rate, spec.lora_alpha, spec.r, spec.save_steps) == (1e-4, 16.0, 8, None)
    assert spec.target_modules == ("q_proj", "v_proj") and spec.mix == {"general": 0.2}
    assert TrainSpec(lora_alpha=16) == spec.__class__(lora_alpha=16.0)  # one spec hash for 16 and 16.0
    assert coerce_value("use_rslora", "true") is True


def test_data_override_keeps_the_specs_column_mapping(tiny_model_dir, tmp_path):
    """`harness train spec.yaml --data next.jsonl` (a next round, the same columns) keeps the spec's
    data.fields; an override that maps its own columns replaces them. Found by the README's
    continued fine-tuning example, which failed with "unknown shape (columns: id, message, target)"."""
    from harness.train.run import TrainRequest, plan_training
    from harness.train.spec import load_spec

    for name in ("first", "next"):
        (tmp_path / f"{name}.jsonl").write_text("".join(
            json.dumps({"id": i, "message": f"Order {i} red hoodies", "target": f'{{"quantity": {i}}}'}) + "\n"
            for i in range(4)))
    spec_file = tmp_path / "s.yaml"
    spec_file.write_text(f"base: {tiny_model_dir}\n"
                         f"data: {{path: {tmp_path / 'first.jsonl'}, fields: {{prompt: message, completion: target}}}}\n")
    mapping = {"prompt": "message", "completion": "target"}
    nxt = str(tmp_path / "next.jsonl")
    # the train command's --data flag is this override; planning reads and checks every row
    plan = plan_training(TrainRequest(spec_file, {"data": nxt}, out=tmp_path / "ad"))
    assert (plan.points[0].spec.data, plan.points[0].spec.data_fields) == (nxt, mapping)
    other = load_spec(spec_file, {"data": {"path": nxt, "fields": {"prompt": "id", "completion": "target"}}})
    assert other.data_fields == {"prompt": "id", "completion": "target"}


def test_pissa_adapter_saved_as_lora_reproduces_the_trained_model_on_the_original_base(base, tiny_model_dir, tmp_path):
    from transformers import TrainerCallback

    from harness.models.adapters import load_adapter

    ids = base.tokenizer("Order 3 red hoodies", return_tensors="pt")["input_ids"]
    seen = {}

    class Capture(TrainerCallback):
        def on_train_end(self, args, state, control, model=None, **kwargs):
            model.eval()
            with torch.no_grad():
                seen["logits"] = model(input_ids=ids).logits.clone()

    r = train_adapter(_spec(tiny_model_dir, init_lora_weights="pissa"), tmp_path / "p", examples=ROWS, base=base,
                      log=lambda s: None, callbacks=[Capture()])
    peft_model = load_adapter(base.model, inspect_adapter(r.adapter_dir))
    with torch.no_grad():
        logits = peft_model(input_ids=ids).logits
    base.model = peft_model.unload()
    torch.testing.assert_close(logits, seen["logits"], atol=1e-4, rtol=1e-4)


def test_replay_mix_uses_base_model_answers_generated_once_and_cached(tiny_model_dir, tmp_path, monkeypatch):
    from harness.train.data import REPLAY_POOL, replay_rows

    monkeypatch.setenv("HARNESS_HOME", str(tmp_path / "home"))
    base = load_base(resolve_base(str(tiny_model_dir)))
    # The random tiny model only emits whitespace; make it say one of two words (whichever the hidden
    # state favours), then end its turn, so its answers are usable text that ended on its own.
    base.model.lm_head.weight = torch.nn.Parameter(base.model.lm_head.weight.detach().clone())  # untie
    yes, no = [i for i in range(base.tokenizer.vocab_size) if base.tokenizer.decode([i]).strip().isalpha()][:2]
    eos = base.tokenizer.eos_token_id
    with torch.no_grad():
        w, emb = base.model.lm_head.weight, base.model.get_input_embeddings().weight
        g = torch.Generator().manual_seed(0)
        v, e = torch.randn(w.shape[1], generator=g), torch.randn(w.shape[1], generator=g)
        w[yes] += 100 * v
        w[no] -= 100 * v
        emb[yes] += 50 * e  # after either word the state points along e ...
        emb[no] += 50 * e
        w[eos] += 50 * e  # ... where the turn ends
    pool = {json.loads(line)["prompt"] for line in REPLAY_POOL.read_text().splitlines() if line.strip()}
    said = []
    rows = replay_rows(base, 5, seed=1, log=said.append)
    assert len(rows) == 5 and all(r["prompt"][0]["content"] in pool for r in rows)
    assert len({r["prompt"][0]["content"] for r in rows}) == 5
    assert all(r["completion"][0]["content"].strip() for r in rows)
    assert [s.strip() for s in said][0] == "generating the base model's answers to 5 general prompts for replay (cached afterwards)"
    assert re.fullmatch(r"replay answers: 5/5 \(100%\), [0-9.e+]+/s", said[-1].strip()), said  # issue 35.2: progress
    said.clear()
    again = replay_rows(base, 5, seed=1, log=said.append)
    assert again == rows and not said  # served from the cache, no generation
    cache = list((tmp_path / "home" / "replay").rglob("*.jsonl"))
    assert len(cache) == 1 and len(cache[0].read_text().splitlines()) == 5


def test_replay_never_trains_on_an_answer_cut_at_the_token_limit(tiny_model_dir, tmp_path, monkeypatch):
    # A cut answer followed by end-of-turn teaches the adapter to stop mid-sentence; the next prompt of the
    # shuffled pool takes its place. Which answers are cut is set here (the generation itself is the
    # real one in the test above): every third prompt of the pool runs to the limit.
    import harness.generation.generate
    from harness.generation.generate import Generation
    from harness.train.data import REPLAY_MAX_NEW_TOKENS, REPLAY_POOL, replay_rows

    monkeypatch.setenv("HARNESS_HOME", str(tmp_path / "home"))
    base = load_base(resolve_base(str(tiny_model_dir)))
    pool = [json.loads(line)["prompt"] for line in REPLAY_POOL.read_text().splitlines() if line.strip()]
    cut_prompts = set(pool[::3])
    asked: list[list[str]] = []

    def answers(model, tokenizer, prompts, settings, batch_size=16, **kw):
        assert settings.max_new_tokens == REPLAY_MAX_NEW_TOKENS
        texts = [next(p for p in pool if p in prompt) for prompt in prompts]
        asked.append(texts)
        return [Generation(f"answer to {t}", 10, REPLAY_MAX_NEW_TOKENS if t in cut_prompts else 3, 0.0,
                           truncated=t in cut_prompts) for t in texts]

    monkeypatch.setattr(harness.generation.generate, "generate", answers)
    rows = replay_rows(base, 12, seed=1, log=lambda s: None)
    used = [r["prompt"][0]["content"] for r in rows]
    assert len(used) == 12 == len(set(used)) and not set(used) & cut_prompts
    assert all(r["completion"][0]["content"] == f"answer to {r['prompt'][0]['content']}" for r in rows)
    generated = [p for batch in asked for p in batch]
    assert len(generated) == len(set(generated)) and set(used) <= set(generated)
    assert any(p in cut_prompts for p in generated)  # some were cut, and replaced
    stored = {json.loads(line)["prompt"]: json.loads(line)["truncated"]
              for f in (tmp_path / "home" / "replay").rglob("*.jsonl") for line in f.read_text().splitlines()}
    assert stored == {p: p in cut_prompts for p in generated}
    asked.clear()
    assert replay_rows(base, 12, seed=1, log=lambda s: None) == rows and not asked  # the cache knows which were cut


def test_training_data_loads_from_jsonl_csv_parquet_and_a_dataset_directory(tmp_path):
    import datasets

    from harness.train.data import load_rows

    rows = [{"instruction": "Say hi", "input": "", "output": "hi"}, {"instruction": "Say bye", "input": "", "output": "bye"}]
    (tmp_path / "d.jsonl").write_text("".join(__import__("json").dumps(r) + "\n" for r in rows))
    ds = datasets.Dataset.from_list(rows)
    ds.to_csv(str(tmp_path / "d.csv"), index=False)
    ds.to_parquet(str(tmp_path / "d.parquet"))
    ds.save_to_disk(str(tmp_path / "saved"))
    for src in ("d.jsonl", "d.csv", "d.parquet", "saved"):
        got = [normalize_row(r, src) for r in load_rows(tmp_path / src)]
        assert [g["completion"][0]["content"] for g in got] == ["hi", "bye"], src
    with pytest.raises(DatasetError, match=r"d\.txt: unsupported file type"):
        (tmp_path / "d.txt").write_text("x")
        load_rows(tmp_path / "d.txt")
    (tmp_path / "bad.jsonl").write_text('{"prompt": "a", "completion": "b"}\n{not json\n')
    with pytest.raises(DatasetError, match=r"bad\.jsonl:2: malformed JSON line"):
        load_rows(tmp_path / "bad.jsonl")


def test_mixing_your_own_general_data_and_the_parents_data(base, tiny_model_dir, tmp_path):
    from harness.train.recipe import prepare_rows

    task_file = tmp_path / "task.jsonl"
    task_file.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    general = tmp_path / "general.jsonl"
    general.write_text("".join(json.dumps({"instruction": f"Name fact {i}", "output": f"fact {i}"}) + "\n" for i in range(30)))
    said = []
    rows, _, n_task = prepare_rows(_spec(tiny_model_dir, data=str(task_file), mix={"general": 0.2},
                                         general_data=str(general)), base, None, said.append)
    users = [r["prompt"][-1]["content"] for r in rows]
    assert n_task == 8 and len(rows) == 10 and sum(u.startswith("Name fact") for u in users) == 2
    assert any("2 general rows from" in s for s in said)

    # continued fine-tuning mixes in the data the parent was trained on, found through its harness.json
    train_adapter(_spec(tiny_model_dir, data=str(task_file)), tmp_path / "parent", base=base, log=lambda s: None)
    new = tmp_path / "new.jsonl"
    new.write_text("".join(json.dumps({"prompt": f"Cancel order {i}.", "completion": "ok"}) + "\n" for i in range(12)))
    from harness.models.adapters import inspect_adapter

    rows, _, _ = prepare_rows(_spec(tiny_model_dir, data=str(new), mix={"parent": 0.25}), base, None, lambda s: None,
                              inspect_adapter(tmp_path / "parent"))
    users = [r["prompt"][-1]["content"] for r in rows]
    assert len(rows) == 16 and sum(u.startswith("Order") for u in users) == 4

    with pytest.raises(UsageError, match="mix.parent needs --from-adapter"):
        prepare_rows(_spec(tiny_model_dir, data=str(new), mix={"parent": 0.25}), base, None, lambda s: None)


def test_the_parents_data_is_read_through_the_parents_column_mapping(base, tiny_model_dir, tmp_path):
    """A parent trained on data.fields-mapped columns: mix.parent reads its file with that mapping (the
    README's continued fine-tuning example failed with "unknown shape (columns: id, message, target)")."""
    from harness.models.adapters import inspect_adapter
    from harness.train.recipe import prepare_rows

    mapping = {"prompt": "message", "completion": "target"}
    for name, word in (("first", "Order"), ("next", "Cancel")):
        (tmp_path / f"{name}.jsonl").write_text("".join(
            json.dumps({"id": i, "message": f"{word} {i} red hoodies", "target": f'{{"quantity": {i}}}'}) + "\n"
            for i in range(8)))
    train_adapter(_spec(tiny_model_dir, data=str(tmp_path / "first.jsonl"), data_fields=mapping), tmp_path / "parent",
                  base=base, log=lambda s: None)
    rows, _, _ = prepare_rows(_spec(tiny_model_dir, data=str(tmp_path / "next.jsonl"), data_fields=mapping,
                                    mix={"parent": 0.5}), base, None, lambda s: None, inspect_adapter(tmp_path / "parent"))
    users = [r["prompt"][-1]["content"] for r in rows]
    assert len(rows) == 16 and sum(u.startswith("Order") for u in users) == 8

@pytest.mark.parametrize("mix, match", [({"wiki": 0.2}, "mix.wiki: unknown"), ({"general": 1.5}, "between 0 and 1"),
                                        ({"general": 0.6, "parent": 0.5}, "add up to 1.1")])
def test_bad_mix_is_explained(mix, match):
    from harness.train.spec import validate

    errors, _ = validate(TrainSpec(mix=mix))
    assert any(re.search(match, e) for e in errors), errors


def test_disk_full_while_saving_keeps_the_previous_adapter_and_exits_5(base, tiny_model_dir, tmp_path, monkeypatch):
    """Fault injection (FAULTS 32): the weights file cannot be written because the disk is full."""
    import errno

    import peft.peft_model

    from harness.errors import StorageError

    good = train_adapter(_spec(tiny_model_dir), tmp_path / "ad", examples=ROWS, base=base, log=lambda s: None)
    before = {p.name: p.read_bytes() for p in (tmp_path / "ad").iterdir() if p.is_file()}

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(peft.peft_model, "safe_save_file", full)
    with pytest.raises(StorageError, match=r"disk full while writing .*ad .*MiB free.*previous adapter there.*intact") as exc:
        train_adapter(_spec(tiny_model_dir, learning_rate=5e-3), tmp_path / "ad", examples=ROWS, base=base, log=lambda s: None)
    assert exc.value.exit_code == 5
    after = {p.name: p.read_bytes() for p in (tmp_path / "ad").iterdir() if p.is_file()}
    assert after == before and inspect_adapter(tmp_path / "ad").adapter_id == good.adapter_id
    assert not (tmp_path / "ad" / ".saving").exists()
    assert not any("lora" in n for n, _ in base.model.named_modules())


def test_training_sees_the_prompt_exactly_as_evaluation_renders_it(tiny_model_dir):
    """Issue 16.2: the chat template at training time must be the one evaluation applies, or the adapter
    is evaluated on a format it never saw. TRL tokenizes our conversational rows with the tokenizer's
    chat template; the prompt tokens it trains on must equal render_prompt's."""
    import datasets
    from trl import SFTConfig, SFTTrainer

    from harness.generation.generate import render_prompt
    from harness.models.base import load_base, resolve_base
    from harness.train.data import normalize_row

    base = load_base(resolve_base(str(tiny_model_dir)), device="cpu")
    row = normalize_row({"prompt": "Order two red hoodies, size M.", "completion": '{"item": "hoodie"}'}, "test")
    args = SFTConfig(output_dir=str(tiny_model_dir.parent / "unused-sft"), max_steps=1, report_to=[], bf16=False,
                     use_cpu=True, completion_only_loss=True)
    trainer = SFTTrainer(model=base.model, args=args, train_dataset=datasets.Dataset.from_list([row]),
                         processing_class=base.tokenizer)
    ex = trainer.train_dataset[0]
    prompt_ids = [t for t, lab in zip(ex["input_ids"], ex["labels"]) if lab == -100]  # what the loss skips
    want = base.tokenizer(render_prompt(base.tokenizer, "Order two red hoodies, size M."), add_special_tokens=False)["input_ids"]
    assert prompt_ids == want
