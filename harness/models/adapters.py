"""Adapter pre-flight and loading: safetensors only, checked against the base before PEFT sees it.

PEFT on its own falls back to a pickled ``adapter_model.bin``, looks a missing local path up on the
Hub, loads NaN weights, and silently drops keys a smaller base does not have (FAULTS.md 13-26). The
pre-flight here reads the config and the safetensors header and tensors directly and refuses those
cases with a message that names the file and the fix.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from harness.errors import AdapterConfigError, AdapterFileError, IncompatibleError, SafetyError
from harness.models.chat_template import own_chat_template
from harness.models.safetensors_file import Tensor, hash_data, read_header
from harness.models.safety import PICKLE_SUFFIXES
from harness.records import AdapterRecord, read_adapter_record

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedModel

WEIGHTS = "adapter_model.safetensors"
CONFIG = "adapter_config.json"
ADAPTER_NAME = "default"


@dataclass(frozen=True, eq=False)
class AdapterInfo:
    """A checked adapter directory.

    Attributes:
        path: the adapter directory.
        adapter_id: SHA-256 of the canonical config plus every tensor (the adapter's identity; see
            ``canonical_config``).
        config: the parsed ``adapter_config.json``.
        record: its ``harness.json`` when the harness trained (or exported) it, else None.
    """

    path: Path
    adapter_id: str
    config: dict[str, Any]
    record: AdapterRecord | None
    #: one line each: unknown config keys and the like (shown and stored with the run)
    warnings: tuple[str, ...] = ()
    #: the adapter's own chat template (``chat_template.jinja`` or ``tokenizer_config.json`` beside it), used for
    #: its prompts; None: the base's
    chat_template: str | None = None

    @property
    def harness(self) -> dict[str, Any] | None:
        """The record as a JSON-ready dict (its current layout), for callers not yet on ``record``."""
        return self.record.to_dict() if self.record is not None else None

    @property
    def base_model_name(self) -> str | None:
        return self.config.get("base_model_name_or_path")

    # Identity is the id (plus where it was read from): the parsed config dicts are not hashable.
    def __hash__(self) -> int:
        return hash((self.adapter_id, str(self.path)))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AdapterInfo) and (self.adapter_id, self.path) == (other.adapter_id, other.path)


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


# Fields that say where or how an adapter was saved, not what it computes: the same weights saved from
# another directory, another PEFT release, or in inference mode are the same adapter.
_IDENTITY_IGNORED = frozenset({"base_model_name_or_path", "revision", "inference_mode", "peft_version"})
# List-valued fields whose order carries no meaning (PEFT writes target_modules from a set, in varying order).
_SET_FIELDS = frozenset({"target_modules", "modules_to_save", "exclude_modules", "layers_to_transform"})


def canonical_config(cfg: dict[str, Any]) -> str:
    """The adapter config as identity sees it: sorted keys, set-like lists sorted, save-time fields dropped."""
    out = {}
    for k, v in cfg.items():
        if k in _IDENTITY_IGNORED:
            continue
        if k in _SET_FIELDS and isinstance(v, list):
            v = sorted(v, key=lambda x: json.dumps(x, sort_keys=True))
        out[k] = v
    return json.dumps(out, sort_keys=True, separators=(",", ":"))


def adapter_id(path: Path) -> str:
    """The adapter's identity: SHA-256 of ``canonical_config`` and of every tensor (name, dtype, shape,
    bytes) in name order. Two saves of the same weights get the same id whatever order PEFT wrote the
    header or ``target_modules`` in."""
    return hash_data(path / WEIGHTS, read_header(path / WEIGHTS), canonical_config(_read_config(path)), check=False)


def precheck_adapter(path: Path | str, allow_pickle: bool = False) -> tuple[Path, dict[str, Any], list[Tensor]]:
    """What ``inspect_adapter`` checks from the directory, the config and the safetensors header alone (no
    tensor data, no base): run first, so a wrong path or config is named before a base model is resolved.

    Returns:
        (the directory, its parsed config, its tensors' header entries in name order).
    """
    from harness.models.hub import hub_snapshot, looks_like_hub_id

    if looks_like_hub_id(str(path)):
        path = hub_snapshot(str(path), "adapter")  # only with HARNESS_ALLOW_HUB=1, from the local cache first
    path = Path(path).expanduser()
    if path.is_file():
        raise AdapterFileError(
            f"{path} is a file, not an adapter directory; fix: pass the directory that holds it"
            + (f" ({path.parent})" if path.name in (CONFIG, WEIGHTS) else f", with {CONFIG} and {WEIGHTS}")
        )
    if not path.is_dir():
        raise AdapterFileError(
            f"adapter directory {path} does not exist (cwd {Path.cwd()}); fix: pass the directory that holds "
            f"{CONFIG} and {WEIGHTS}"
        )
    if not (path / WEIGHTS).is_file():
        pickles = [p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES]
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
    tensors = read_header(path / WEIGHTS)
    _check_header(path / WEIGHTS, tensors, cfg)
    return path, cfg, tensors


def inspect_adapter(path: Path | str, allow_pickle: bool = False, base: Any = None,
                    allow_base_mismatch: bool = False) -> AdapterInfo:
    """Check an adapter directory's files, config and tensors, and with ``base`` (a ``BaseModelRef``) that it
    fits that base.

    Everything the config and the safetensors header show is checked before a byte of tensor data is read
    (a valid header over a 2 GiB tensor that fits no base is refused at once); then one bounded pass over
    the data checks for NaN/Inf and computes the adapter id.

    Raises:
        AdapterFileError: missing directory or weights, unreadable safetensors, NaN/Inf or empty tensors.
        AdapterConfigError: malformed or invalid adapter_config.json.
        SafetyError: the weights exist only as a pickle (``adapter_model.bin``).
        IncompatibleError: with ``base``, the adapter does not fit it (``check_fits_base``), or the harness
            trained it on another base (unless ``allow_base_mismatch``).
        RecordError: a damaged ``harness.json`` (exit 2); RecordVersionError: one a newer harness wrote (exit 3).
    """
    path, cfg, tensors = precheck_adapter(path, allow_pickle)
    record = read_adapter_record(path)  # a damaged one is refused: it would skip the base-identity check
    if base is not None:
        # the recorded base first (its message names the base to pass), then what the files show
        check_base_identity(AdapterInfo(path.resolve(), "", cfg, record), base.model_id, base.name, allow_base_mismatch)
        check_fits_base(path, cfg, tensors, base)
    digest = hash_data(path / WEIGHTS, tensors, canonical_config(cfg))
    template, template_warnings = own_chat_template(path, base.path if base is not None else None)
    return AdapterInfo(path.resolve(), digest, cfg, record, (*_config_warnings(path / CONFIG, cfg), *template_warnings),
                       template)


def inspect_for_base(paths: Sequence[Path | str], base_name: str, allow_pickle: bool = False,
                     allow_base_mismatch: bool = False) -> tuple[list[AdapterInfo], Any]:
    """Every adapter of a command checked against its base, and the resolved base (``BaseModelRef``).

    The checks against the base come first, from the files' headers (a 2 GiB tensor that fits no base is never
    read), except on the first run on a machine, when resolving the embedded base converts its GGUF file
    (seconds, and transformers' import): then each adapter's own files are checked whole first, so a mistake in
    them (NaN weights, a bad config) is named before that work, and the fit is checked after it.
    ``allow_pickle`` is the base's (an adapter is read from safetensors only, always).
    """
    from harness.models.base import needs_conversion, resolve_base

    for p in paths:
        precheck_adapter(p)  # a wrong path or config is named before the base is resolved
    if not needs_conversion(base_name):
        ref = resolve_base(base_name, allow_pickle=allow_pickle)
        return [inspect_adapter(p, base=ref, allow_base_mismatch=allow_base_mismatch) for p in paths], ref
    infos = [inspect_adapter(p) for p in paths]
    ref = resolve_base(base_name, allow_pickle=allow_pickle)
    checked = []
    for info in infos:
        check_base_identity(info, ref.model_id, ref.name, allow_base_mismatch)
        check_against_base_files(info, ref)
        template, _ = own_chat_template(info.path, ref.path)  # the template compared with the base's, as above
        checked.append(replace(info, chat_template=template))
    return checked, ref


def _known_config_keys() -> set[str]:
    """Every key a ``LoraConfig`` of the installed peft has, read from peft's source (importing peft
    costs ~10 s, most of a fully cached eval); the import is the fallback when the source reads wrong."""
    keys = set(_config_keys_from_source())
    if not keys:
        import dataclasses

        from peft import LoraConfig

        keys = {f.name for f in dataclasses.fields(LoraConfig)}
    return keys | {"auto_mapping", "peft_version"}


@functools.lru_cache(maxsize=1)
def _config_keys_from_source() -> frozenset[str]:
    """The annotated fields of peft's ``LoraConfig`` and its config base classes, by parsing the files."""
    import ast
    import importlib.util

    spec = importlib.util.find_spec("peft")  # locates the package without running it
    if spec is None or not spec.submodule_search_locations:
        return frozenset()
    root = Path(next(iter(spec.submodule_search_locations)))
    classes: dict[str, tuple[list[str], set[str]]] = {}
    for rel in ("config.py", "tuners/lora/config.py"):
        try:
            tree = ast.parse((root / rel).read_text(encoding="utf-8"))
        except (OSError, SyntaxError, UnicodeDecodeError):
            return frozenset()
        for node in tree.body:
            if isinstance(node, ast.ClassDef):
                bases = [b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in node.bases]
                fields = {n.target.id for n in node.body if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)}
                classes[node.name] = (bases, fields)
    keys: set[str] = set()
    todo, seen = ["LoraConfig"], set()
    while todo:
        name = todo.pop()
        if name in seen or name not in classes:
            continue
        seen.add(name)
        bases, fields = classes[name]
        keys |= fields
        todo.extend(bases)
    return frozenset(keys) if "LoraConfig" in seen and "r" in keys and "peft_type" in keys else frozenset()


