"""Display labels for adapters: unique within what is shown, never used as a key.

Adapter directories are very often called ``final``, ``adapter`` or ``checkpoint-500``; two of them in
one table must not merge into one column. Identity is always the adapter id; the label is the
user's ``--name`` when given, else the shortest trailing part of the path that tells the adapters
apart (``a/adapter``, ``b/adapter``), else the name with a short id.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import PurePath


def unique_labels(adapters: Mapping[str, tuple[str | None, str | None]],
                  names: Mapping[str, str] | None = None) -> dict[str, str]:
    """Labels for ``adapters`` (adapter id -> (stored name, path)), distinct from each other and from "base".

    Args:
        adapters: every adapter to label.
        names: labels the user chose (adapter id -> name); kept as given when they are unique.
    """
    names = dict(names or {})
    out: dict[str, str] = {}
    for aid, (name, path) in adapters.items():
        out[aid] = names.get(aid) or name or (PurePath(path).name if path else None) or aid[:12]
    for _ in range(8):  # each pass lengthens the colliding labels by one path part
        clashes = _clashes(out)
        if not clashes:
            return out
        for aid in clashes:
            if aid in names and list(out.values()).count(out[aid]) == 1:
                continue
            path = adapters[aid][1]
            same = [b for b in clashes if out[b].lower() == out[aid].lower()]
            if len(same) > 1 and len({adapters[b][1] for b in same}) == 1:
                continue  # one path, several adapters (retrained in place): only the id tells them apart
            parts = PurePath(path).parts if path else ()
            depth = len(PurePath(out[aid]).parts) + 1
            if path and depth <= len(parts) and not out[aid].endswith("#" + aid[:6]):
                out[aid] = "/".join(parts[-depth:]).lstrip("/") or out[aid]
    for aid in _clashes(out):  # same path (retrained in place) or nothing left to add: the id says it
        out[aid] = f"{out[aid]}#{aid[:6]}"
    return out


def _clashes(labels: Mapping[str, str]) -> list[str]:
    seen: dict[str, list[str]] = {}
    for aid, label in labels.items():
        seen.setdefault(label.lower(), []).append(aid)
    return [aid for label, ids in seen.items() for aid in ids if len(ids) > 1 or label == "base"]
