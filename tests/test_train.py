"""The training recipe on a tiny model: deterministic, answers-only loss, refuses unsupervised data,
leaves the base model as it was, writes a loadable adapter with its record."""

import json

import pytest
import torch

from harness.adapters import inspect_adapter
from harness.errors import DatasetError
from harness.models import load_base, resolve_base
from train.data import normalize_row
from train.recipe import train_adapter
from train.spec import TrainSpec

ROWS = [{"prompt": f"Order {i} red hoodies, size M.", "completion": f'{{"item": "hoodie", "quantity": {i}}}'} for i in range(1, 9)]


@pytest.fixture(scope="module")
def base(tiny_model_dir):
    return load_base(resolve_base(str(tiny_model_dir)))


def _spec(tiny_model_dir, **kw):
    return TrainSpec(base=str(tiny_model_dir), learning_rate=1e-2, max_steps=3, per_device_train_batch_size=4,
                     r=4, lora_alpha=8, **kw)


def test_same_spec_and_seed_give_identical_losses_and_weights(base, tiny_model_dir, tmp_path):
    before = {k: v.clone() for k, v in base.model.state_dict().items()}
    a = train_adapter(_spec(tiny_model_dir), tmp_path / "a", examples=ROWS, base=base, log=lambda s: None)
    b = train_adapter(_spec(tiny_model_dir), tmp_path / "b", examples=ROWS, base=base, log=lambda s: None)
    assert a.n_steps == 3 and len([s for s in a.step_logs if "loss" in s]) == 3
    assert [s["loss"] for s in a.step_logs] == [s["loss"] for s in b.step_logs]
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
    with pytest.raises(DatasetError, match=r"1 of 4 examples keep no answer token.*max_seq_length=64.*rows 3"):
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