def _config_warnings(cfg_path: Path, cfg: dict[str, Any]) -> list[str]:
    unknown = sorted(set(cfg) - _known_config_keys())
    if not unknown:
        return []
    # PEFT ignores keys it does not know (with a warning on some versions): the adapter may have been
    # saved by a newer PEFT with a feature this one would silently drop.
    return [f"{cfg_path}: unknown key(s) {', '.join(unknown)} are ignored by peft; the adapter may need a newer peft "
            "than the one installed"]


_LORA_SUFFIXES = (".lora_A.weight", ".lora_B.weight", ".lora_embedding_A", ".lora_embedding_B")
_DORA_SUFFIXES = (".lora_magnitude_vector", ".lora_magnitude_vector.weight")


def unaccounted_tensor(key: str, cfg: dict[str, Any]) -> str | None:
    """Why ``key`` is not a tensor this LoRA config can hold, or None when it is.

    A LoRA adapter holds A/B matrices (plus B's bias with ``lora_bias``, DoRA magnitudes with
    ``use_dora``) and whole copies of the modules named in ``modules_to_save``. Anything else would be
    loaded by PEFT (``strict=False``) straight into the base model: a ``model.norm.weight`` of zeros
    in an adapter file overwrote the base's norm and stayed after ``unload()``.
    """
    if key.endswith(_LORA_SUFFIXES):
        return None
    if key.endswith(".lora_B.bias"):
        return None if cfg.get("lora_bias") else "a LoRA bias, but adapter_config.json has no lora_bias: true"
    if key.endswith(_DORA_SUFFIXES):
        return None if cfg.get("use_dora") else "a DoRA magnitude, but adapter_config.json has no use_dora: true"
    module = key.removeprefix("base_model.model.").rpartition(".")[0]
    saved = cfg.get("modules_to_save") or []
    if isinstance(saved, str):
        saved = [saved]
    if ".lora_" not in key and any(module == m or module.endswith("." + str(m)) for m in saved):
        return None
    return "not a LoRA weight, and its module is not in modules_to_save"


