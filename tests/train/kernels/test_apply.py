"""``apply_kernels`` on tiny Llama, Qwen2 and Mistral models with PEFT LoRA: the same losses, logits and
gradients as without (both paths), an exact undo, logged choices and fallbacks, and training with
``harness train --kernels`` giving the same per-step losses as without."""

from __future__ import annotations

import json

import pytest
import torch

import tests.train.kernels.kernel_support  # noqa: F401  (Triton's interpreter on before harness.train.kernels is imported)
from harness.train.kernels import KernelPathError, _path, apply_kernels, choose_path
from tests.train.kernels.kernel_support import require_triton

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# fp32 end to end: the kernels accumulate like the reference; what is left is summation order
LOSS_TOL = 1e-5
GRAD_TOL = 1e-5


@pytest.fixture(autouse=True)
def _auto_path(monkeypatch):
    monkeypatch.delenv("HARNESS_KERNELS", raising=False)  # the tests name their path, or expect auto's choice


def _tiny(family: str, dropout: float = 0.0, seed: int = 0):
    import transformers
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    config = getattr(transformers, f"{family}Config")(
        vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=True)
    model = getattr(transformers, f"{family}ForCausalLM")(config)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, target_modules=TARGETS))
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:  # B starts at zero: make the LoRA path matter
            torch.nn.init.normal_(p, std=0.1)
    return peft_model.train()


def _batch(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 97, (2, 11), generator=gen)
    labels = ids.clone()
    labels[0, :4] = -100  # a prompt
    mask = torch.ones_like(ids)
    mask[1, :2] = 0  # left padding
    labels[1, :2] = -100
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _loss_and_grads(model, batch):
    model.zero_grad()
    out = model(**batch)
    out.loss.backward()
    return out.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def _instance_forwards(model):
    return {name: m.__dict__["forward"] for name, m in model.named_modules() if "forward" in m.__dict__}


@pytest.mark.parametrize("family", ["Llama", "Qwen2", "Mistral"])
@pytest.mark.parametrize("path", ["triton", "reference"])
def test_same_loss_logits_and_gradients_then_an_exact_undo(family, path):
    if path == "triton":
        require_triton()
    model = _tiny(family)
    batch = _batch()
    loss, grads = _loss_and_grads(model, batch)
    no_labels = {k: v for k, v in batch.items() if k != "labels"}
    logits = model(**no_labels).logits.detach()
    before = _instance_forwards(model)
    lines: list[str] = []
    with apply_kernels(model, path=path, log=lines.append) as handle:
        assert handle.path.name == path
        assert dict(handle.patched) == {"rms_norm": 5, "rope": 2, "swiglu": 2, "lora": 14, "cross_entropy": 1}
        k_loss, k_grads = _loss_and_grads(model, batch)
        k_logits = model(**no_labels).logits  # no labels: the model's own forward, with logits
        fused = model(**batch, fused_lm_head=True)  # what TRL's SFTTrainer asks for
    assert len(lines) == 1 and lines[0].startswith(f"kernels: {path} path"), lines
    assert abs(k_loss.item() - loss.item()) <= LOSS_TOL
    assert (k_logits - logits).abs().max().item() <= 1e-5
    for name, g in grads.items():
        assert (k_grads[name] - g).abs().max().item() <= GRAD_TOL, name
    # TRL's fused-head fields: per-token log-probabilities of the shifted labels, their mask, the loss
    shifted = batch["labels"][:, 1:]
    logp = torch.log_softmax(logits[:, :-1].float(), -1).gather(2, shifted.clamp(min=0)[..., None])[..., 0]
    assert torch.equal(fused.label_mask, shifted != -100)
    assert torch.allclose(fused.log_probs, torch.where(shifted != -100, logp, 0.0), atol=1e-5)
    assert abs(fused.loss.item() - loss.item()) <= LOSS_TOL
    assert _instance_forwards(model) == before == {}  # undone: every module back to its class's forward


def test_undo_puts_back_a_forward_someone_else_patched():
    # TRL's SFTTrainer sets its fused LM head as an instance forward before we patch; undo gives it back
    model = _tiny("Llama")
    lm = model.get_base_model()
    theirs = lm.forward
    lm.forward = theirs
    handle = apply_kernels(model, path="reference", log=lambda m: None)
    assert lm.__dict__["forward"] is not theirs
    handle.undo()
    assert lm.__dict__["forward"] is theirs


