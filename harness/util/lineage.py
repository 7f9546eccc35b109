"""Adapter lineage for people: parents listed before their children, and the chain of parents.

A continued fine-tune names its parent adapter (``harness.json``'s ``parent_adapter``, the
``adapters.parent_adapter_id`` column). Wherever adapters are listed, a parent comes before its
children, so a table reads in the order the adapters were made.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import TypeVar

K = TypeVar("K", bound=Hashable)


def parents_first(ids: Sequence[K], parent_of: Mapping[K, K | None]) -> list[K]:
    """``ids`` reordered so that every id comes after its ancestors among ``ids``; otherwise as given.

    Each id is placed as late as its given position, but its ancestors in ``ids`` are placed just
    before it when they come later in the given order. A cycle (a damaged record) is broken, never
    looped on.
    """
    wanted = set(ids)
    out: list[K] = []
    placed: set[K] = set()

    def place(i: K, seen: frozenset[K]) -> None:
        if i in placed or i in seen:
            return
        parent = parent_of.get(i)
        if parent is not None and parent in wanted:
            place(parent, seen | {i})
        placed.add(i)
        out.append(i)

    for i in ids:
        place(i, frozenset())
    return out


def chain(adapter_id: str, parent_of: Mapping[str, str | None], limit: int = 32) -> list[str]:
    """``adapter_id``, its parent, the parent's parent, ... as far as ``parent_of`` knows (at most ``limit``)."""
    out: list[str] = []
    cur: str | None = adapter_id
    while cur and cur not in out and len(out) < limit:
        out.append(cur)
        cur = parent_of.get(cur)
    return out