def _check_header(weights: Path, tensors: list[Tensor], cfg: dict[str, Any]) -> None:
    """What the header alone shows: tensors an adapter may not carry, empty tensors, ranks against ``r``."""
    for t in tensors:
        why = unaccounted_tensor(t.key, cfg)
        if why is not None:
            raise SafetyError(
                f"{weights}: tensor {t.key} is {why}; an adapter may not carry base-model weights, refused. "
                "Fix: re-save the adapter with PEFT's save_pretrained, or declare the module in modules_to_save"
            )
    for t in tensors:
        if math.prod(t.shape) == 0:
            raise AdapterFileError(
                f"{weights}: tensor {t.key} has shape {t.shape}; fix: re-save with gathered params "
                "(a ZeRO-3 save without gathering writes empty tensors)"
            )
        if ".lora_A." in t.key and len(t.shape) == 2 and t.shape[0] != cfg["r"] and not cfg.get("rank_pattern"):
            raise AdapterConfigError(f"{weights}: {t.key} has rank {t.shape[0]} but {CONFIG} says r={cfg['r']}")


def check_base_name(info: AdapterInfo, ref: Any) -> str | None:
    """A warning when ``base_model_name_or_path`` names a model other than the base given (PEFT never
    checks it; an adapter for Llama-2-7b on SmolLM2 fails on shapes, a sibling of the base does not)."""
    named = info.base_model_name
    if not named:
        return None
    trained_on = info.record.base_model_id if info.record else None
    if trained_on and trained_on == ref.model_id:
        return None
    from harness.models.base import EMBEDDED_HUB_IDS

    accepted = {str(ref.name), str(ref.path), ref.path.name, *EMBEDDED_HUB_IDS.get(str(ref.name), ())}
    norm = lambda x: str(x).rstrip("/").lower()  # noqa: E731
    if norm(named) in {norm(a) for a in accepted} or Path(str(named)).name.lower() in {Path(a).name.lower() for a in accepted}:
        return None
    return (f"{info.path / CONFIG}: base_model_name_or_path is {named!r}, but the base given is {ref.name!r}; "
            "check that this adapter was trained on this base")


