"""Model and data text made visible: the one rule every rendering (HTML, charts) shows untrusted text by."""

from __future__ import annotations

import re

_INVISIBLE = re.compile("[\u202a-\u202e\u2066-\u2069\u200b-\u200f\u061c\u2060\ufeff"
                        "\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def shown(text: object) -> str:
    """``text`` with every bidirectional, zero-width and control character replaced by a visible mark."""
    if text is None:
        return ""
    # a lone surrogate cannot be written as UTF-8: shown as U+FFFD, as a decoder would show it
    text = str(text).encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    return _INVISIBLE.sub(lambda m: f"<U+{ord(m.group()):04X}>", str(text))
