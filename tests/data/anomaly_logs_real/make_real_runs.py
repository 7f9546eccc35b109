"""Generate the held-out REAL-run anomaly corpus: logs of real Hugging Face Trainer runs.

Unlike ``tests/data/anomaly_logs`` (synthetic curves, the set the rule thresholds were tuned on), these
files are the ``log_history`` of actual ``transformers.Trainer`` runs. They are a held-out set: the
rules are not tuned on them, only measured (``benchmarks/anomalies.py`` prints both sets' figures).

Every run trains a tiny random-weight Llama built from a ``LlamaConfig`` (hidden 48, 2 layers, 4 heads,
vocab 96; nothing is downloaded) on synthetic token data (a seeded random "grammar": a low-entropy
Markov chain over the vocabulary, 32-token sequences), on the CPU, in fp32, no gradient checkpointing,
seeded (``seed=3407``). What differs per run is one planted cause:

- ``healthy__*``: sane settings (lr 3e-3 to 5e-3, warmup, linear/cosine decay, ``max_grad_norm`` 1.0), one
  with an eval split, one training LoRA adapters (PEFT, r 8, all projections) as users do, on a base model
  first trained (plain AdamW loop, not logged) on another synthetic language;
- ``divergence__lr1_linear`` / ``divergence__lr1_constant``: ``learning_rate=1.0`` (linear decay, resp.
  constant), ``max_grad_norm`` 1.0;
- ``no_learning__masked_labels``: every label -100 (for almost 4 epochs);
- ``nan_inf__nan_param``: a callback sets one weight to NaN mid-run;
- ``nan_inf__nan_batch``: one batch whose loss is NaN (a ``compute_loss`` returning NaN at one step, as a
  broken example does); the NaN gradient then poisons the weights;
- ``overfitting__tiny_data_eval``: 16 training sequences for many epochs with an eval split of other
  sequences (the train loss goes to ~0, the eval loss turns up);
- ``memorization__tiny_data``: 8 sequences for 150 epochs, no eval split (the train loss goes to ~0).

fp16 overflow is not in the set: it cannot be made on the CPU through the Trainer. This
transformers/accelerate accepts ``fp16=True`` with ``use_cpu=True`` but then neither autocasts to float16
nor creates a GradScaler (checked: the logits stay float32, ``trainer.accelerator.scaler`` is None; a
layer scaled up 300x trains without overflow), so the run is plain fp32. A pure-fp16 model on the CPU is
not what users run, so no substitute was made; the synthetic corpus keeps ``nan_inf__fp16_overflow``.

Each run is saved as ``<label>__<name>.json``: ``{"log_history": [...], "global_step", "max_steps",
"logging_steps", "training_args": {...}}``, i.e. the ``trainer_state.json`` fields that
``harness/anomalies/logs.py`` reads, plus the training arguments that matter to the rules
(``max_grad_norm``, learning rate, schedule). ``labels.json`` maps file -> expected finding kinds,
decided by the planted cause (what a user would want to be told), not by what the rules report.

Produced once, not at test time (the tests read the committed files), with:

    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \\
        .venv/bin/python tests/data/anomaly_logs_real/make_real_runs.py

on the project's CPU development machine (2 cores; transformers 5.24.0, torch 2.13.0+cpu, peft as pinned
by the project's venv); it takes about 25 seconds. A rerun on the same machine reproduces every file
except the timing fields of the final summary row (train_runtime, ..._per_second); exact floats depend on
the torch build, so another machine may differ in the last digits. The committed files are the reference.
Pass run names (e.g. ``healthy__cosine``) to regenerate only those.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainerCallback, TrainingArguments, set_seed

HERE = Path(__file__).resolve().parent
SEED = 3407
VOCAB = 96
SEQ = 32


def make_data(n: int, seed: int, masked: bool = False, language: int = 12345) -> list[dict]:
    """n sequences from one fixed Markov chain (each token has 3 likely successors) + per-sequence noise."""
    chain = np.random.default_rng(language)  # the same "language" for train and eval sets
    succ = chain.integers(0, VOCAB, size=(VOCAB, 3))
    probs = np.array([0.7, 0.2, 0.1])
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        toks = [int(rng.integers(0, VOCAB))]
        for _ in range(SEQ - 1):
            toks.append(int(succ[toks[-1], rng.choice(3, p=probs)]))
        ids = torch.tensor(toks, dtype=torch.long)
        labels = torch.full_like(ids, -100) if masked else ids.clone()
        out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels})
    return out


def tiny_llama() -> LlamaForCausalLM:
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      tie_word_embeddings=False)
    return LlamaForCausalLM(cfg).float()


class NaNParamAt(TrainerCallback):
    """Sets one weight of the model to NaN at the start of a given step (a corrupted update/weight)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_begin(self, args, state, control, model=None, **kw):
        if state.global_step == self.step and model is not None:
            with torch.no_grad():
                model.model.layers[0].mlp.down_proj.weight[0, 0] = float("nan")
        return control


class NaNBatchTrainer(Trainer):
    """A Trainer whose loss is NaN on one step: what one broken example (e.g. a 0/0 in a custom loss) does."""

    nan_step = 60

    def compute_loss(self, model, inputs, return_outputs=False, **kw):
        out = super().compute_loss(model, inputs, return_outputs=return_outputs, **kw)
        if self.model.training and self.state.global_step == self.nan_step:
            if return_outputs:
                return out[0] * float("nan"), out[1]
            return out * float("nan")
        return out


