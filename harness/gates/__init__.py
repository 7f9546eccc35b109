"""Gates: rules on stored results that decide pass or fail, each with a sentence that says why.

Kinds of gate (all read the store, none generates):

- ``threshold``: a suite metric's mean within ``min``/``max`` (a suite's ``gates:``, or the project
  file's ``[[gates.threshold]]`` by suite role);
- ``retention`` / ``leakage`` / ``task_gain``: relative to the base model of the same run, with suites
  told apart by role, never by name (``retention`` on a general suite, or pooled over every general
  suite as ``harness.analysis.sweep`` computes it; leakage pooled over general and leakage suites; the task
  headline's gain over base), and ``gain`` for a suite's ``min_gain``;
- ``regression``: against a baseline adapter, decided on the paired examples (``harness.analysis.stats``): a
  drop fails when it is both significant after Holm's correction over every regression test of the
  check (scales × suites) and larger than the allowed margin;
- ``completeness``: every expected result present (answered + errored == expected), errors <= allowed;
- ``training_health``: no error-severity anomaly in the adapter's training record or stored findings;
- ``provenance``: the adapter evaluated is the one being released (its hash).

A gate never passes on missing evidence. Every expected example must be present, no score may be
missing or non-finite, and only then is the mean compared with the threshold. DuckDB sorts NaN above
every number, so a NaN that reached a ``>=`` comparison would pass it; scores are finite or NULL by
construction (``Score``, ``ScoreRow`` and the table's CHECK), and the gates treat NULL as a failure,
not as a value to skip. Zero examples never pass, and a check with zero gates does not either.

The package, by concept: ``spec`` (``ProjectGates``, ``RoleThreshold``, ``PlannedGate`` and ``plan_gates``:
which gates a check evaluates, known before anything runs), ``report`` (``GateResult``, ``GateOutcome``,
``GateReport``, ``Example``: what a check returns), ``threshold`` (``threshold_gate``, the bound on a list
of scores that needs no store), ``evaluate`` (``evaluate_gates`` / ``check_run``: one stored run read once,
every planned gate judged) and ``kinds`` (one evaluator per gate kind). Every public name is importable
from ``harness.gates``.
"""

from harness.gates.evaluate import check_run, evaluate_gates
from harness.gates.report import Example, GateOutcome, GateReport, GateResult
from harness.gates.spec import QUALITY_KINDS, PlannedGate, ProjectGates, RoleThreshold, plan_gates
from harness.gates.threshold import threshold_gate

__all__ = [
    "QUALITY_KINDS", "Example", "GateOutcome", "GateReport", "GateResult", "PlannedGate", "ProjectGates",
    "RoleThreshold", "check_run", "evaluate_gates", "plan_gates", "threshold_gate",
]