def check_base_identity(info: AdapterInfo, base_model_id: str, base_name: str, allow_mismatch: bool = False) -> str | None:
    """Refuse an adapter the harness trained on another base model (same shapes, other weights).

    Shapes alone cannot tell a fine-tuned sibling of the base from the base itself: an adapter on the
    wrong one loads without error and gives quietly worse numbers. ``harness.json`` records the exact
    base (a hash of its weights), so the check is exact for our adapters; adapters from elsewhere
    carry no such record and are checked by shape only. Returns a warning when ``allow_mismatch``.
    """
    base = info.record.base_model if info.record else None
    trained_on = base.model_id if base else None
    if not base or not trained_on or trained_on == base_model_id:
        return None
    trained_name = base.name
    message = (
        f"{info.path}: trained on base {trained_name!r} (weights {trained_on[:12]}), but the base given is "
        f"{base_name!r} (weights {base_model_id[:12]}); pass --base {trained_name} or, if this is intended, "
        "--allow-base-mismatch"
    )
    if not allow_mismatch:
        raise IncompatibleError(message)
    return message


def check_against_base(info: AdapterInfo, model: PreTrainedModel) -> None:
    """Check every LoRA tensor's shape against the base module it attaches to.

    Raises:
        IncompatibleError: a target module is absent or a shape does not fit.
    """
    shapes = {name: (m.out_features, m.in_features) for name, m in model.named_modules() if hasattr(m, "in_features")}
    _check_shapes(info.path, info.config, read_header(info.path / WEIGHTS), shapes, linear_module_names(model))


def check_against_base_files(info: AdapterInfo, ref: Any) -> None:
    """``check_fits_base`` for an adapter already inspected."""
    check_fits_base(info.path, info.config, read_header(info.path / WEIGHTS), ref)


