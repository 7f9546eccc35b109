"""Offline evaluate metrics: ``load_metric("rouge" | "bleu" | "chrf")``.

``evaluate.load("rouge")`` fetches the script from the Hugging Face Hub, which the harness does not
reach. These modules ship inside the package (``harness/scorers/evaluate_modules/<name>/<name>.py``)
and are loaded by local path, so they work offline. Their settings match
``harness.scorers.text`` (see that module's docstring): the numbers are the same.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

MODULES_DIR = Path(__file__).resolve().parent / "evaluate_modules"
LOCAL_METRICS: tuple[str, ...] = ("bleu", "chrf", "rouge")
_ALIASES = {"sacrebleu": "bleu", "chrF": "chrf"}


def metric_path(name: str) -> Path:
    """The script of the local evaluate module ``name``."""
    name = _ALIASES.get(name, name)
    if name not in LOCAL_METRICS:
        raise ValueError(f"no local evaluate module {name!r}; available: {', '.join(LOCAL_METRICS)}")
    path = MODULES_DIR / name / f"{name}.py"
    if not path.is_file():
        raise FileNotFoundError(f"local evaluate module missing from the installation: {path}")
    return path


def load_metric(name: str, **kwargs: Any) -> Any:
    """``evaluate.load`` of the bundled module ``name`` by its local path (no network).

    Extra keyword arguments go to ``evaluate.load`` (e.g. ``experiment_id``).
    Returns an ``evaluate.EvaluationModule``.
    """
    import evaluate

    return evaluate.load(str(metric_path(name)), **kwargs)
