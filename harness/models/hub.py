"""Hub ids for a base model or an adapter: resolved from the local Hugging Face cache, only when asked.

The harness never reaches the network on its own (``harness._offline``). With ``HARNESS_ALLOW_HUB=1`` a name
such as ``HuggingFaceTB/SmolLM2-135M-Instruct`` resolves to its snapshot in the local cache
(``local_files_only``), and is downloaded only when the user's environment allows it (``HF_HUB_OFFLINE`` not
set) and only its safetensors, JSON, tokenizer and template files: never pickle weights or code.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from harness.errors import UsageError

#: what a snapshot download may fetch: weights as safetensors, configs, tokenizers, templates (no .bin, no .py)
ALLOW_PATTERNS = ["*.safetensors", "*.json", "*.model", "*.jinja", "*.txt", "*.md"]
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def hub_id_syntax(name: str) -> bool:
    """Whether ``name`` is written as a hub id (``org/name``), whatever exists on disk."""
    return bool(_HUB_ID.match(name))


def looks_like_hub_id(name: str) -> bool:
    """``org/name`` with no local directory of that name."""
    return bool(_HUB_ID.match(name)) and not Path(name).expanduser().exists()


def hub_snapshot(repo_id: str, what: str) -> Path:
    """The local snapshot directory of ``repo_id`` (``what``: "base model" or "adapter").

    Raises:
        UsageError: hub access was not asked for (the message says how), or the id is not in the cache and the
            environment forbids downloading.
    """
    if os.environ.get("HARNESS_ALLOW_HUB") != "1":
        raise UsageError(
            f"{repo_id!r} looks like a Hugging Face hub id ({what}), and no such local directory exists (cwd "
            f"{Path.cwd()}). The harness does not reach the Hub unless asked: set HARNESS_ALLOW_HUB=1 to resolve it "
            "from the local Hugging Face cache (downloading it only where your environment allows), or download it "
            "once (huggingface-cli download) and pass its local directory"
        )
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, local_files_only=True, allow_patterns=ALLOW_PATTERNS))
    except LocalEntryNotFoundError:
        pass
    if os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0"):
        raise UsageError(f"{what} {repo_id!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set: "
                         "download it once where the network is allowed (huggingface-cli download), or unset "
                         "HF_HUB_OFFLINE")
    return Path(snapshot_download(repo_id, allow_patterns=ALLOW_PATTERNS))