def check_fits_base(path: Path, cfg: dict[str, Any], tensors: list[Tensor], ref: Any) -> None:
    """Everything about the adapter against a base model's files (a ``BaseModelRef``), with no weights
    loaded and before PEFT sees either: ``target_modules`` (names, a regex that compiles and matches),
    every LoRA shape against the base's layer (from its safetensors headers), every ``modules_to_save``
    present in the file and in the base, and the file's LoRA modules exactly the ones the config targets
    in this base (a partial adapter would load with layers left at their no-op init).

    Raises:
        IncompatibleError: the adapter does not fit this base (exit 3).
    """
    from harness.models.base import linear_shapes, module_names

    names = module_names(ref)
    shapes = linear_shapes(ref)
    linear = sorted({n.split(".")[-1] for n in shapes})
    check_target_modules_names(cfg.get("target_modules"), names, str(path / CONFIG), linear)
    _check_shapes(path, cfg, tensors, shapes, linear)
    _check_coverage(path, cfg, tensors, names, shapes)


def _lora_parts(tensors: list[Tensor]) -> tuple[dict[str, set[str]], set[str]]:
    """{module: LoRA parts in the file (A, B, embedding_A, ...)} and the modules saved whole (modules_to_save)."""
    lora: dict[str, set[str]] = {}
    whole: set[str] = set()
    for t in tensors:
        key = t.key.removeprefix("base_model.model.")
        if ".lora_" in key:
            module, _, part = key.partition(".lora_")
            lora.setdefault(module, set()).add(part.split(".")[0])
        else:
            whole.add(key.rpartition(".")[0])
    return lora, whole


def _targeted(target_modules: Any, name: str) -> bool:
    """PEFT's rule: a string is a regex over the full module name, a list names module suffixes."""
    import re

    if isinstance(target_modules, str):
        return re.fullmatch(target_modules, name) is not None
    return any(name == t or name.endswith("." + str(t)) for t in target_modules)


#: config keys that narrow or redirect which modules get LoRA layers: with any of them set, the file's
#: modules are compared with the config at load time (PEFT's own matching), not here
_TARGETING_KEYS = ("layers_to_transform", "layers_pattern", "exclude_modules", "target_parameters")


def _check_coverage(path: Path, cfg: dict[str, Any], tensors: list[Tensor], names: list[str],
                    shapes: dict[str, tuple[int, int]]) -> None:
    weights = path / WEIGHTS
    lora, whole = _lora_parts(tensors)
    for module, parts in sorted(lora.items()):
        for a, b in (("A", "B"), ("embedding_A", "embedding_B")):
            if (a in parts) != (b in parts):
                raise IncompatibleError(
                    f"{weights}: module {module} holds lora_{a if a in parts else b} without lora_{b if a in parts else a} "
                    "(a partial save); fix: re-save the adapter with PEFT's save_pretrained"
                )
    saved = cfg.get("modules_to_save") or []
    for m in [saved] if isinstance(saved, str) else saved:
        if not any(n == m or n.endswith("." + str(m)) for n in names):
            raise IncompatibleError(f"{path / CONFIG}: modules_to_save names {m!r}, which this base does not have")
        if not any(w == m or w.endswith("." + str(m)) for w in whole):
            raise IncompatibleError(
                f"{path / CONFIG}: modules_to_save names {m!r} but {weights} holds no weights for it (a partial "
                "save, or a config edited after training); fix: re-save the adapter, or remove it from modules_to_save"
            )
    targets = cfg.get("target_modules")
    if targets in (None, "all-linear") or any(cfg.get(k) for k in _TARGETING_KEYS) or not lora:
        return
    expected = {n for n in shapes if _targeted(targets, n)}
    missing, extra = sorted(expected - set(lora)), sorted(set(lora) - expected)
    if missing or extra:
        example = f"no LoRA weights for {missing[0]}" if missing else f"LoRA weights for {extra[0]}, which target_modules does not name"
        raise IncompatibleError(
            f"{weights}: partial adapter: target_modules selects {len(expected)} module(s) of this base, the file holds "
            f"LoRA weights for {len(lora)} ({len(missing)} missing, {len(extra)} not targeted; e.g. {example}); "
            f"the adapter was trained for a different base ({cfg.get('base_model_name_or_path')!r}) or saved partially"
        )