def test_scaling_is_read_at_call_time_so_sweeps_and_rslora_stay_exact():
    model = _tiny("Llama")
    batch = _batch()
    with apply_kernels(model, path="reference", log=lambda m: None):
        for layer in (m for m in model.modules() if hasattr(m, "scaling") and hasattr(m, "lora_A")):
            layer.scaling["default"] *= 2.5
        patched = model(**batch).loss.item()
    assert abs(model(**batch).loss.item() - patched) <= LOSS_TOL


def test_dropout_keeps_peft_forward_with_a_logged_reason():
    model = _tiny("Llama", dropout=0.1)
    lines: list[str] = []
    with apply_kernels(model, path="reference", log=lines.append) as handle:
        assert "lora" not in handle.patched and handle.patched["rms_norm"] == 5
    assert len(lines) == 1 and "lora not fused: lora_dropout > 0" in lines[0], lines


def test_a_disabled_adapter_runs_peft_forward_and_says_so_once():
    model = _tiny("Llama").eval()
    batch = _batch()
    lines: list[str] = []
    with apply_kernels(model, path="reference", log=lines.append), model.disable_adapter():
        base_out = model(**batch).loss.item()
        model(**batch)
    with model.disable_adapter():
        assert abs(model(**batch).loss.item() - base_out) <= LOSS_TOL
    fallbacks = [ln for ln in lines if "ran PEFT's own forward: adapters disabled" in ln]
    assert len(fallbacks) == 1, lines


def test_path_is_chosen_once_and_never_silently(monkeypatch):
    monkeypatch.setenv("HARNESS_KERNELS", "reference")
    assert choose_path("cpu").name == "reference"
    monkeypatch.setenv("HARNESS_KERNELS", "fast")
    with pytest.raises(KernelPathError, match="HARNESS_KERNELS='fast'"):
        choose_path("cpu")
    monkeypatch.delenv("HARNESS_KERNELS")
    # a CPU process whose kernels were not built for the interpreter: auto takes the reference and says why;
    # an explicit triton request is refused
    monkeypatch.setattr(_path, "interpreted", lambda: False)
    auto = choose_path("cpu")
    assert auto.name == "reference" and "TRITON_INTERPRET=1" in auto.reason
    with pytest.raises(KernelPathError, match="cannot run"):
        choose_path("cpu", "triton")


def test_tiny_llama_trains_to_the_same_losses_with_kernels(tiny_model_dir):
    # convergence: a few AdamW steps of LoRA on the tiny Llama, with and without the Triton kernels
    require_triton()
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    enc = tok(["The capital of France is Paris.", "What is two plus two? Four, yes."], return_tensors="pt",
              padding=True)
    batch = {**enc, "labels": enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)}

    def run(kernels: bool) -> list[float]:
        torch.manual_seed(0)
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                               LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS)).train()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        handle = apply_kernels(model, path="triton", log=lambda m: None) if kernels else None
        losses = []
        for _ in range(4):
            loss = model(**batch).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses.append(loss.item())
        if handle:
            handle.undo()
        return losses

    plain, fused = run(False), run(True)
    print("per-step |loss diff|:", [abs(a - b) for a, b in zip(plain, fused)])
    assert plain[-1] < plain[0]  # it learns, so the comparison covers moving weights
    for step, (a, b) in enumerate(zip(plain, fused)):
        assert abs(a - b) <= 1e-4, f"step {step}: {a} vs {b}"


