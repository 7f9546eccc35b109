"""What both generation paths share: the settings, one result row, and how a row of new tokens becomes a
result (the same cut at an end token or stop string, token counts and truncation rule on either path).

``generate`` (the reference path and the path choice) and ``fastdecode`` (the fast loop) both import this
file; neither imports the other's internals.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


@dataclass(frozen=True)
class GenerationSettings:
    """How to generate. Greedy by default so results are reproducible and cacheable."""

    max_new_tokens: int = 64
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()

    def to_json(self) -> str:
        """Canonical JSON: part of the cache key."""
        return json.dumps(asdict(self), sort_keys=True)


@dataclass(frozen=True)
class Generation:
    """One output: text (cut at the first stop string) or an error, with token counts."""

    text: str | None
    n_prompt_tokens: int
    n_new_tokens: int
    seconds: float
    error: str | None = None
    #: cut by max_new_tokens before an end token or a stop string: the answer may be incomplete
    truncated: bool = False


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """Cut ``text`` at the earliest stop string (generation may overshoot by a token)."""
    cut = len(text)
    for s in stop:
        i = text.find(s)
        if i >= 0:
            cut = min(cut, i)
    return text[:cut]


def core_model(model: Any) -> Any:
    """The transformers model under a PEFT wrapper (or the model itself)."""
    get = getattr(model, "get_base_model", None)
    return get() if callable(get) else model


def end_ids(model: Any, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    eos = [t for t in {tokenizer.eos_token_id, getattr(model.generation_config, "eos_token_id", None)} if t is not None]
    ids: list[int] = []
    for t in eos:
        ids.extend(t if isinstance(t, list) else [t])
    return sorted(set(ids))


def finish_row(tokenizer: PreTrainedTokenizerBase, row: Sequence[int], ends: set[int], n_prompt: int,
            settings: GenerationSettings, seconds: float) -> Generation:
    """One result from a row of new tokens (both paths: the same cut, counts and truncation rule)."""
    n_new = len(row)
    ended = False
    for j, tok in enumerate(row):
        if tok in ends:
            n_new, ended = j, True
            break
    text = str(tokenizer.decode(list(row[:n_new]), skip_special_tokens=True))
    cut = cut_at_stop(text, settings.stop)
    truncated = not ended and len(cut) == len(text) and n_new >= settings.max_new_tokens
    return Generation(cut, n_prompt, n_new, seconds, truncated=truncated)


def error_row(n_prompt: int, exc: BaseException) -> Generation:
    return Generation(None, n_prompt, 0, 0.0, f"{type(exc).__name__}: {exc}")


#: what a failing forward raises for one bad row (an adapter name PEFT does not know, an index past a table)
ROW_ERRORS = (RuntimeError, ValueError, IndexError)
