"""Answer normalisation shared by the match scorers (SQuAD-style, plus unicode folding)."""

from __future__ import annotations

import re
import string
import unicodedata

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans({c: " " for c in string.punctuation + "“”‘’«»…–—"})


def normalize_answer(text: str) -> str:
    """Lower-case, strip accents, punctuation and articles, collapse whitespace.

    Thousands separators in numbers are dropped first so that "1,000" and "1000" agree.
    """
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not unicodedata.combining(c))
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text.lower())
    text = text.translate(_PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())
