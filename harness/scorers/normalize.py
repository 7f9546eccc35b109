"""Answer normalisation shared by the match scorers (SQuAD-style, plus unicode folding)."""

from __future__ import annotations

import re
import string
import unicodedata

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans({c: " " for c in string.punctuation + "“”‘’«»…–—°"})


_DOTTED = re.compile(r"\b(?:[a-z]\.){2,}")


def normalize_answer(text: str) -> str:
    """Lower-case, strip accents, punctuation and articles, collapse whitespace.

    Thousands separators in numbers are dropped first so that "1,000" and "1000" agree; invisible format
    characters (a zero-width space inside a word) are removed, not turned into a break; dotted
    abbreviations fold ("U.S." is "us", as "US" is).
    """
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not unicodedata.combining(c) and unicodedata.category(c) != "Cf")
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text.lower())
    text = _DOTTED.sub(lambda m: m.group(0).replace(".", ""), text)
    text = text.translate(_PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())
