"""Adapter pre-flight: safetensors only, valid config, finite tensors, shapes that fit the base."""

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from harness.errors import AdapterConfigError, AdapterFileError, IncompatibleError, SafetyError
from harness.models.adapters import inspect_adapter, load_adapter, set_scale
from harness.models.base import load_base, resolve_base
from tests.helpers import make_tiny_llama


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir, tmp_path_factory):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights="gaussian"))
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)  # a non-zero update, so attaching it changes outputs
    out = tmp_path_factory.mktemp("adapter")
    peft_model.save_pretrained(out)
    return out


def copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_good_adapter_loads_and_scale_changes_output(adapter_dir, tiny_model_dir):
    info = inspect_adapter(adapter_dir)
    assert len(info.adapter_id) == 64
    base = load_base(resolve_base(str(tiny_model_dir)))
    ids = torch.tensor([[1, 5, 9, 12]])
    ref = base.model(ids).logits
    pm = load_adapter(base.model, info)
    full = pm(ids).logits
    set_scale(pm, 0.0)
    assert torch.allclose(pm(ids).logits, ref, atol=1e-5)
    assert not torch.allclose(full, ref, atol=1e-3)
    pm.unload()


def test_missing_dir_names_path(tmp_path):
    with pytest.raises(AdapterFileError, match="does not exist"):
        inspect_adapter(tmp_path / "typo")


def test_no_safetensors_exit_2(tmp_path):
    (tmp_path / "adapter_config.json").write_text("{}")
    with pytest.raises(AdapterFileError) as e:
        inspect_adapter(tmp_path)
    assert e.value.exit_code == 2 and "adapter_model.safetensors" in str(e.value)


class Payload:
    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(SENTINEL),))


SENTINEL = ""


def test_pickle_only_adapter_refused_without_running_it(adapter_dir, tmp_path):
    global SENTINEL
    d = tmp_path / "a"
    d.mkdir()
    shutil.copy(adapter_dir / "adapter_config.json", d)
    SENTINEL = str(tmp_path / "executed")
    (d / "adapter_model.bin").write_bytes(pickle.dumps(Payload()))
    with pytest.raises(SafetyError) as e:
        inspect_adapter(d)
    assert e.value.exit_code == 4 and not (tmp_path / "executed").exists()


@pytest.mark.parametrize("cut", [0, 7, 100, -10])
def test_truncated_safetensors(adapter_dir, tmp_path, cut):
    d = copy(adapter_dir, tmp_path / "t")
    data = (d / "adapter_model.safetensors").read_bytes()
    (d / "adapter_model.safetensors").write_bytes(data[:cut] if cut >= 0 else data[:cut])
    with pytest.raises(AdapterFileError, match="re-copy"):
        inspect_adapter(d)


def test_nan_weights_refused_naming_tensor(adapter_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    d = copy(adapter_dir, tmp_path / "n")
    t = load_file(d / "adapter_model.safetensors")
    key = sorted(t)[0]
    t[key][0, 0] = float("nan")
    save_file(t, d / "adapter_model.safetensors")
    with pytest.raises(AdapterFileError, match=key.replace(".", r"\.")):
        inspect_adapter(d)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_nonfinite_weights_refused_in_every_float_dtype(adapter_dir, tmp_path, dtype, bad):
    # the check reads the raw bytes (no torch); torch itself says which values are not finite
    from safetensors.torch import load_file, save_file

    d = copy(adapter_dir, tmp_path / "n")
    t = {k: v.to(dtype) for k, v in load_file(d / "adapter_model.safetensors").items()}
    save_file(t, d / "adapter_model.safetensors")
    inspect_adapter(d)  # finite in this dtype: accepted
    key = sorted(t)[-1]
    t[key][-1, -1] = bad
    assert not bool(torch.isfinite(t[key]).all())
    save_file(t, d / "adapter_model.safetensors")
    with pytest.raises(AdapterFileError, match=key.replace(".", r"\.") + " holds NaN or Inf"):
        inspect_adapter(d)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.int64])
def test_adapter_id_is_the_hash_of_torch_tensor_bytes(adapter_dir, tmp_path, dtype):
    # the id has always been SHA-256 of the canonical config and, per tensor in name order, "name|dtype|shape|"
    # and the tensor's bytes as torch holds them; read from the raw file now, it must not change
    import hashlib

    from safetensors.torch import load_file, save_file

    from harness.models.adapters import adapter_id, canonical_config

    d = copy(adapter_dir, tmp_path / "n")
    t = {k: v.to(dtype) for k, v in load_file(d / "adapter_model.safetensors").items()}
    save_file(t, d / "adapter_model.safetensors")
    h = hashlib.sha256(canonical_config(json.loads((d / "adapter_config.json").read_text())).encode())
    for key in sorted(t):
        v = t[key].contiguous()
        h.update(f"{key}|{str(v.dtype).removeprefix('torch.')}|{list(v.shape)}|".encode())
        h.update(v.view(-1).view(torch.uint8).numpy().tobytes())
    assert adapter_id(d) == h.hexdigest()
    if dtype.is_floating_point:
        assert inspect_adapter(d).adapter_id == h.hexdigest()


