"""Generate the anomaly-log corpus: trainer_state.json-shaped logs, healthy and with one planted anomaly each.

Deterministic (numpy seeded per file). Run from the repository root:

    python tests/data/anomaly_logs/make_corpus.py

It rewrites ``<label>__<name>.json`` and ``labels.json`` (file -> expected finding kinds) next to itself.
The curves follow what SFT/LoRA runs log: the Trainer's row shapes (train rows, separate eval rows, a
final summary row), a warmup + linear/cosine LR, multiplicative batch noise, grad norms around 0.2-2.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent

#: Added to every case's seed. 0 writes the committed corpus; benchmarks/anomalies.py --seeds N
#: redraws the same cases with other noise to see how much the scores depend on the exact draw.
SEED_OFFSET = 0


def lr_schedule(step: int, total: int, peak: float, warmup: int, kind: str = "cosine") -> float:
    if step < warmup:
        return peak * step / max(1, warmup)
    p = (step - warmup) / max(1, total - warmup)
    if kind == "constant":
        return peak
    if kind == "linear":
        return peak * max(0.0, 1 - p)
    return peak * 0.5 * (1 + math.cos(math.pi * min(1.0, p)))


def base_curve(t: np.ndarray, start: float, floor: float, tau: float) -> np.ndarray:
    return floor + (start - floor) * np.exp(-t / tau)


class Run:
    """Builds a log_history list row by row."""

    def __init__(self, seed: int, total_steps: int, steps_per_epoch: int, logging_steps: int = 10,
                 peak_lr: float = 2e-4, warmup: int = 20, schedule: str = "cosine", round4: bool = True):
        self.rng = np.random.default_rng(seed + SEED_OFFSET)
        self.total, self.spe, self.ls = total_steps, steps_per_epoch, logging_steps
        self.peak_lr, self.warmup, self.schedule, self.round4 = peak_lr, warmup, schedule, round4
        self.steps = np.arange(logging_steps, total_steps + 1, logging_steps)
        self.history: list[dict] = []

    def noise(self, sigma: float, n: int | None = None) -> np.ndarray:
        return np.exp(self.rng.normal(0, sigma, n or len(self.steps)))

    def grad_norms(self, level: float = 0.8, sigma: float = 0.25) -> np.ndarray:
        t = self.steps / self.total
        return level * (1.6 - 0.8 * t) * self.noise(sigma)

    def loss_value(self, x: float) -> float:
        if not math.isfinite(x):
            return x
        return round(float(x), 4) if self.round4 else float(x)

    def add_train(self, losses, grads=None, lrs=None, steps=None, epochs=None, extra=None) -> None:
        steps = self.steps if steps is None else steps
        for i, s in enumerate(steps):
            row = {"epoch": round(float(epochs[i]) if epochs is not None else s / self.spe, 4)}
            if grads is not None:
                row["grad_norm"] = float(grads[i])
            row["learning_rate"] = float(lrs[i]) if lrs is not None else lr_schedule(int(s), self.total, self.peak_lr, self.warmup, self.schedule)
            row["loss"] = self.loss_value(float(losses[i]))
            if extra:
                for k, v in extra.items():
                    row[k] = float(v[i])
            row["step"] = int(s)
            self.history.append(row)

    def add_eval(self, step: int, eval_loss: float, epoch: float | None = None) -> None:
        self.history.append({
            "epoch": round(epoch if epoch is not None else step / self.spe, 4), "eval_loss": float(eval_loss),
            "eval_runtime": round(float(self.rng.uniform(20, 24)), 3), "eval_samples_per_second": round(float(self.rng.uniform(40, 44)), 3),
            "eval_steps_per_second": round(float(self.rng.uniform(5, 5.5)), 3), "step": int(step)})

    def add_summary(self, train_loss: float) -> None:
        s = self.total
        self.history.append({"epoch": round(s / self.spe, 4), "step": s, "total_flos": 1.2345e16 * s / 1000,
                             "train_loss": train_loss, "train_runtime": round(1.7 * s, 2),
                             "train_samples_per_second": 9.41, "train_steps_per_second": 0.588})

    def sort_history(self) -> None:
        # Eval rows come right after the train row of the same step, as the Trainer logs them.
        self.history.sort(key=lambda r: (r["step"], "eval_loss" in r, "train_loss" in r))

    def state(self, **extra) -> dict:
        last = max((r.get("step", 0) for r in self.history), default=0)
        return {"best_global_step": None, "best_metric": None, "best_model_checkpoint": None,
                "epoch": round(last / self.spe, 4), "eval_steps": 100, "global_step": int(last),
                "is_hyper_param_search": False, "is_local_process_zero": True, "is_world_process_zero": True,
                "log_history": self.history, "logging_steps": self.ls, "max_steps": self.total,
                "num_input_tokens_seen": 0, "num_train_epochs": math.ceil(self.total / self.spe), "save_steps": 500,
                "stateful_callbacks": {}, "total_flos": 1.2345e16 * last / 1000, "train_batch_size": 4,
                "trial_name": None, "trial_params": None, **extra}


def sft_losses(run: Run, start=2.4, floor=1.1, tau_frac=0.2, sigma=0.05) -> np.ndarray:
    t = run.steps.astype(float)
    return base_curve(t, start, floor, tau_frac * run.total) * run.noise(sigma)


# ------------------------------------------------------------------------------------------------
# Healthy runs
# ------------------------------------------------------------------------------------------------


def healthy_sft_eval():
    """3 epochs, eval every 100 steps, summary row; train and eval both fall, small gap."""
    r = Run(seed=1, total_steps=900, steps_per_epoch=300, logging_steps=10, round4=True)
    losses = sft_losses(r, 2.3, 0.95, 0.25, 0.05)
    r.add_train(losses, grads=r.grad_norms())
    for s in range(100, 901, 100):
        r.add_eval(s, float(base_curve(np.array([s]), 2.3, 1.05, 0.25 * 900)[0] * r.noise(0.01, 1)[0]))
    r.add_summary(float(np.mean(losses)))
    r.sort_history()
    return r.state(), []


def healthy_resumed():
    """A run stopped at step 400 and restarted from its adapter with a fresh trainer: epoch and LR restart,
    steps keep counting (the logs were concatenated). The loss continues where it was."""
    r = Run(seed=2, total_steps=800, steps_per_epoch=400, logging_steps=10, round4=True)
    t = r.steps.astype(float)
    losses = base_curve(t, 2.1, 0.9, 200.0) * r.noise(0.05)
    grads = r.grad_norms()
    lrs = np.array([lr_schedule(int(s), 400, 2e-4, 20, "linear") if s <= 400 else lr_schedule(int(s) - 400, 400, 1e-4, 20, "linear") for s in r.steps])
    epochs = np.array([s / 400 if s <= 400 else (s - 400) / 400 for s in r.steps])
    # After the restart the optimizer state is gone: the loss jumps for a few logs and settles back.
    # Judged against the first segment this looks like a spike; the restart splits it off.
    after = np.clip(r.steps - 400, 0, None)
    losses = np.where(r.steps > 400, losses * (1.02 + 0.8 * np.exp(-(after - 10) / 15.0)), losses)
    r.add_train(losses, grads=grads, lrs=lrs, epochs=epochs)
    return r.state(), []


def healthy_rounded_old():
    """An old log: losses at 4 decimals, no grad_norm key, logging every step, short run, linear schedule."""
    r = Run(seed=3, total_steps=120, steps_per_epoch=120, logging_steps=1, peak_lr=1e-4, warmup=10, schedule="linear", round4=True)
    losses = sft_losses(r, 1.9, 0.72, 0.3, 0.06)
    r.add_train(losses, grads=None)
    r.add_summary(float(np.mean(losses)))
    return r.state(), []


def healthy_continued_lowlr():
    """Continuing from an existing adapter at a low LR: the loss starts lower and falls gently (about 15%)."""
    r = Run(seed=4, total_steps=500, steps_per_epoch=250, logging_steps=10, peak_lr=2e-5, warmup=25, round4=True)
    losses = sft_losses(r, 0.92, 0.76, 0.35, 0.04)
    r.add_train(losses, grads=r.grad_norms(0.5))
    for s in (250, 500):
        r.add_eval(s, float(0.95 - 0.06 * s / 500))
    r.add_summary(float(np.mean(losses)))
    r.sort_history()
    return r.state(), []


def healthy_rl_grpo():
    """GRPO: the loss sits near 0 (small, sometimes negative); reward rises, kl grows slowly."""
    r = Run(seed=5, total_steps=300, steps_per_epoch=300, logging_steps=5, peak_lr=1e-6, warmup=0, schedule="linear", round4=True)
    n = len(r.steps)
    t = r.steps / r.total
    loss = r.rng.normal(0.0, 0.0008, n) + 0.0004 * t
    loss[r.rng.random(n) < 0.3] = 0.0
    reward = 0.2 + 0.55 * (1 - np.exp(-3 * t)) + r.rng.normal(0, 0.05, n)
    kl = 0.0005 + 0.02 * t * r.noise(0.2)
    extra = {"reward": reward, "reward_std": 0.3 + r.rng.normal(0, 0.03, n), "kl": kl,
             "rewards/accuracy_reward/mean": reward * 0.7, "rewards/format_reward/mean": np.clip(reward * 1.2, 0, 1),
             "completions/mean_length": 180 + 40 * t + r.rng.normal(0, 10, n), "entropy": 0.6 - 0.1 * t + r.rng.normal(0, 0.02, n)}
    r.add_train(loss, grads=r.grad_norms(0.15, 0.4), extra=extra)
    r.add_summary(float(np.mean(loss)))
    return r.state(), []


# ------------------------------------------------------------------------------------------------
# One planted anomaly each
# ------------------------------------------------------------------------------------------------


def nan_inf_fp16_overflow():
    """fp16 run whose loss turns NaN at step 260 and stays NaN (the loss logged as NaN)."""
    r = Run(seed=10, total_steps=400, steps_per_epoch=400, logging_steps=10, round4=True)
    losses = sft_losses(r)
    grads = r.grad_norms()
    bad = r.steps >= 260
    losses[bad] = np.nan
    grads[bad] = np.nan
    r.add_train(losses, grads=grads)
    return r.state(), ["nan_inf"]


def nan_inf_hidden_nan():
    """The hidden form: the Trainer logged the NaN loss as 0.0, next to a NaN grad_norm, from step 114."""
    r = Run(seed=11, total_steps=300, steps_per_epoch=600, logging_steps=2, round4=True)
    losses = sft_losses(r, 1.3, 0.7, 0.3, 0.05)
    grads = r.grad_norms(0.6)
    bad = r.steps >= 114
    losses[bad] = 0.0
    grads[bad] = np.nan
    r.add_train(losses, grads=grads)
    return r.state(), ["nan_inf"]


def zero_collapse_code_model():
    """6.7B code model at batch 16: the loss falls, then drops to exactly 0 at step 114 and stays (epoch 0.19)."""
    r = Run(seed=12, total_steps=300, steps_per_epoch=600, logging_steps=2, peak_lr=2e-4, round4=True)
    losses = sft_losses(r, 1.3, 0.6, 0.3, 0.05)
    grads = r.grad_norms(0.6)
    bad = r.steps >= 114
    losses[bad] = 0.0
    grads[bad] = 0.0
    r.add_train(losses, grads=grads)
    return r.state(), ["zero_collapse"]


def negative_loss_custom():
    """A custom loss with a sign bug: it falls through 0 and keeps going."""
    r = Run(seed=13, total_steps=400, steps_per_epoch=400, logging_steps=10, round4=True)
    t = r.steps.astype(float)
    losses = 1.8 - 2.6 * (1 - np.exp(-t / 150)) + r.rng.normal(0, 0.05, len(t))
    r.add_train(losses, grads=r.grad_norms())
    return r.state(), ["negative_loss"]


def no_learning_masked_labels():
    """All labels masked: grad_norm exactly 0 from the first step; the loss reads 0.0 throughout."""
    r = Run(seed=14, total_steps=200, steps_per_epoch=200, logging_steps=5, round4=True)
    n = len(r.steps)
    r.add_train(np.zeros(n), grads=np.zeros(n))
    return r.state(), ["no_learning"]


def no_learning_zero_lr():
    """learning_rate 0 on every step (warmup set past the end of the run, a config typo): the loss only wobbles."""
    r = Run(seed=15, total_steps=300, steps_per_epoch=300, logging_steps=10, round4=True)
    n = len(r.steps)
    losses = 2.05 * r.noise(0.05)
    r.add_train(losses, grads=r.grad_norms(1.2, 0.2), lrs=np.zeros(n))
    return r.state(), ["no_learning"]


def spike_bad_batch():
    """A healthy run with two loss spikes (a batch of broken examples) that recover within a few logs."""
    r = Run(seed=16, total_steps=600, steps_per_epoch=300, logging_steps=5, round4=True)
    losses = sft_losses(r, 2.2, 1.0, 0.25, 0.04)
    grads = r.grad_norms()
    for s, f in ((210, 3.1), (455, 2.4)):
        i = int(np.searchsorted(r.steps, s))
        losses[i] *= f
        losses[i + 1] *= 1 + (f - 1) * 0.3
        grads[i] *= 4
    r.add_train(losses, grads=grads)
    return r.state(), ["spike"]


def divergence_high_lr():
    """LR 2e-3 with no clipping: the loss falls for ~150 steps, then climbs above its start."""
    r = Run(seed=17, total_steps=500, steps_per_epoch=500, logging_steps=10, peak_lr=2e-3, round4=True)
    t = r.steps.astype(float)
    base = base_curve(t, 2.3, 1.2, 60.0)
    rise = np.where(t > 180, 0.009 * (t - 180), 0.0)
    losses = (base + rise) * r.noise(0.05)
    grads = r.grad_norms(1.0) * np.where(t > 180, 1 + 0.004 * (t - 180), 1.0)
    r.add_train(losses, grads=grads)
    return r.state(), ["divergence"]


def grad_explosion_no_clipping():
    """No clipping: grad norms grow exponentially from step 300 while the loss only creeps up."""
    r = Run(seed=18, total_steps=400, steps_per_epoch=400, logging_steps=5, round4=True)
    t = r.steps.astype(float)
    losses = sft_losses(r, 2.0, 1.05, 0.2, 0.04)
    losses = losses * np.where(t > 300, 1 + 0.0015 * (t - 300), 1.0)
    grads = r.grad_norms(0.7) * np.where(t > 300, np.exp(0.06 * (t - 300)), 1.0)
    r.add_train(losses, grads=grads)
    return r.state(), ["grad_explosion"]


def overfitting_small_data():
    """5 epochs on a small set: train loss keeps falling, eval loss bottoms out in epoch 2 and climbs."""
    r = Run(seed=19, total_steps=500, steps_per_epoch=100, logging_steps=10, round4=True)
    t = r.steps.astype(float)
    losses = base_curve(t, 2.2, 0.25, 110.0) * r.noise(0.05)
    r.add_train(losses, grads=r.grad_norms())
    for s in range(50, 501, 50):
        ev = 1.35 + 0.9 * math.exp(-s / 60) + 0.0012 * max(0, s - 180) + float(r.rng.normal(0, 0.008))
        r.add_eval(s, ev)
    r.add_summary(float(np.mean(losses)))
    r.sort_history()
    return r.state(), ["overfitting"]


def memorization_many_epochs():
    """10 epochs on 80 examples: the train loss drifts to ~0.005 (no eval set)."""
    r = Run(seed=20, total_steps=200, steps_per_epoch=20, logging_steps=2, peak_lr=2e-4, warmup=10, round4=True)
    t = r.steps.astype(float)
    losses = base_curve(t, 1.9, 0.004, 35.0) * r.noise(0.05)
    r.add_train(losses, grads=r.grad_norms(0.5) * np.exp(-t / 150))
    r.add_summary(float(np.mean(losses)))
    return r.state(), ["memorization"]


def plateau_lr_too_low():
    """LR 1e-7: the loss stays around 2.1 for the whole run (underfitting)."""
    r = Run(seed=21, total_steps=400, steps_per_epoch=400, logging_steps=10, peak_lr=1e-7, round4=True)
    t = r.steps.astype(float)
    losses = (2.12 - 0.02 * t / 400) * r.noise(0.04)
    r.add_train(losses, grads=r.grad_norms(1.1))
    return r.state(), ["plateau"]


def fluctuation_no_warmup():
    """Batch size 1, constant LR, no warmup: the loss trends down under very large batch-to-batch swings."""
    r = Run(seed=22, total_steps=300, steps_per_epoch=300, logging_steps=1, peak_lr=3e-4, warmup=0, schedule="constant", round4=True)
    t = r.steps.astype(float)
    losses = base_curve(t, 2.0, 1.2, 90.0) * r.noise(0.4)
    r.add_train(losses, grads=r.grad_norms(1.0, 0.5))
    return r.state(), ["fluctuation"]


CASES = {
    "healthy__sft_eval": healthy_sft_eval,
    "healthy__resumed": healthy_resumed,
    "healthy__rounded_old": healthy_rounded_old,
    "healthy__continued_lowlr": healthy_continued_lowlr,
    "healthy__rl_grpo": healthy_rl_grpo,
    "nan_inf__fp16_overflow": nan_inf_fp16_overflow,
    "nan_inf__hidden_nan": nan_inf_hidden_nan,
    "zero_collapse__code_model": zero_collapse_code_model,
    "negative_loss__custom_loss": negative_loss_custom,
    "no_learning__masked_labels": no_learning_masked_labels,
    "no_learning__zero_lr": no_learning_zero_lr,
    "spike__bad_batch": spike_bad_batch,
    "divergence__high_lr": divergence_high_lr,
    "grad_explosion__no_clipping": grad_explosion_no_clipping,
    "overfitting__small_data": overfitting_small_data,
    "memorization__many_epochs": memorization_many_epochs,
    "plateau__lr_too_low": plateau_lr_too_low,
    "fluctuation__no_warmup": fluctuation_no_warmup,
}


def main() -> None:
    labels = {}
    for name, fn in CASES.items():
        state, kinds = fn()
        # json.dumps writes NaN / Infinity tokens, as the Trainer does.
        (HERE / f"{name}.json").write_text(json.dumps(state, indent=2) + "\n")
        labels[f"{name}.json"] = kinds
    (HERE / "labels.json").write_text(json.dumps(labels, indent=2) + "\n")
    print(f"wrote {len(labels)} logs and labels.json to {HERE}")


if __name__ == "__main__":
    main()