def _check_shapes(path: Path, cfg: dict[str, Any], tensors: list[Tensor], shapes: dict[str, tuple[int, int]],
                  linear: list[str]) -> None:
    named = cfg.get("base_model_name_or_path")
    for t in tensors:
        if ".lora_A." not in t.key and ".lora_B." not in t.key:
            continue
        # PEFT saves keys as base_model.model.<module path>.lora_A.weight
        target = t.key.split(".lora_")[0].removeprefix("base_model.model.")
        if target not in shapes:
            raise IncompatibleError(
                f"{path}: adapter tensor {t.key} targets module {target!r}, which the base model does not "
                f"have (adapter trained for {named!r}); linear modules in this base: {', '.join(linear)}"
            )
        out_features, in_features = shapes[target]
        if ".lora_A." in t.key:
            want = [t.shape[0], in_features]
        elif t.key.endswith(".lora_B.bias"):
            want = [out_features]
        else:
            want = [out_features, t.shape[1] if len(t.shape) > 1 else 0]
        if t.shape != want:
            raise IncompatibleError(
                f"{path}: {t.key} has shape {t.shape} but the base's {target} needs {want}; the adapter was "
                f"trained for a different base ({named!r})"
            )


def load_adapter(model: PreTrainedModel, info: AdapterInfo, trainable: bool = False,
                 adapter_name: str = ADAPTER_NAME) -> PeftModel:
    """Attach a checked adapter to ``model``, reading the safetensors file ourselves.

    ``PeftModel.from_pretrained`` would resolve the path on its own (falling back to a pickle or the
    Hub); here the weights come only from the file the pre-flight checked, and a partial load (keys
    missing or unexpected) is refused instead of silently leaving layers at their no-op init.
    """
    from peft import LoraConfig, NoMatchingPeftModuleError, PeftModel

    check_against_base(info, model)
    check_target_modules(info.config.get("target_modules"), model, str(info.path / CONFIG))
    config = LoraConfig.from_pretrained(str(info.path))
    config.inference_mode = not trainable
    try:
        peft_model = PeftModel(model, config, adapter_name=adapter_name)
    except (NoMatchingPeftModuleError, ValueError) as exc:
        _strip_lora(model)  # PEFT may have injected layers before it raised
        raise IncompatibleError(f"{info.path}: the adapter's config does not fit this base: {str(exc).splitlines()[0]}") from None
    except BaseException:
        _strip_lora(model)
        raise
    try:
        _load_state(peft_model, info, adapter_name)
    except BaseException:
        # whatever refused the weights (a partial load, a shape PEFT could not copy), the base leaves here as
        # it came: no LoRA layer stays injected in the caller's model
        detach_adapter(peft_model)
        raise
    if trainable:
        n = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
        if n == 0:
            raise IncompatibleError(f"{info.path}: loaded as trainable but no parameter requires grad")
    else:
        peft_model.eval()
    return peft_model


def _load_state(peft_model: PeftModel, info: AdapterInfo, adapter_name: str) -> None:
    """Load the checked safetensors file into ``adapter_name``; refuse a partial load."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    state = load_file(str(info.path / WEIGHTS), device=str(next(peft_model.parameters()).device))
    # peft annotates the return as `namedtuple`; it is torch's _IncompatibleKeys (missing/unexpected keys)
    try:
        result: Any = set_peft_model_state_dict(peft_model, state, adapter_name=adapter_name)
    except (KeyError, RuntimeError, ValueError) as exc:  # a key PEFT expected and the file lacks, a shape it cannot copy
        raise IncompatibleError(f"{info.path}: PEFT could not load the adapter's weights into this base "
                                f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); the adapter "
                                "does not fit this base or was saved partially") from None
    missing = [k for k in result.missing_keys if ".lora_" in k and f".{adapter_name}." in k]
    unexpected = list(result.unexpected_keys)
    if missing or unexpected:
        raise IncompatibleError(
            f"{info.path}: partial load ({len(missing)} missing, {len(unexpected)} unexpected keys, e.g. "
            f"{(missing + unexpected)[0]}); the adapter was trained for a different base "
            f"({info.base_model_name!r}) or with other target_modules"
        )


def add_adapter(peft_model: PeftModel, info: AdapterInfo, adapter_name: str) -> None:
    """Load one more checked adapter into ``peft_model`` under ``adapter_name`` (for mixed batches)."""
    from peft import LoraConfig

    base = cast("PreTrainedModel", peft_model.base_model.model)  # torch types it as Module.__getattr__'s Tensor | Module
    check_against_base(info, base)
    check_target_modules(info.config.get("target_modules"), base, str(info.path / CONFIG))
    config = LoraConfig.from_pretrained(str(info.path))
    config.inference_mode = True
    try:
        peft_model.add_adapter(adapter_name, config)
    except ValueError as exc:
        raise IncompatibleError(f"{info.path}: the adapter's config does not fit this base: {str(exc).splitlines()[0]}") from None
    _load_state(peft_model, info, adapter_name)
    peft_model.eval()


def linear_module_names(model: PreTrainedModel) -> list[str]:
    """The short names (q_proj, down_proj, ...) of the base's linear and embedding modules."""
    return sorted({n.split(".")[-1] for n, m in model.named_modules() if n and hasattr(m, "in_features")})