def test_harness_train_kernels_gives_the_same_step_losses(tiny_model_dir, tmp_path, capsys):
    require_triton()
    from harness.cli import main

    rows = [{"prompt": f"Order {i} red hoodies, size M.", "completion": f'{{"item": "hoodie", "quantity": {i}}}'}
            for i in range(1, 5)]
    data = tmp_path / "orders.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = tmp_path / "orders.yaml"
    spec.write_text(f"base: {tiny_model_dir}\ndata: {data}\nr: 4\nlora_alpha: 8\nlearning_rate: 1e-2\n"
                    "max_steps: 3\nper_device_train_batch_size: 2\n")
    losses = {}
    for name, extra in (("plain", []), ("kernels", ["--kernels"])):
        out = tmp_path / name
        assert main(["train", str(spec), "--out", str(out), "--db", str(tmp_path / "h.duckdb"), *extra]) == 0
        logged = [json.loads(ln) for ln in (out / "step_logs.jsonl").read_text().splitlines()]
        losses[name] = [r["loss"] for r in logged if "loss" in r]  # eval rows carry eval_loss only
    err = capsys.readouterr().err
    assert "kernels: triton path (auto: Triton interpreter on the CPU)" in err
    # every patched forward held for the whole run: nothing (transformers' hub kernels re-applied on
    # model.train(), say) put the modules' own forwards back while training, so the kernels really ran
    assert "replaced the patched forward" not in err
    assert json.loads((tmp_path / "kernels" / "harness.json").read_text())["kernels"]["name"] == "triton"
    assert len(losses["plain"]) == 3
    print("per-step |loss diff|:", [abs(a - b) for a, b in zip(losses["plain"], losses["kernels"])])
    for step, (a, b) in enumerate(zip(losses["plain"], losses["kernels"])):
        assert abs(a - b) <= 1e-4, f"step {step + 1}: {a} vs {b}"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_same_loss_and_gradients_on_gpu(dtype):
    # compiled kernels (not the interpreter) on a tiny model: bf16 within bf16 rounding of the loss
    model = _tiny("Llama").to("cuda", dtype)
    batch = {k: v.cuda() for k, v in _batch().items()}
    loss, grads = _loss_and_grads(model, batch)
    with apply_kernels(model, path="triton", log=lambda m: None):
        k_loss, k_grads = _loss_and_grads(model, batch)
    tol = LOSS_TOL if dtype == torch.float32 else 2e-2 * abs(loss.item())
    assert abs(k_loss.item() - loss.item()) <= tol
    for name, g in grads.items():
        scale = g.float().abs().max().item()
        assert (k_grads[name].float() - g.float()).abs().max().item() <= (1e-4 if dtype == torch.float32 else 5e-2) * max(scale, 1e-3), name


@pytest.mark.parametrize("path", ["triton", "reference"])
def test_mixed_adapter_batch_goes_through_multi_scale_lora(path):
    # the sweep engine's batches: one adapter name per sequence (several scales, "__base__" for none)
    if path == "triton":
        require_triton()
    from peft import LoraConfig

    model = _tiny("Llama").eval()
    model.add_adapter("other", LoraConfig(r=4, lora_alpha=16, target_modules=TARGETS))
    for name, p in model.named_parameters():
        if "lora_B.other" in name:
            torch.nn.init.normal_(p, std=0.1)
    ids = torch.randint(0, 97, (3, 4), generator=torch.Generator().manual_seed(1))
    names = ["default", "__base__", "other"]
    want = model(input_ids=ids, adapter_names=names).logits
    lines: list[str] = []
    with apply_kernels(model, path=path, log=lines.append):
        got = model(input_ids=ids, adapter_names=names).logits
    assert (got - want).abs().max().item() <= 1e-5
    assert len(lines) == 1, lines  # no fallback line: the kernel served every layer


def test_undo_restores_a_module_whose_patch_another_library_removed():
    """transformers' hub-kernel kernelize pops a module's ``forward`` instance attribute on model.train():
    undo must not assume ours is still there, must say which ops ran unfused, and restores each module
    once even when it was reached twice."""
    model = _tiny("Llama")
    before = {id(m): ("forward" in m.__dict__, m.__dict__.get("forward")) for m in model.modules()}
    lines: list[str] = []
    handle = apply_kernels(model, path="reference", log=lines.append)
    norm = next(m for m in model.modules() if type(m).__name__ == "LlamaRMSNorm")
    handle._patch(norm, "rms_norm", norm.__dict__["forward"])  # the same module reached a second time
    del norm.__dict__["forward"]  # what kernels' _replace_forward does to a hub-kernel layer
    assert handle.check_attached() == {"rms_norm": 1}
    handle.undo()
    assert handle.replaced == {"rms_norm": 1}
    assert any("replaced the patched forward of rms_norm x1" in ln for ln in lines)
    after = {id(m): ("forward" in m.__dict__, m.__dict__.get("forward")) for m in model.modules()}
    assert after == before


def test_hub_kernels_are_off_for_every_model_the_harness_loads(tiny_model_dir):
    """transformers >= 5.25 turns hub kernels on by default (code fetched from the Hub, re-applied on
    every train()/eval()); importing the harness switches them off, so a loaded model keeps its own
    forwards and ours stay attached through train()."""
    from transformers import AutoModelForCausalLM

    import harness  # noqa: F401  (sets the switches)

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert not getattr(model, "use_kernels", False)
    with apply_kernels(model, path="reference", log=lambda m: None) as handle:
        model.train()
        model.eval()
        assert not handle.check_attached()
