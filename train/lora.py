"""The LoRA side of a training run: a fresh PEFT adapter as the spec says, or the parent adapter
loaded trainable; PiSSA/LoftQ bookkeeping; and handing the base model back unchanged afterwards."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.errors import InputError, UsageError
from harness.train.spec import TrainSpec

if TYPE_CHECKING:
    from harness.models.adapters import AdapterInfo
    from harness.models.base import LoadedBase


@dataclass
class LoraModel:
    """The model being trained and what is needed to give the base back afterwards.

    Attributes:
        peft_model: the PEFT model the Trainer trains.
        init: PEFT's ``init_lora_weights`` value (True, "gaussian", "pissa", "loftq").
        n_trainable: trainable parameters (LoRA matrices, plus biases with ``bias``).
        saved_base: copies of the base weights PiSSA/LoftQ initialisation rewrites ({} otherwise).
        pissa_init_dir: the adapter as initialised, needed to convert a trained PiSSA adapter to plain
            LoRA (None unless PiSSA on a fresh adapter).
    """

    peft_model: Any
    init: Any
    n_trainable: int
    saved_base: dict[str, Any]
    pissa_init_dir: Path | None


def init_arg(name: str) -> Any:
    """PEFT's ``init_lora_weights`` value for a spec's name (validated by ``harness.train.spec.validate``)."""
    return {"default": True, "true": True, "gaussian": "gaussian", "pissa": "pissa", "loftq": "loftq"}.get(
        str(name).lower(), name
    )


def init_name(init: Any) -> str:
    """The name a record keeps for PEFT's ``init_lora_weights`` value (``True`` is "default")."""
    return "default" if init is True else str(init)


def check_loftq_runs() -> None:
    """LoftQ quantises the base to 4 bits with bitsandbytes, which needs CUDA: refuse clearly elsewhere."""
    import importlib.util

    import torch

    missing = []
    if importlib.util.find_spec("bitsandbytes") is None:
        missing.append("the bitsandbytes package")
    if not torch.cuda.is_available():
        missing.append("a CUDA GPU")
    if missing:
        raise UsageError(
            f"init_lora_weights=loftq needs {' and '.join(missing)} (it quantises the base to 4-bit NF4 through "
            "bitsandbytes); use pissa (runs anywhere) or default here"
        )


def get_lora_model(model: Any, spec: TrainSpec, init: Any) -> Any:
    """Wrap ``model`` with a fresh LoRA adapter as the spec says."""
    from peft import LoraConfig, get_peft_model

    extra: dict[str, Any] = {}
    if init == "loftq":
        from peft import LoftQConfig

        extra["loftq_config"] = LoftQConfig(loftq_bits=4)
    lora = LoraConfig(
        # peft annotates lora_alpha as int (a float works: it only scales) and bias as a Literal
        # (TrainSpec checks it is one of them)
        r=spec.r, lora_alpha=spec.lora_alpha,  # type: ignore[arg-type]
        lora_dropout=spec.lora_dropout, target_modules=list(spec.target_modules),
        bias=spec.bias,  # type: ignore[arg-type]
        use_rslora=spec.use_rslora,
        use_dora=spec.use_dora, init_lora_weights=init, task_type="CAUSAL_LM", **extra,
    )
    return get_peft_model(model, lora)


def build_lora(spec: TrainSpec, base: LoadedBase, parent: AdapterInfo | None, precision: str, ckpt_root: Path,
               resuming: bool, main: bool, log: Callable[[str], None]) -> LoraModel:
    """The model to train: the parent adapter loaded trainable, or a fresh adapter on ``base``.

    Seeded before the LoRA matrices are initialised, so two runs of one spec start identical.

    Raises:
        InputError: the target modules leave nothing trainable.
    """
    from transformers import set_seed

    from harness.models.adapters import check_target_modules, load_adapter

    init = init_arg(spec.init_lora_weights)
    set_seed(spec.seed)
    model = base.model.float() if precision == "fp32" else base.model
    # PiSSA and LoftQ rewrite the base weights they adapt; keep the originals to hand the base back.
    saved = snapshot_targets(model, spec.target_modules) if init in ("pissa", "loftq") and parent is None else {}
    if parent is not None:
        note_parent_config(spec, parent, log)
        peft_model = load_adapter(model, parent, trainable=True)
    else:
        check_target_modules(list(spec.target_modules), model, "training spec")
        peft_model = get_lora_model(model, spec, init)
    n_trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    if n_trainable == 0:
        raise InputError("no trainable parameters: check target_modules against the model's linear layers")
    pissa_dir = ckpt_root / "pissa-init" if init == "pissa" and parent is None else None
    if pissa_dir is not None and not (resuming and pissa_dir.is_dir()) and main:
        # the adapter as initialised: needed to convert the trained PiSSA adapter into a plain LoRA one
        peft_model.save_pretrained(str(pissa_dir), safe_serialization=True)
    return LoraModel(peft_model, init, n_trainable, saved, pissa_dir)


def give_base_back(base: LoadedBase, lora: LoraModel) -> None:
    """Leave ``base`` as it was: LoRA layers removed, rewritten weights restored, inference mode."""
    from harness.models.adapters import detach_adapter

    base.model = detach_adapter(lora.peft_model)
    if lora.saved_base:
        restore_targets(base.model, lora.saved_base)
    base.model.eval()
    base.tokenizer.padding_side = "left"


def snapshot_targets(model: Any, targets: Sequence[str]) -> dict[str, Any]:
    names = set(targets)
    return {f"{n}.weight": m.weight.detach().clone() for n, m in model.named_modules()
            if n.split(".")[-1] in names and hasattr(m, "weight")}


def restore_targets(model: Any, saved: dict[str, Any]) -> None:
    import torch

    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in saved.items():
            params[name].copy_(value)


def note_parent_config(spec: TrainSpec, parent: AdapterInfo, log: Callable[[str], None]) -> None:
    cfg = parent.config
    differ = [f"{k}={getattr(spec, k)!r} (parent {cfg.get(k)!r})" for k in ("r", "lora_alpha")
              if cfg.get(k) is not None and cfg.get(k) != getattr(spec, k)]
    if differ:
        log(f"  note: continuing the parent adapter keeps its own LoRA shape; ignored {', '.join(differ)}")
