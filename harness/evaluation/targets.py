"""What an evaluation runs: the base model (scale 0) and each adapter at each scale."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from harness.models.adapters import AdapterInfo


@dataclass(frozen=True)
class Target:
    """What to evaluate: the base model (adapter None, scale 0) or an adapter at a scale."""

    adapter: AdapterInfo | None
    scale: float

    @property
    def label(self) -> str:
        """For progress lines only; stored rows and tables key on the adapter id."""
        return "base" if self.adapter is None else f"{self.adapter.path.name}[{self.adapter.adapter_id[:8]}]@{self.scale:g}"


def expand_targets(adapters: Sequence[AdapterInfo], scales: Sequence[float], include_base: bool = True) -> list[Target]:
    """Base first (scale 0 is the base model whatever the adapter), then every adapter × non-zero scale."""
    targets = [Target(None, 0.0)] if include_base or 0.0 in scales else []
    for a in adapters:
        targets.extend(Target(a, float(s)) for s in scales if float(s) != 0.0)
    return targets