def pretrain_base(model: LlamaForCausalLM, steps: int = 300) -> None:
    """A plain AdamW loop (no Trainer, not logged) on another Markov language: the LoRA runs' base model."""
    data = make_data(512, SEED + 7, language=999)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3)
    model.train()
    for i in range(steps):
        batch = data[(i * 16) % 512:(i * 16) % 512 + 16]
        ids = torch.stack([b["input_ids"] for b in batch])
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()


def run(name: str, *, lr: float, steps: int | None = None, epochs: float = 1.0, schedule: str = "linear",
        warmup: int = 0, max_grad_norm: float = 1.0, n_train: int = 512, n_eval: int = 0, masked: bool = False,
        batch: int = 8, logging_steps: int = 1, eval_steps: int = 10, lora: bool = False, callbacks=(),
        trainer_cls=Trainer, weight_decay: float = 0.0) -> dict:
    set_seed(SEED)
    model = tiny_llama()
    if lora:
        from peft import LoraConfig, get_peft_model

        # A "base model" first: plain steps on another language, so the adapter tunes a model that has learnt.
        pretrain_base(model)
        model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0,
                                                 target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    train = make_data(n_train, SEED + 1, masked=masked)
    evals = make_data(n_eval, SEED + 2) if n_eval else None
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(
            output_dir=tmp, use_cpu=True, seed=SEED, data_seed=SEED, learning_rate=lr, lr_scheduler_type=schedule,
            warmup_steps=warmup, max_grad_norm=max_grad_norm, per_device_train_batch_size=batch,
            per_device_eval_batch_size=32, num_train_epochs=epochs, max_steps=steps if steps else -1,
            logging_steps=logging_steps, eval_strategy="steps" if evals else "no", eval_steps=eval_steps,
            save_strategy="no", report_to=[], disable_tqdm=True, dataloader_num_workers=0, weight_decay=weight_decay,
            fp16=False, bf16=False, gradient_checkpointing=False)
        trainer = trainer_cls(model=model, args=args, train_dataset=train, eval_dataset=evals, callbacks=list(callbacks))
        trainer.train()
        st = trainer.state
    return {
        "log_history": st.log_history, "global_step": st.global_step, "max_steps": st.max_steps,
        "logging_steps": st.logging_steps, "epoch": st.epoch,
        "training_args": {"learning_rate": lr, "lr_scheduler_type": schedule, "warmup_steps": warmup,
                          "max_grad_norm": max_grad_norm, "per_device_train_batch_size": batch,
                          "num_train_epochs": epochs, "max_steps": steps or -1, "fp16": False, "bf16": False,
                          "lora": lora, "n_train": n_train, "n_eval": n_eval, "all_labels_masked": masked},
        "generator": f"tests/data/anomaly_logs_real/make_real_runs.py ({name})",
    }


RUNS = {
    # name: (expected kinds, kwargs)
    "healthy__linear_eval": ([], dict(lr=3e-3, steps=200, warmup=10, schedule="linear", n_eval=64, eval_steps=20)),
    "healthy__cosine": ([], dict(lr=5e-3, steps=150, warmup=15, schedule="cosine", logging_steps=2)),
    "healthy__lora_cosine": ([], dict(lr=5e-3, steps=150, warmup=10, schedule="cosine", lora=True, logging_steps=2)),
    "divergence__lr1_linear": (["divergence", "grad_explosion"], dict(lr=1.0, steps=150, schedule="linear")),
    "divergence__lr1_constant": (["divergence", "grad_explosion"], dict(lr=1.0, steps=150, schedule="constant")),
    "no_learning__masked_labels": (["no_learning"], dict(lr=3e-3, steps=60, warmup=5, masked=True, n_train=128)),
    "nan_inf__nan_param": (["nan_inf"], dict(lr=3e-3, steps=120, warmup=10, callbacks=[NaNParamAt(50)])),
    "nan_inf__nan_batch": (["nan_inf"], dict(lr=3e-3, steps=120, warmup=10, trainer_cls=NaNBatchTrainer)),
    "overfitting__tiny_data_eval": (["overfitting", "memorization"],
                                    dict(lr=3e-3, epochs=100, n_train=16, batch=4, n_eval=64, warmup=10,
                                         logging_steps=4, eval_steps=20, schedule="constant")),
    "memorization__tiny_data": (["memorization"], dict(lr=5e-3, epochs=150, n_train=8, batch=4, warmup=10,
                                                       logging_steps=5, schedule="constant")),
}


def _clean(x):
    """JSON as the Trainer writes it: NaN/Infinity tokens kept; floats to 6 significant digits (size)."""
    if isinstance(x, float):
        return x if not math.isfinite(x) else float(f"{x:.6g}")
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_clean(v) for v in x]
    return x


def main(names: list[str]) -> None:
    torch.set_num_threads(2)
    labels_path = HERE / "labels.json"
    labels = json.loads(labels_path.read_text()) if labels_path.exists() else {}
    for name, (kinds, kw) in RUNS.items():
        if names and name not in names:
            continue
        state = _clean(run(name, **kw))
        body = ",\n".join("  " + json.dumps(r) for r in state.pop("log_history"))
        head = json.dumps(state)[1:-1]
        (HERE / f"{name}.json").write_text("{" + head + ',\n "log_history": [\n' + body + "\n]}\n")
        labels[f"{name}.json"] = kinds
        print(f"wrote {name}.json ({state['global_step']} steps)", flush=True)
    labels = {k: labels[k] for k in sorted(labels) if k[:-5] in RUNS}
    labels_path.write_text(json.dumps(labels, indent=2) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
