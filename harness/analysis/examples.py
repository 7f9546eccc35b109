"""The per-example comparison: each adapter at every scale it was evaluated at (its chosen scale first)
against the base model (and a baseline) on every suite's headline metric, regressions first, capped at
``max_examples`` rows per table.

Every example is classified (the counts cover all of them); only the rows that are shown become
records, with their texts cut to ``MAX_TEXT``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from harness.analysis.build import Reader, _pairs
from harness.analysis.report_types import MAX_TEXT, RAW_METRICS, AdapterSweep, Answer, ExampleDiff, ExampleTable
from harness.analysis.types import Comparison

#: the order of the table: regressions, improvements, other changed answers, the same answers
RANK = {"regression": 0, "improved": 1, "changed": 2, "same": 3}


def verdict(value: float | None, base: float | None, higher_is_better: bool) -> str | None:
    """``better`` / ``worse`` / ``same`` against the base model in the metric's direction (None: unmeasured)."""
    if value is None or base is None:
        return None
    if abs(value - base) < 1e-9:
        return "same"
    return "better" if (value > base) == higher_is_better else "worse"


def classify(score: float | None, output: str | None, base: tuple[Any, ...] | None, higher_is_better: bool,
             raw: bool) -> tuple[str, bool, bool]:
    """(status, failed, changed) of one answer against the base model's ``(scale, output, score, error)``."""
    base_score = base[2] if base is not None else None
    v = verdict(score, base_score, higher_is_better)
    if base_score is not None and score is None:
        v = "worse"  # an error where the base answered
    changed = base is not None and (output or "") != (base[1] or "")
    status = {"worse": "regression", "better": "improved"}.get(v or "", "changed" if changed else "same")
    if raw:
        failed = score is None or status == "regression"
    else:
        failed = score is None or (score < 0.5 if higher_is_better else score > 0.5)
    return status, failed, changed


