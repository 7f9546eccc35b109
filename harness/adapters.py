"""Adapter pre-flight and loading: safetensors only, checked against the base before PEFT sees it.

PEFT on its own falls back to a pickled ``adapter_model.bin``, looks a missing local path up on the
Hub, loads NaN weights, and silently drops keys a smaller base does not have (FAULTS.md 13-26). The
pre-flight here reads the config and the safetensors header and tensors directly and refuses those
cases with a message that names the file and the fix.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.errors import AdapterConfigError, AdapterFileError, IncompatibleError, SafetyError

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedModel

WEIGHTS = "adapter_model.safetensors"
CONFIG = "adapter_config.json"
ADAPTER_NAME = "default"


@dataclass(frozen=True)
class AdapterInfo:
    """A checked adapter directory.

    Attributes:
        path: the adapter directory.
        adapter_id: SHA-256 of the weights file plus the config file (the adapter's identity).
        config: the parsed ``adapter_config.json``.
        harness: the parsed ``harness.json`` when the harness trained it, else None.
    """

    path: Path
    adapter_id: str
    config: dict[str, Any]
    harness: dict[str, Any] | None

    @property
    def base_model_name(self) -> str | None:
        return self.config.get("base_model_name_or_path")


def _read_config(path: Path) -> dict[str, Any]:
    cfg_path = path / CONFIG
    try:
        text = cfg_path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise AdapterConfigError(f"{cfg_path} is not UTF-8 text (byte {exc.start}); fix: re-save the adapter") from None
    if not text.strip():
        raise AdapterConfigError(f"{cfg_path} is empty; fix: re-save the adapter with save_pretrained")
    try:
        cfg = json.loads(text)
    except json.JSONDecodeError as exc:
        raise AdapterConfigError(f"{cfg_path}:{exc.lineno}:{exc.colno}: invalid JSON ({exc.msg})") from None
    if not isinstance(cfg, dict):
        raise AdapterConfigError(f"{cfg_path} must hold a JSON object, not {type(cfg).__name__}")
    problems = []
    if cfg.get("peft_type") != "LORA":
        problems.append(f"peft_type is {cfg.get('peft_type')!r}; only 'LORA' adapters are supported")
    r = cfg.get("r")
    if not isinstance(r, int) or isinstance(r, bool) or r <= 0:
        problems.append(f"r must be a positive integer, not {r!r}")
    alpha = cfg.get("lora_alpha")
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not math.isfinite(alpha) or alpha <= 0:
        # A negative alpha silently flips the adapter's update; PEFT accepts it.
        problems.append(f"lora_alpha must be a positive finite number, not {alpha!r}")
    if problems:
        raise AdapterConfigError(f"{cfg_path}: " + "; ".join(problems))
    return cfg


def adapter_id(path: Path) -> str:
    h = hashlib.sha256()
    for name in (WEIGHTS, CONFIG):
        with open(path / name, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def inspect_adapter(path: Path | str, allow_pickle: bool = False) -> AdapterInfo:
    """Check an adapter directory's files, config and tensors (not yet against a base).

    Raises:
        AdapterFileError: missing directory or weights, unreadable safetensors, NaN/Inf or empty tensors.
        AdapterConfigError: malformed or invalid adapter_config.json.
        SafetyError: the weights exist only as a pickle (``adapter_model.bin``).
    """
    path = Path(path).expanduser()
    if not path.is_dir():
        raise AdapterFileError(
            f"adapter directory {path} does not exist (cwd {Path.cwd()}); fix: pass the directory that holds "
            f"{CONFIG} and {WEIGHTS}"
        )
    if not (path / WEIGHTS).is_file():
        pickles = [p.name for p in path.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".pkl")]
        if pickles and not allow_pickle:
            raise SafetyError(
                f"{path} has no {WEIGHTS}, only pickle weights ({', '.join(pickles)}), which can run code when "
                "loaded; refused. Fix: convert in a trusted session (PeftModel.from_pretrained, then "
                "save_pretrained(safe_serialization=True))"
            )
        raise AdapterFileError(
            f"{path} has no {WEIGHTS}; fix: pass an adapter directory saved by PEFT's save_pretrained "
            "(adapter_config.json + adapter_model.safetensors)"
        )
    if not (path / CONFIG).is_file():
        raise AdapterFileError(f"{path} has no {CONFIG}; fix: copy the adapter's config next to its weights")
    cfg = _read_config(path)
    _check_tensors(path / WEIGHTS, cfg)
    harness_json = None
    if (path / "harness.json").is_file():
        try:
            harness_json = json.loads((path / "harness.json").read_text())
        except (ValueError, UnicodeDecodeError):
            harness_json = None
    return AdapterInfo(path.resolve(), adapter_id(path), cfg, harness_json)


def _check_tensors(weights: Path, cfg: dict[str, Any]) -> None:
    import torch
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(weights), framework="pt") as f:
            keys = list(f.keys())
            if not keys:
                raise AdapterFileError(f"{weights} holds no tensors; fix: re-save the adapter")
            for key in keys:
                t = f.get_tensor(key)
                if t.numel() == 0:
                    raise AdapterFileError(
                        f"{weights}: tensor {key} has shape {list(t.shape)}; fix: re-save with gathered params "
                        "(a ZeRO-3 save without gathering writes empty tensors)"
                    )
                if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                    raise AdapterFileError(f"{weights}: tensor {key} holds NaN or Inf values; the training run diverged")
                if ".lora_A." in key and t.dim() == 2 and t.shape[0] != cfg["r"] and not cfg.get("rank_pattern"):
                    raise AdapterConfigError(f"{weights}: {key} has rank {t.shape[0]} but {CONFIG} says r={cfg['r']}")
    except SafetensorError as exc:
        raise AdapterFileError(
            f"{weights} is not a readable safetensors file ({exc}); fix: re-copy the artifact (it may be truncated)"
        ) from None
    except OSError as exc:
        raise AdapterFileError(f"cannot read {weights}: {exc}") from None


def check_base_identity(info: AdapterInfo, base_model_id: str, base_name: str, allow_mismatch: bool = False) -> str | None:
    """Refuse an adapter the harness trained on another base model (same shapes, other weights).

    Shapes alone cannot tell a fine-tuned sibling of the base from the base itself: an adapter on the
    wrong one loads without error and gives quietly worse numbers. ``harness.json`` records the exact
    base (a hash of its weights), so the check is exact for our adapters; adapters from elsewhere
    carry no such record and are checked by shape only. Returns a warning when ``allow_mismatch``.
    """
    trained_on = ((info.harness or {}).get("base_model") or {}).get("model_id")
    if not trained_on or trained_on == base_model_id:
        return None
    trained_name = ((info.harness or {}).get("base_model") or {}).get("name")
    message = (
        f"{info.path}: trained on base {trained_name!r} (weights {trained_on[:12]}), but the base given is "
        f"{base_name!r} (weights {base_model_id[:12]}); pass --base {trained_name} or, if this is intended, "
        "--allow-base-mismatch"
    )
    if not allow_mismatch:
        raise IncompatibleError(message)
    return message


def check_against_base(info: AdapterInfo, model: "PreTrainedModel") -> None:
    """Check every LoRA tensor's shape against the base module it attaches to.

    Raises:
        IncompatibleError: a target module is absent or a shape does not fit.
    """
    from safetensors import safe_open

    modules = dict(model.named_modules())
    linear = sorted({n.split(".")[-1] for n, m in modules.items() if hasattr(m, "in_features")})
    with safe_open(str(info.path / WEIGHTS), framework="pt") as f:
        for key in f.keys():
            if ".lora_A." not in key and ".lora_B." not in key:
                continue
            module_path = key.split(".lora_")[0]
            # PEFT saves keys as base_model.model.<module path>.lora_A.weight
            target = module_path.removeprefix("base_model.model.")
            mod = modules.get(target)
            if mod is None or not hasattr(mod, "in_features"):
                raise IncompatibleError(
                    f"{info.path}: adapter tensor {key} targets module {target!r}, which the base model does not "
                    f"have (adapter trained for {info.base_model_name!r}); linear modules in this base: "
                    f"{', '.join(linear)}"
                )
            shape = list(f.get_slice(key).get_shape())
            want_in = [shape[0], mod.in_features] if ".lora_A." in key else [mod.out_features, shape[1]]
            if shape != want_in:
                raise IncompatibleError(
                    f"{info.path}: {key} has shape {shape} but the base's {target} needs {want_in}; the adapter was "
                    f"trained for a different base ({info.base_model_name!r})"
                )


def load_adapter(model: "PreTrainedModel", info: AdapterInfo, trainable: bool = False) -> "PeftModel":
    """Attach a checked adapter to ``model``, reading the safetensors file ourselves.

    ``PeftModel.from_pretrained`` would resolve the path on its own (falling back to a pickle or the
    Hub); here the weights come only from the file the pre-flight checked, and a partial load (keys
    missing or unexpected) is refused instead of silently leaving layers at their no-op init.
    """
    from peft import LoraConfig, PeftModel, set_peft_model_state_dict
    from safetensors.torch import load_file

    check_against_base(info, model)
    config = LoraConfig.from_pretrained(str(info.path))
    config.inference_mode = not trainable
    peft_model = PeftModel(model, config, adapter_name=ADAPTER_NAME)
    state = load_file(str(info.path / WEIGHTS), device=str(next(model.parameters()).device))
    result = set_peft_model_state_dict(peft_model, state, adapter_name=ADAPTER_NAME)
    missing = [k for k in result.missing_keys if ".lora_" in k and f".{ADAPTER_NAME}." in k]
    unexpected = list(result.unexpected_keys)
    if missing or unexpected:
        raise IncompatibleError(
            f"{info.path}: partial load ({len(missing)} missing, {len(unexpected)} unexpected keys, e.g. "
            f"{(missing + unexpected)[0]}); the adapter was trained for a different base "
            f"({info.base_model_name!r}) or with other target_modules"
        )
    if trainable:
        n = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
        if n == 0:
            raise IncompatibleError(f"{info.path}: loaded as trainable but no parameter requires grad")
    else:
        peft_model.eval()
    return peft_model


def set_scale(model: "PeftModel", scale: float, adapter: str = ADAPTER_NAME) -> None:
    """Multiply the adapter's update by ``scale`` (1.0 = as trained; alpha/r or alpha/sqrt(r) times it)."""
    from peft.tuners.lora import LoraLayer

    for module in model.modules():
        if isinstance(module, LoraLayer):
            module.set_scale(adapter, scale)
