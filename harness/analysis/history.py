"""Where the reported adapters came from: training loss curves with anomaly findings, the lineage of
continued fine-tunes, and the provenance of every run."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Sequence

from harness.analysis.build import Reader, finite
from harness.analysis.report_types import Finding, LineageNode, LossPoint, RunProvenance, TrainingCurve
from harness.errors import HarnessError
from harness.records import parse_adapter_record


def training_curves(r: Reader, ids: Sequence[str], labels: dict[str, str]) -> tuple[TrainingCurve, ...]:
    """One curve per (adapter, training run) that logged steps or findings, in the order of ``ids``."""
    if not ids:
        return ()
    steps = r.rows("SELECT run_id, adapter_id, step, loss, eval_loss FROM step_logs "
                   "WHERE adapter_id IN (SELECT unnest(?)) ORDER BY run_id, seq", [list(ids)])
    finds = r.rows("SELECT run_id, adapter_id, kind, severity, step, message FROM findings "
                   "WHERE adapter_id IN (SELECT unnest(?)) ORDER BY run_id, seq", [list(ids)])
    groups: dict[tuple[str, str], list[LossPoint]] = defaultdict(list)
    bad: dict[tuple[str, str], int] = defaultdict(int)
    for run_id, aid, step, loss, ev in steps:
        key = (aid, run_id)
        for v in (loss, ev):
            bad[key] += v is not None and not math.isfinite(v)
        groups[key].append(LossPoint(int(step or 0), finite(loss), finite(ev)))
    found: dict[tuple[str, str], list[Finding]] = defaultdict(list)
    for run_id, aid, kind, severity, step, message in finds:
        found[(aid, run_id)].append(Finding(str(kind), str(severity), step, str(message or "")))
    position = {a: i for i, a in reversed(list(enumerate(ids)))}
    keys = sorted(set(groups) | set(found), key=lambda k: (position[k[0]], k[1]))
    return tuple(TrainingCurve(a, labels.get(a, a[:12]), run, tuple(groups.get((a, run), ())),
                               tuple(found.get((a, run), ())), bad.get((a, run), 0)) for a, run in keys)


def lineage(r: Reader, ids: Sequence[str], labels: dict[str, str]) -> tuple[LineageNode, ...]:
    """The reported adapters with their ancestors, as a forest in depth-first order."""
    known: dict[str, tuple[str | None, str | None]] = {}
    todo = list(ids)
    while todo:
        rows = r.rows("SELECT adapter_id, parent_adapter_id, name FROM adapters WHERE adapter_id IN (SELECT unnest(?))",
                      [todo])
        todo = []
        for aid, parent, name in rows:
            if aid not in known:
                known[aid] = (parent, name)
                if parent and parent not in known:
                    todo.append(parent)
    if not any(p for p, _ in known.values()):
        return ()  # no continued fine-tune: nothing to draw
    for parent, _ in list(known.values()):
        if parent and parent not in known:
            known[parent] = (None, None)  # a parent the store never saw: shown by its id
    children: dict[str | None, list[str]] = defaultdict(list)
    for aid, (parent, _) in known.items():
        children[parent].append(aid)
    out: list[LineageNode] = []

    def walk(aid: str, depth: int) -> None:
        if depth > 64:
            return  # a cycle in hand-edited data: stop rather than recurse forever
        name = known[aid][1]
        out.append(LineageNode(aid, labels.get(aid) or name or aid[:12], depth, known[aid][0], aid in ids))
        for child in sorted(children.get(aid, ()), key=lambda a: labels.get(a) or known[a][1] or a):
            walk(child, depth + 1)

    for root in sorted(children[None], key=lambda a: labels.get(a) or known[a][1] or a):
        walk(root, 0)
    return tuple(out)


def provenance(r: Reader, run_id: str) -> RunProvenance:
    """A run's commit, packages, device, seed and times, and the hashes of what it used."""
    rows = r.query("SELECT * FROM runs WHERE run_id = ?", [run_id])
    run = rows[0] if rows else {"run_id": run_id}
    fields = tuple((k, str(run[k])) for k in ("kind", "status", "command", "git_commit", "git_dirty", "device", "python",
                                              "seed", "started_at", "finished_at", "host", "n_expected")
                   if run.get(k) is not None)
    try:
        packages = tuple(sorted((str(k), str(v)) for k, v in (json.loads(run.get("packages") or "{}") or {}).items()))
    except (ValueError, AttributeError):
        packages = (("(unreadable)", str(run.get("packages"))),)
    hashes: list[tuple[str, str]] = []
    used = [] if run.get("kind") == "train" else r.run_parts(run_id)
    suite_ids = sorted({u[2] for u in used if u[2] is not None})
    names = dict(r.rows("SELECT suite_id, name FROM suites WHERE suite_id IN (SELECT unnest(?))", [suite_ids])) if suite_ids else {}
    for b in sorted({u[0] for u in used if u[0]}):
        hashes.append(("base model", b))
    for a in sorted({u[1] for u in used if u[1]}):
        hashes.append(("adapter", a))
    for name, sid in sorted({(names.get(u[2]) or "?", u[2]) for u in used}):
        hashes.append((f"suite {name}", sid))
    for aid, harness_json in r.rows("SELECT DISTINCT a.adapter_id, a.harness FROM adapters a JOIN step_logs s "
                                    "USING (adapter_id) WHERE s.run_id = ?", [run_id]):
        hashes.append(("adapter", aid))
        try:  # the stored harness.json, through its one reader (harness.records)
            rec = parse_adapter_record(harness_json, f"adapter {aid[:12]} in the store") if harness_json else None
        except HarnessError:  # damaged, or written by a newer harness: the report shows what it can
            hashes.append(("adapter record", "(unreadable)"))
            rec = None
        if rec is not None:
            for label, value in (("training data", rec.data.hash if rec.data else None),
                                 ("base model", rec.base_model_id), ("parent adapter", rec.parent_adapter_id)):
                if value:
                    hashes.append((label, str(value)))
    return RunProvenance(run_id, run.get("kind"), fields, packages, tuple(hashes))