@pytest.mark.parametrize(
    "patch,match",
    [({"lora_alpha": -8}, "lora_alpha"), ({"r": 0}, "r must be"), ({"peft_type": "IA3"}, "peft_type")],
)
def test_bad_config_values(adapter_dir, tmp_path, patch, match):
    d = copy(adapter_dir, tmp_path / "c")
    cfg = json.loads((d / "adapter_config.json").read_text())
    cfg.update(patch)
    (d / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(AdapterConfigError, match=match):
        inspect_adapter(d)


def test_malformed_config_names_line(adapter_dir, tmp_path):
    d = copy(adapter_dir, tmp_path / "m")
    (d / "adapter_config.json").write_text('{\n  "r": 4,\n  oops\n}')
    with pytest.raises(AdapterConfigError, match=r"adapter_config.json:3:"):
        inspect_adapter(d)


def test_adapter_for_other_base_is_incompatible(adapter_dir, tmp_path):
    other = make_tiny_llama(tmp_path / "wide", hidden=96)
    base = load_base(resolve_base(str(other)))
    with pytest.raises(IncompatibleError, match="shape") as e:
        load_adapter(base.model, inspect_adapter(adapter_dir))
    assert e.value.exit_code == 3


def test_base_with_fewer_layers_is_a_partial_load(adapter_dir, tmp_path):
    other = make_tiny_llama(tmp_path / "short", layers=1)
    base = load_base(resolve_base(str(other)))
    with pytest.raises(IncompatibleError, match="does not have"):
        load_adapter(base.model, inspect_adapter(adapter_dir))


def test_the_config_keys_read_from_peft_source_are_the_ones_peft_defines():
    """The unknown-key warning reads LoraConfig's fields from peft's files (importing peft costs ~10 s
    of a fully cached eval); the list must be exactly what the imported dataclass has."""
    import dataclasses

    from peft import LoraConfig

    from harness.models.adapters import _config_keys_from_source

    assert set(_config_keys_from_source()) == {f.name for f in dataclasses.fields(LoraConfig)}


def test_an_adapters_own_chat_template_is_used_for_its_prompts(tiny_model_dir, tmp_path, capsys):
    """Issue 31: TRL's setup_chat_format / Unsloth's get_chat_template save a changed template beside the adapter;
    the harness always used the base's, so such adapters were asked in the wrong format with no warning."""
    import shutil

    import duckdb

    from harness.cli import main
    from harness.models.adapters import inspect_adapter
    from harness.models.base import resolve_base
    from tests.analysis.test_sweep import make_adapter
    from tests.test_hostile import write_suite

    a = make_adapter(tiny_model_dir, tmp_path / "a", 3)
    ref = resolve_base(str(tiny_model_dir))
    # TRL saves the base's own tokenizer files beside every adapter: the same template, nothing to say
    for name in ("tokenizer.json", "tokenizer_config.json"):
        if (tiny_model_dir / name).is_file():
            shutil.copy(tiny_model_dir / name, a / name)
    plain = inspect_adapter(a, base=ref)
    assert plain.chat_template is None and not plain.warnings
    own = "{% for m in messages %}<<{{ m['role'] }}>> {{ m['content'] }}\n{% endfor %}<<assistant>> "
    (a / "chat_template.jinja").write_text(own)
    info = inspect_adapter(a, base=ref)
    assert info.chat_template == own
    db = tmp_path / "h.duckdb"
    suite = write_suite(tmp_path / "s")
    assert main(["eval", "--base", str(tiny_model_dir), "--adapter", str(a), "--suite", str(suite), "--db", str(db),
                 "--no-gates"]) == 0
    assert "is asked in its own chat template" in capsys.readouterr().err
    rows = duckdb.connect(str(db), read_only=True).execute("SELECT adapter_id IS NULL, prompt FROM generations").fetchall()
    assert rows and all(p.startswith("<<user>> ") and p.endswith("<<assistant>> ") for is_base, p in rows if not is_base)
    assert all("<<user>>" not in p for is_base, p in rows if is_base)  # the base keeps its own template
    # a tokenizer of its own (other tokens) cannot be used with the base's embeddings: said, not silently ignored
    tok = json.loads((tiny_model_dir / "tokenizer.json").read_text())
    tok["added_tokens"] = [*tok.get("added_tokens", []), {"id": 99999, "content": "<|im_start|>", "special": True,
                                                          "single_word": False, "lstrip": False, "rstrip": False,
                                                          "normalized": False}]
    (a / "tokenizer.json").write_text(json.dumps(tok))
    assert any("differs from the base's tokenizer" in w for w in inspect_adapter(a, base=ref).warnings)


def test_export_writes_a_model_card_with_the_hub_base_and_the_stores_results(tiny_model_dir, tmp_path, capsys):
    """Issue 31.5: the exported adapter's card was PEFT's blank template whose base_model was the local cache path,
    with no model-index although the store held results."""
    import duckdb
    from huggingface_hub import ModelCard

    from harness.cli import main
    from tests.analysis.test_sweep import make_adapter
    from tests.test_hostile import write_suite

    a = make_adapter(tiny_model_dir, tmp_path / "a", 4)
    db = tmp_path / "h.duckdb"
    suite = write_suite(tmp_path / "s")
    assert main(["eval", "--base", str(tiny_model_dir), "--adapter", str(a), "--suite", str(suite), "--scale", "0.5",
                 "--db", str(db), "--no-gates"]) == 0
    out = tmp_path / "exported"
    assert main(["export", "--adapter", str(a), "--scale", "0.5", "--out", str(out), "--base", str(tiny_model_dir),
                 "--db", str(db), "--base-id", "tiny-org/tiny-llama"]) == 0
    card = ModelCard.load(out / "README.md")
    assert card.data.base_model == "tiny-org/tiny-llama" and str(tmp_path) not in (out / "README.md").read_text()
    results = {(r.dataset_name, r.metric_type): r.metric_value for r in card.data.eval_results}
    # independently, from the raw rows: the adapter's scores at 0.5 on the suite's headline
    con = duckdb.connect(str(db), read_only=True)
    raw = con.execute("""SELECT avg(s.value) FROM scores s JOIN generations g USING (cache_key)
                         WHERE g.adapter_id IS NOT NULL AND g.scale = 0.5 AND s.metric = 'exact_match'""").fetchone()[0]
    con.close()
    assert results == {("hostile", "exact_match"): pytest.approx(raw)}
    # no base id known (a local base), no results at this scale: the card says so, and names no local path
    out2 = tmp_path / "exported-2"
    assert main(["export", "--adapter", str(a), "--scale", "0.25", "--out", str(out2), "--base", str(tiny_model_dir),
                 "--db", str(db)]) == 0
    card2 = ModelCard.load(out2 / "README.md")
    assert card2.data.base_model is None and not card2.data.eval_results
    assert "pass --base-id" in card2.text and "No results" in card2.text


def test_a_suite_may_name_the_chat_template_every_model_is_asked_in(tiny_model_dir, tmp_path, capsys):
    """Issue 31.6: a suite names a chat template file beside it (confined to its folder like its data)."""
    import duckdb

    from harness.cli import main
    from tests.analysis.test_sweep import make_adapter
    from tests.test_hostile import write_suite

    import yaml

    suite = write_suite(tmp_path / "s")
    (suite.parent / "plain.jinja").write_text("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}[assistant] ")
    y = yaml.safe_load(suite.read_text())
    y["prompt"] = {**(y.get("prompt") or {}), "chat_template": "plain.jinja"}
    suite.write_text(yaml.safe_dump(y))
    a = make_adapter(tiny_model_dir, tmp_path / "a", 5)
    db = tmp_path / "h.duckdb"
    assert main(["eval", "--base", str(tiny_model_dir), "--adapter", str(a), "--suite", str(suite), "--db", str(db),
                 "--no-gates"]) == 0
    prompts = [p for (p,) in duckdb.connect(str(db), read_only=True).execute("SELECT prompt FROM generations").fetchall()]
    assert prompts and all(p.startswith("[user] ") and p.endswith("[assistant] ") for p in prompts)
    y = yaml.safe_load(suite.read_text())
    y["prompt"]["chat_template"] = "../outside.jinja"
    (tmp_path / "outside.jinja").write_text("x")
    suite.write_text(yaml.safe_dump(y))
    assert main(["suites", "check", str(suite)]) == 4
    assert "outside the suite's folder" in capsys.readouterr().err
    y["prompt"]["chat_template"] = "missing.jinja"
    suite.write_text(yaml.safe_dump(y))
    assert main(["suites", "check", str(suite)]) == 2
    assert "no such file beside the suite" in capsys.readouterr().err