def example_tables(r: Reader, run_id: str, c: Comparison, sweeps: Sequence[AdapterSweep], max_examples: int,
                   baseline: str | None) -> tuple[ExampleTable, ...]:
    """One table per adapter of ``sweeps`` and scale it was evaluated at, its chosen scale first (the report
    opens that one; any other is one selection away: the scale the user would ship need not be the chosen one);
    ``baseline`` (an adapter id, id prefix or label) is shown beside each at its own chosen scale, else the
    adapter's parent when the run evaluated it."""
    if not sweeps:
        return ()
    headline = {i.name: i.headline for i in c.suites if i.headline}
    parents = dict(r.rows("SELECT adapter_id, parent_adapter_id FROM adapters WHERE adapter_id IN (SELECT unnest(?))",
                          [[s.adapter_id for s in sweeps]]))
    by_id = {s.adapter_id: s for s in sweeps}
    chosen_baseline = None
    if baseline is not None:
        chosen_baseline = next((s.adapter_id for s in sweeps if baseline in (s.adapter_id, s.label)
                                or (len(baseline) >= 6 and s.adapter_id.startswith(baseline))), None)
    scales = {s.adapter_id: [s.chosen, *sorted({float(p.scale) for p in s.points if p.scale != 0 and p.scale != s.chosen})]
              for s in sweeps}
    pairs = sorted({(aid, sc) for aid, scs in scales.items() for sc in scs})
    heads, head_params, within, within_params = _pairs(sorted(headline.items()))
    rows = [] if not headline else r.rows(
        f"""
        SELECT v.adapter_id, v.scale, v.suite_name, v.example_id, v.category, v.input, v.target, v.output, v.error, v.value
        FROM v_scores v JOIN {heads} h USING (suite_name, metric)
        LEFT JOIN (SELECT unnest(?) AS aid, unnest(?) AS sc) p ON p.aid = v.adapter_id AND p.sc = v.scale
        WHERE v.run_id = ? {within} AND (v.adapter_id IS NULL OR v.adapter_id IN (SELECT unnest(?)))
              AND (v.adapter_id IS NULL OR p.aid IS NOT NULL)
        ORDER BY v.suite_name, v.example_id
        """,
        [*head_params, [a for a, _ in pairs], [s for _, s in pairs], run_id, *within_params, sorted({a for a, _ in pairs})])
    texts: dict[tuple[str, str], tuple[str, str | None, str | None]] = {}
    #: (adapter id or None for the base model, scale (0 for the base), suite, example) -> (scale, output, score, error)
    answers: dict[tuple[str | None, float, str, str], tuple[Any, ...]] = {}
    for aid, scale, suite, ex, cat, inp, ref, output, error, value in rows:
        if (suite, ex) not in texts:
            texts[(suite, ex)] = (inp or "", ref, cat)
        who = aid if aid and scale != 0 else None
        answers[(who, float(scale) if who else 0.0, suite, ex)] = (scale, output, value, error)
    direction = {}
    for suite, metric in headline.items():
        info = c.suite(suite)
        direction[suite] = info.higher_is_better(metric) if info else True
    shown: dict[tuple[str | None, float, str, str], Answer] = {}

    def answer(who: str | None, scale: float, suite: str, ex: str) -> Answer | None:
        key = (who, scale if who else 0.0, suite, ex)
        if key not in answers:
            return None
        if key not in shown:
            scale, output, value, error = answers[key]
            label = "base" if who is None else by_id[who].label + f"@{scale:g}"
            shown[key] = Answer(label, clip(output), value, clip(error))
        return shown[key]

    tables = []
    for s, at in [(sw, at) for sw in sweeps for at in scales[sw.adapter_id]]:
        base_line = chosen_baseline if chosen_baseline and chosen_baseline != s.adapter_id else None
        if base_line is None and parents.get(s.adapter_id) in by_id:
            base_line = parents[s.adapter_id]
        decided = []
        for i, (suite, ex) in enumerate(texts):
            mine = answers.get((s.adapter_id, at, suite, ex))
            if mine is None:
                continue
            status, failed, changed = classify(mine[2], mine[1], answers.get((None, 0.0, suite, ex)), direction[suite],
                                               headline[suite] in RAW_METRICS)
            decided.append((RANK[status], not failed, i, suite, ex, status, failed, changed))
        decided.sort()  # regressions first, failures first within a status, then in (suite, example) order
        diffs = []
        for _, _, _, suite, ex, status, failed, changed in decided[:max_examples]:
            inp, ref, cat = texts[(suite, ex)]
            mine_answer = answer(s.adapter_id, at, suite, ex)
            assert mine_answer is not None  # decided holds only the examples this adapter answered
            diffs.append(ExampleDiff(suite, ex, cat, headline[suite], direction[suite], clip(inp) or "", clip(ref),
                                     answer(None, 0.0, suite, ex), mine_answer,
                                     answer(base_line, by_id[base_line].chosen, suite, ex) if base_line else None,
                                     status, failed, changed))
        cats = tuple(sorted({cat for d in decided if (cat := texts[(d[3], d[4])][2])}))
        tables.append(ExampleTable(
            s.adapter_id, s.label, at, by_id[base_line].label if base_line else None, tuple(diffs),
            len(decided), sum(d[5] == "regression" for d in decided), sum(d[6] for d in decided),
            sum(d[7] for d in decided), cats, chosen=at == s.chosen))
    return tuple(tables)


def clip(text: str | None) -> str | None:
    """A text as the table shows it: at most ``MAX_TEXT`` characters, then how many more there were."""
    if text is None:
        return None
    # a lone surrogate cannot be written as UTF-8: it becomes U+FFFD, as any decoder would show it
    text = text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    if len(text) > MAX_TEXT:
        return text[:MAX_TEXT] + f" … [{len(text) - MAX_TEXT} more characters]"
    return text
