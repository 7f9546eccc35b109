"""The chat template an adapter was saved with (TRL's ``setup_chat_format``, Unsloth's ``get_chat_template``), when
it differs from its base's, and a warning for a tokenizer of its own."""

from __future__ import annotations

import json
from pathlib import Path

#: the largest chat template read from an adapter directory (real ones are a few KB)
MAX_TEMPLATE_BYTES = 256 * 1024


def read_template(directory: Path) -> str | None:
    """A directory's chat template: ``chat_template.jinja``, else ``tokenizer_config.json``'s ``chat_template``."""
    jinja, config = directory / "chat_template.jinja", directory / "tokenizer_config.json"
    try:
        if jinja.is_file():
            return jinja.read_text(encoding="utf-8") if jinja.stat().st_size <= MAX_TEMPLATE_BYTES else None
        if config.is_file() and config.stat().st_size <= 16 * MAX_TEMPLATE_BYTES:
            value = json.loads(config.read_text(encoding="utf-8")).get("chat_template")
            return value if isinstance(value, str) else None
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        return None
    return None


def own_chat_template(path: Path, base_dir: Path | None = None) -> tuple[str | None, list[str]]:
    """The chat template saved beside the adapter (``chat_template.jinja``, else ``tokenizer_config.json``'s
    ``chat_template``) when it differs from the base's (``base_dir``), and a warning when the adapter carries a
    tokenizer other than the base's: other tokens need other embeddings, which a LoRA adapter does not bring,
    so the base's tokenizer is used. TRL saves the base's own files beside every adapter: those say nothing."""
    warnings: list[str] = []
    template: str | None = None
    jinja, config = path / "chat_template.jinja", path / "tokenizer_config.json"
    if base_dir is not None:
        ours, theirs = path / "tokenizer.json", base_dir / "tokenizer.json"
        if ours.is_file() and theirs.is_file() and ours.read_bytes() != theirs.read_bytes():
            warnings.append(f"{ours} differs from the base's tokenizer; the harness evaluates with the base's "
                            "(a LoRA adapter brings no embeddings for added tokens)")
    try:
        if jinja.is_file() and jinja.stat().st_size <= MAX_TEMPLATE_BYTES:
            template = jinja.read_text(encoding="utf-8")
        elif config.is_file() and config.stat().st_size <= 16 * MAX_TEMPLATE_BYTES:
            value = json.loads(config.read_text(encoding="utf-8")).get("chat_template")
            template = value if isinstance(value, str) else None
        elif jinja.is_file():
            warnings.append(f"{jinja} is larger than {MAX_TEMPLATE_BYTES} bytes and was not used; the base's chat "
                            "template is used for this adapter")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError) as exc:
        warnings.append(f"{path}: its chat template could not be read ({type(exc).__name__}); the base's is used")
        template = None
    if not template or not template.strip() or (base_dir is not None and template == read_template(base_dir)):
        return None, warnings
    return template, warnings