def check_target_modules(target_modules: Any, model: PreTrainedModel, where: str) -> None:
    """Refuse ``target_modules`` naming modules the base lacks, before PEFT raises NoMatchingPeftModuleError."""
    check_target_modules_names(target_modules, [n for n, _ in model.named_modules() if n], where,
                               linear_module_names(model))


def check_target_modules_names(target_modules: Any, names: list[str], where: str,
                               linear: list[str] | None = None) -> None:
    """The same check against a list of module paths (read from a base's safetensors headers).

    A string is a regex over full module names (PEFT's rule); a list names module suffixes.
    """
    import re

    if linear is None:  # from weight names: modules holding a 2-D weight are the projections
        linear = sorted({n.split(".")[-1] for n in names if n.split(".")[-1].endswith(("proj", "fc", "fc1", "fc2", "dense", "lm_head", "c_attn", "c_proj", "c_fc", "query_key_value"))})
    if target_modules in (None, "all-linear"):
        return
    if isinstance(target_modules, str):
        try:
            pattern = re.compile(target_modules)
        except re.error as exc:
            raise IncompatibleError(f"{where}: target_modules {target_modules!r} is not a valid regex ({exc})") from None
        if not any(pattern.fullmatch(n) for n in names):
            raise IncompatibleError(
                f"{where}: target_modules regex {target_modules!r} matches no module of this base; linear modules: "
                f"{', '.join(linear)}"
            )
        return
    missing = [t for t in target_modules if not any(n == t or n.endswith("." + str(t)) for n in names)]
    if missing:
        raise IncompatibleError(
            f"{where}: target_modules {', '.join(map(str, missing))} not found in this base (another architecture?); "
            f"linear modules in this base: {', '.join(linear)}"
        )


def _strip_lora(model: Any) -> None:
    """Put back the base layers of any LoRA layer PEFT injected into ``model`` before failing."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name, module in list(model.named_modules()):
        if isinstance(module, BaseTunerLayer) and hasattr(module, "base_layer"):
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, module.get_base_layer())


def detach_adapter(peft_model: PeftModel) -> PreTrainedModel:
    """Remove the adapter and hand back the base modules as they were before it was attached.

    ``unload()`` alone is not enough: for a ``modules_to_save`` module it keeps the adapter's trained
    copy in place of the base's own module, so the next base-model generation would silently run
    with the adapter's lm_head. The originals are put back first.
    """
    from peft.utils.other import AuxiliaryTrainingWrapper

    inner = cast("PreTrainedModel", peft_model.base_model.model)  # torch types it as Module.__getattr__'s Tensor | Module
    for name, module in list(inner.named_modules()):
        if isinstance(module, AuxiliaryTrainingWrapper):
            parent_name, _, child = name.rpartition(".")
            parent = inner.get_submodule(parent_name) if parent_name else inner
            setattr(parent, child, module.original_module)
    return peft_model.unload()


def set_scale(model: PeftModel, scale: float, adapter: str = ADAPTER_NAME) -> None:
    """Multiply the adapter's update by ``scale`` (1.0 = as trained; alpha/r or alpha/sqrt(r) times it)."""
    from peft.tuners.lora import LoraLayer

    for module in model.modules():
        if isinstance(module, LoraLayer):
            module.set_scale(adapter, scale)
