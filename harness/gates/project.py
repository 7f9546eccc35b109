"""The project file: gates (and the suites and base they apply to) for a whole repository.

Read from ``harness.toml`` (top level) or from ``[tool.harness]`` in ``pyproject.toml``::

    base = "smollm2-135m"                                   # optional: the base model
    suites = ["order-task", "general-knowledge", "format-leakage"]   # names or paths (relative to the file)

    [gates]                      # [tool.harness.gates] in pyproject.toml
    min_retention = 0.95         # of the base's correct general answers, the share kept
    max_leakage = 0.02           # share of general/leakage answers in the task's format
    max_drift = 0.05             # mean KL(base || adapter) per token on the base's own general answers (nats)
    min_task_gain = 0.3          # task headline, adapter minus base
    max_regression = 0.02        # against --baseline: allowed drop of every suite's headline (paired, Holm)
    max_errors = 0               # completeness: errored results allowed
    alpha = 0.05                 # every bound is one-sided at 1 - alpha (95%)
    training_health = true       # no error-severity anomaly in the adapter's training record
    adapter_id = "..."           # provenance: the adapter hash being released (optional)
    decision = "bound"           # "bound" (default): the one-sided 95% bound must clear each threshold;
                                 # "point": the point estimate alone (exploratory runs; printed on every gate)
    skip = ["leakage"]           # opt out of release defaults (retention, leakage, task): printed and stored

    [[gates.threshold]]          # absolute bounds, by suite role (never by suite name)
    role = "task"
    metric = "json_exact"        # default: each suite's headline
    min = 0.8

All problems are reported together, each naming the file and key.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # tomllib joined the standard library in 3.11; tomli is the same parser (a 3.10 dependency)
    import tomli as tomllib

from harness.errors import InputError
from harness.gates.decide import RULES
from harness.gates.spec import RELEASE_DEFAULTS, ProjectGates, RoleThreshold
from harness.suites.types import ROLES

PROJECT_FILES = ("harness.toml", "pyproject.toml")
_TOP = {"base", "suites", "gates"}
_FLOATS = ("min_retention", "max_leakage", "min_task_gain", "max_regression", "alpha", "max_drift")
_GATE_KEYS = {*_FLOATS, "max_errors", "training_health", "adapter_id", "threshold", "decision", "skip"}


@dataclass(frozen=True)
class ProjectConfig:
    """A parsed project file: its gates, and (optionally) the suites and base model they apply to."""

    path: Path
    gates: ProjectGates
    suites: tuple[str, ...] = ()
    base: str | None = None


def find_project_file(directory: Path) -> Path | None:
    """``harness.toml`` in ``directory``, else its ``pyproject.toml`` when that has a ``[tool.harness]``
    table; None when neither (no walking up: the file that applies is the one beside you)."""
    h = directory / "harness.toml"
    if h.is_file():
        return h
    p = directory / "pyproject.toml"
    if p.is_file():
        try:
            data = tomllib.loads(p.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError):
            return None  # not ours to judge: a broken pyproject is the build tool's error
        if isinstance(data.get("tool"), dict) and "harness" in data["tool"]:
            return p
    return None


def load_project(path: Path) -> ProjectConfig:
    """Parse a project file (``harness.toml``, a ``gates.toml``, or a ``pyproject.toml`` with ``[tool.harness]``)."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"no gates file {path} (cwd {Path.cwd()}); pass an existing harness.toml") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not valid TOML: {exc}") from None
    prefix = ""
    if path.name == "pyproject.toml":
        data = (data.get("tool") or {}).get("harness")
        prefix = "tool.harness."
        if not isinstance(data, dict):
            raise InputError(f"{path}: no [tool.harness] table; add one, or put the gates in harness.toml")
    errors: list[str] = []

    def err(key: str, msg: str) -> None:
        errors.append(f"{path}: {prefix}{key}: {msg}")

    for k in sorted(set(data) - _TOP):
        err(k, f"unknown key; allowed: {', '.join(sorted(_TOP))}")
    suites = data.get("suites", [])
    if not isinstance(suites, list) or not all(isinstance(s, str) for s in suites):
        err("suites", "must be a list of suite names or paths")
        suites = []
    resolved = tuple(_resolve_suite(path.parent, s) for s in suites)
    base = data.get("base")
    if base is not None and not isinstance(base, str):
        err("base", "must be a model name or a directory")
        base = None
    g = data.get("gates", {})
    if not isinstance(g, dict):
        err("gates", "must be a table")
        g = {}
    for k in sorted(set(g) - _GATE_KEYS):
        err(f"gates.{k}", f"unknown gate; allowed: {', '.join(sorted(_GATE_KEYS))}")
    values: dict[str, Any] = {}
    for k in _FLOATS:
        if k in g:
            v = g[k]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                err(f"gates.{k}", f"must be a finite number, not {v!r}")
            else:
                values[k] = float(v)
    if "alpha" in values and not 0 < values["alpha"] < 1:
        err("gates.alpha", f"must be between 0 and 1, not {values['alpha']}")
    if "max_errors" in g:
        if isinstance(g["max_errors"], bool) or not isinstance(g["max_errors"], int) or g["max_errors"] < 0:
            err("gates.max_errors", f"must be a whole number >= 0, not {g['max_errors']!r}")
        else:
            values["max_errors"] = g["max_errors"]
    if "training_health" in g:
        if not isinstance(g["training_health"], bool):
            err("gates.training_health", "must be true or false")
        else:
            values["training_health"] = g["training_health"]
    if "adapter_id" in g:
        if not isinstance(g["adapter_id"], str) or len(g["adapter_id"]) != 64:
            err("gates.adapter_id", "must be the adapter's 64-character SHA-256 (`harness runs` shows it)")
        else:
            values["adapter_id"] = g["adapter_id"]
    if "decision" in g:
        if g["decision"] not in RULES:
            err("gates.decision", f"must be one of {', '.join(repr(r) for r in RULES)}, not {g['decision']!r}")
        else:
            values["decision"] = g["decision"]
    if "skip" in g:
        skip = g["skip"]
        if not isinstance(skip, list) or not all(isinstance(x, str) and x in RELEASE_DEFAULTS for x in skip):
            err("gates.skip", f"must be a list of release defaults to opt out of, from {', '.join(RELEASE_DEFAULTS)}; "
                              f"got {skip!r}")
        else:
            values["skip"] = tuple(skip)
    thresholds = []
    for i, t in enumerate(g.get("threshold", []) if isinstance(g.get("threshold", []), list) else [None]):
        where = f"gates.threshold[{i}]"
        if not isinstance(t, dict):
            err(where, "must be a table with role, metric (optional), min and/or max")
            continue
        for k in sorted(set(t) - {"role", "metric", "min", "max"}):
            err(f"{where}.{k}", "unknown key; allowed: role, metric, min, max")
        if t.get("role") not in ROLES:
            err(f"{where}.role", f"must be one of {', '.join(ROLES)}, not {t.get('role')!r}")
            continue
        bounds = {k: t.get(k) for k in ("min", "max")}
        if all(v is None for v in bounds.values()):
            err(where, "needs min or max")
            continue
        if any(v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v))
               for v in bounds.values()):
            err(where, f"min and max must be finite numbers, got {bounds}")
            continue
        metric = t.get("metric")
        if metric is not None and not isinstance(metric, str):
            err(f"{where}.metric", "must be a metric name")
            continue
        thresholds.append(RoleThreshold(t["role"], metric, _f(bounds["min"]), _f(bounds["max"])))
    if errors:
        raise InputError(f"{len(errors)} problem(s) in {path}:\n  " + "\n  ".join(errors))
    return ProjectConfig(path, ProjectGates(**values, thresholds=tuple(thresholds), source=str(path)), resolved, base)


def _f(v: Any) -> float | None:
    return None if v is None else float(v)


def _resolve_suite(directory: Path, name: str) -> str:
    """A path relative to the project file when it exists there; a built-in name otherwise."""
    p = directory / name
    return str(p) if p.exists() else name
