"""Hyperparameter grids: ``r=8,16 lora_alpha=16,32`` becomes one spec override per point, each with
a readable directory name (``<name>-r8-alpha16``)."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from harness.errors import UsageError
from harness.train.spec import coerce_value

# short names in directory names; other fields keep their own name
_SHORT = {"lora_alpha": "alpha", "learning_rate": "lr", "lora_dropout": "dropout", "num_train_epochs": "ep"}


@dataclass(frozen=True)
class GridPoint:
    suffix: str
    overrides: Mapping[str, Any]


def parse_grid(items: Sequence[str]) -> dict[str, list[Any]]:
    """``["r=8,16", "lora_alpha=16,32"]`` -> ``{"r": [8, 16], "lora_alpha": [16, 32]}`` (values typed)."""
    grid: dict[str, list[Any]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip()
        if not sep or not key or not values.strip():
            raise UsageError(f"--grid {item!r}: use FIELD=V1,V2,... (e.g. r=8,16 lora_alpha=16,32)")
        if key in grid:
            raise UsageError(f"--grid names {key} twice; give all its values in one FIELD=V1,V2")
        grid[key] = [coerce_value(key, v.strip(), "--grid") for v in values.split(",") if v.strip()]
    return grid


def expand(grid: Mapping[str, Sequence[Any]]) -> list[GridPoint]:
    """Every combination of the grid's values, in the order given."""
    keys = list(grid)
    points = []
    for combo in itertools.product(*(grid[k] for k in keys)):
        suffix = "-".join(f"{_SHORT.get(k, k)}{_fmt(v)}" for k, v in zip(keys, combo))
        points.append(GridPoint(suffix, dict(zip(keys, combo))))
    return points


def _fmt(v: Any) -> str:
    text = f"{v:g}" if isinstance(v, float) else str(v)
    return "".join(c if c.isalnum() or c in ".-_" else "_" for c in text)
