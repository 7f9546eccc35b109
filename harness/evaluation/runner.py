"""The evaluation runner: (adapter × scale × suite × example) → cached or generated → scored → stored.

The base model is scale 0 and is evaluated once per suite; every adapter of that base shares its
rows through the cache. Each request's cache key covers everything that changes its output or its
scores, so a hit is always safe to reuse and a miss never borrows another model's answer.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from harness.errors import SuiteError
from harness.evaluation.engine import attached, plan_groups
from harness.evaluation.targets import Target
from harness.generation.generate import Generation, generate, render_prompt
from harness.models.base import LoadedBase
from harness.records import TaskFormat
from harness.scorers import BoundScorer, Example, Score, get_scorer
from harness.scorers.likelihood import VERSION as LIKELIHOOD_VERSION
from harness.store import (
    AdapterRow,
    BaseModelRow,
    ExampleRow,
    GenerationRow,
    ScoreRow,
    Store,
    SuiteRow,
    cache_key,
)
from harness.suites import taskformat
from harness.suites.spec import Suite, load_examples, render_user_text, suite_directions
from harness.util import distributed

#: the most rows a batch shared by several models holds by default: on the 2-core CPU a decode step's
#: cost per row fell from 7.4 ms at 16 rows to 3.8 ms at 96 (one thread; 5.6 to 3.0 on two), and
#: little more past that (benchmarks/sweep.py); ``--max-batch`` lowers it where memory is short
DEFAULT_MAX_BATCH = 96
#: the drift measure's definition (harness.generation.likelihood.drift): bump when it changes
DRIFT_VERSION = "1"


def shared_batch_rows(batch_size: int, max_batch: int, n_models: int) -> int:
    """Rows of a batch shared by ``n_models`` targets: ``batch_size`` for each, up to ``max_batch``
    (never fewer than ``batch_size``)."""
    return max(batch_size, min(max_batch, batch_size * n_models))


@dataclass
class EvalStats:
    generated: int = 0
    cached: int = 0
    errors: int = 0
    #: results scored from stored outputs (a scorer or answer-key change): no model work
    rescored: int = 0
    first_error: str | None = None
    seconds: float = 0.0
    #: of ``seconds``: the drift pass (teacher-forced base answers, harness.generation.likelihood.drift)
    drift_seconds: float = 0.0
    per_target: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class _Request:
    suite: Suite
    example: Example
    prompt: str
    key: str
    #: what changes the output alone; a result missing only because scorers changed reuses it
    gen_key: str | None = None


def _likelihood_key(suite: Suite, example: Example) -> dict:
    """What else identifies a likelihood suite's result (and its output): the kind, the choices, the delimiter."""
    if not suite.likelihood:
        return {}
    return {"kind": suite.kind, "choices": list(example.choices), "delimiter": suite.target_delimiter}


def _score(scorers: Sequence[BoundScorer], gen: Generation, example: Example) -> list[tuple[BoundScorer, Score]]:
    out: list[tuple[BoundScorer, Score]] = []
    for sc in scorers:
        if gen.text is None:
            continue
        try:
            out.extend((sc, s) for s in sc(gen.text, example))
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            # One scorer failing on one example is recorded, not fatal (FAULTS.md 37).
            out.append((sc, Score(sc.name, None, f"scorer error: {type(exc).__name__}: {exc}")))
    return out


def run_eval(
    base: LoadedBase,
    targets: Sequence[Target],
    suites: Sequence[Suite],
    run,  # harness.store.RunWriter
    store: Store,
    *,
    batch_size: int = 16,
    max_batch: int = DEFAULT_MAX_BATCH,
    limit: int | None = None,
    flush_every: int = 64,
    log: Callable[[str], None] = print,
    progress_bar: bool = False,
    examples: dict[str, list[Example]] | None = None,
    task_format: TaskFormat | str | None = None,
    self_check: bool = True,
) -> EvalStats:
    """Evaluate every target on every suite, writing rows through ``run`` as they are produced.

    ``batch_size`` is rows per model: a batch shared by several (adapter, scale) targets holds that many
    for each of them, up to ``max_batch`` rows (never fewer than ``batch_size``), since one model's
    suite alone often has too few examples to fill a batch that size.

    ``examples`` (suite name -> examples) passes examples already loaded (and so validated) by the
    caller; suites not in it are loaded here. ``task_format``: the run's task format (as resolved by the
    caller, or a ``--task-format`` value); None resolves it here from the suites and adapters.

    Under ``accelerate launch`` / ``torchrun`` with a ``run`` shared by the ranks (``store.run(info,
    ranks=True)``), every rank calls this with the same arguments: the main process looks up the cache
    and broadcasts what is missing, each group's missing requests are split by global rank (contiguous
    shares, no padding), each rank generates and writes its share, and at the end the main process
    moves every rank's shards in (``run.sync()``) and every rank returns the totals of all ranks.
    Greedy outputs do not depend on the batch a request lands in, so the rows are those of one process.
    """
    from harness.metrics import model_metric_names

    shared = bool(getattr(run, "ranks", False))  # one run written by every rank of a launched job
    lead = not shared or distributed.is_main()  # the process that writes the run's own rows and logs
    if not lead:
        log, progress_bar = (lambda m: None), False
    stats = EvalStats()
    t_start = time.perf_counter()
    dtype = str(base.dtype).removeprefix("torch.")
    if lead:
        run.add_base_model(BaseModelRow(base.ref.model_id, base.ref.name, str(base.ref.path)))
    for t in targets:
        if t.adapter is not None and lead:
            record = t.adapter.record  # harness.json, through its one reader (harness.records)
            run.add_adapter(AdapterRow(
                t.adapter.adapter_id, base.ref.model_id, str(t.adapter.path), json.dumps(t.adapter.config, sort_keys=True),
                record.parent_adapter_id if record else None, record.to_json() if record else None, t.adapter.path.name,
            ))
    loaded = {s.name: (examples or {}).get(s.name) or load_examples(s, limit) for s in suites}
    # general and leakage suites are scored for leakage of this run's task format (idempotent when the
    # caller already did it, as `harness eval` does before loading the model)
    fmt, _ = taskformat.resolve(suites, loaded, [t.adapter for t in targets if t.adapter is not None], task_format)
    suites = taskformat.with_leakage(suites, fmt)
    # The whole expected count is declared, and made durable, before anything is generated: a run killed
    # after its first model must read as incomplete, not as a finished smaller run.
    if lead:
        run.expect(sum(len(ex) for ex in loaded.values()) * len(targets))
    run.flush(force=True)
    # self-check rows (scale 0 == base, scale 1 == plain PEFT load), taken when adapters first attach
    checks: list = [] if self_check else None  # type: ignore[assignment]
    checked: set[str] = set()  # adapters already self-checked in this call (once each, not once per suite)
    work: list[_SuiteWork] = []
    #: (suite, example) -> (the base's prompt, the base's answer): cached here, or generated in this run
    base_answers: dict[tuple[str, str], tuple[str, str]] = {}
    for suite in suites:
        suite_examples = loaded[suite.name]
        if lead:
            run.add_suite(SuiteRow(suite.suite_id, suite.name, suite.version, str(suite.path), len(suite_examples),
                                   suite.role, suite.headline, json.dumps(suite_directions(suite), sort_keys=True),
                                   suite.kind))
            run.add_examples(ExampleRow(suite.suite_id, e.id, e.input, e.target, e.category, ",".join(e.truncated) or None)
                             for e in suite_examples)
        scorers = [] if suite.likelihood else [get_scorer(s.name, s.args) for s in suite.scorers
                                                if s.name not in model_metric_names()]
        wants_ppl = any(s.name == "perplexity" for s in suite.scorers)
        versions = {s.name: s.version for s in scorers} if not suite.likelihood else {suite.kind: LIKELIHOOD_VERSION}
        # general and leakage answers of an adapter carry their drift from the base's own answer (teacher-forced)
        wants_drift = suite.role in ("general", "leakage") and not suite.likelihood
        texts = [render_user_text(suite, e) for e in suite_examples]
        by_template: dict[str | None, list[str]] = {}
        todo: list[tuple[Target, _Request]] = []
        for target in targets:
            # an adapter trained with its own chat template (TRL's setup_chat_format, Unsloth's get_chat_template)
            # is asked in that template; the base model and other adapters in the base's
            template = suite.prompt.chat_template or (target.adapter.chat_template if target.adapter is not None else None)
            if template not in by_template:
                by_template[template] = [render_prompt(base.tokenizer, t, suite.prompt.system, suite.prompt.raw, template)
                                         for t in texts]
            prompts = by_template[template]
            reqs = [
                _Request(suite, e, p, cache_key(
                    base_model_id=base.ref.model_id,
                    adapter_id=None if target.adapter is None else target.adapter.adapter_id,
                    scale=target.scale, prompt=p, settings=suite.generation.to_json(), dtype=dtype,
                    scorers=versions, perplexity=wants_ppl,
                    **({"drift": DRIFT_VERSION} if wants_drift and target.adapter is not None else {}),
                    **_likelihood_key(suite, e),
                    # The row names its suite and example, and scores depend on the answer key: both are
                    # part of the identity, so another suite's identical prompt or a corrected target
                    # never reuses a row it should not.
                    suite=suite.name, example=e.id, answer=[e.target, list(e.aliases), list(e.references)],
                    scorer_args={s.name: dict(s.args) for s in scorers},
                ), cache_key(
                    base_model_id=base.ref.model_id,
                    adapter_id=None if target.adapter is None else target.adapter.adapter_id,
                    scale=target.scale, prompt=p, settings=suite.generation.to_json(), dtype=dtype,
                    suite=suite.name, example=e.id,
                    **_likelihood_key(suite, e),
                ))
                for e, p in zip(suite_examples, prompts)
            ]
            # An error row is a record of a failure, never an answer: it is not served from the cache, so
            # a rerun retries it.
            hits: set[str] = set()
            if lead:
                found = store.cached([r.key for r in reqs])
                # an adapter's general answer counts as cached only with its drift (a run stopped between the
                # answer and its drift pass stored the one without the other)
                need_drift = wants_drift and target.adapter is not None
                hits = {k for k, v in found.items() if v.error is None
                        and (not need_drift or any(s.metric == "drift_kl" for s in v.scores))}
                if target.adapter is None and wants_drift:
                    for r in reqs:  # the base's own answers, which the adapters' drift is measured on
                        if r.key in hits and found[r.key].output is not None:
                            base_answers[(suite.name, r.example.id)] = (r.prompt, found[r.key].output or "")
            if shared:  # only the main process reads the store; every rank gets the same list of hits
                hits = distributed.broadcast(hits)
            missing = [r for r in reqs if r.key not in hits]
            if lead:
                run.use_cached([r.key for r in reqs if r.key in hits])
            stats.cached += len(reqs) - len(missing)
            # A result can miss only because its scorers or answer key changed: its output is then in the
            # store under the same gen_key, and it is re-scored here with no model work (issue 16.4).
            rescored: set[str] = set()
            if lead and not wants_ppl and not suite.likelihood and not (wants_drift and target.adapter is not None) and missing:
                rescored = _rescore(store, run, target, suite, scorers, base, missing)
            if shared:
                rescored = distributed.broadcast(rescored)
            missing = [r for r in missing if r.key not in rescored]
            stats.rescored += len(rescored)
            log(f"  {suite.name} × {target.label}: {len(reqs)} examples, {len(reqs) - len(missing) - len(rescored)} cached, "
                + (f"{len(rescored)} re-scored from stored outputs, " if rescored else "") + f"{len(missing)} to generate")
            todo.extend((target, r) for r in missing)
        if todo:
            work.append(_SuiteWork(suite, scorers, wants_ppl, todo, wants_drift))
    # Every (adapter, scale) with work, with the base, shares batches where PEFT allows it
    # (harness.evaluation.engine), and each group attaches once for every suite: an adapter is read and checked
    # once per run, not once per suite. The rows of one group and suite are length-sorted together by
    # generate() and stored as each one ends.
    pending = list(dict.fromkeys(t for w in work for t, _ in w.todo))
    for group_targets in plan_groups(pending, base.model if any(t.adapter and t.adapter.config.get("modules_to_save")
                                                                for t in pending) else None):
        shares = []
        for w in work:
            items = [(t, r) for t, r in w.todo if t in group_targets]
            if shared:
                # this rank's contiguous share by global rank (the main process's is never empty when there
                # is work, so it self-checks every group, as one process does)
                items = distributed.split(items)
            if items:
                shares.append((w, items))
        if not shares:
            continue
        unchecked = {t.adapter.adapter_id for t in group_targets if t.adapter is not None} - checked
        with attached(base, group_targets, checks if (checks is not None and unchecked) else None) as group:
            checked.update(unchecked)
            if checks:
                if lead:
                    run.add_gate_results(checks)
                checks.clear()
            if len(group_targets) > 1:
                log(f"  {len(group_targets)} models in shared batches of up to "
                    f"{shared_batch_rows(batch_size, max_batch, len(group_targets))} rows: {group.how}")
            for w, items in shares:
                rows = shared_batch_rows(batch_size, max_batch, len({t for t, _ in items}))
                if w.suite.likelihood:
                    _likelihood_share(base, run, group, w, items, stats, batch_size=rows, log=log)
                else:
                    _generate_share(base, run, group, w, items, stats, batch_size=rows, flush_every=flush_every,
                                    log=log, progress_bar=progress_bar, base_answers=base_answers)
    if shared:
        run.sync()  # every rank's shards in the store before anyone reads it (gates, tables)
        stats = _total(stats)
    stats.seconds = time.perf_counter() - t_start
    return stats



@dataclass(frozen=True)
class _SuiteWork:
    """What one suite still needs generated: its scorers and the (target, request) pairs."""

    suite: Suite
    scorers: Sequence[BoundScorer]
    wants_ppl: bool
    todo: list[tuple[Target, _Request]]
    wants_drift: bool = False


def _generate_share(base: LoadedBase, run, group, w: _SuiteWork, items: Sequence[tuple[Target, _Request]],
                    stats: EvalStats, *, batch_size: int, flush_every: int, log: Callable[[str], None],
                    progress_bar: bool, base_answers: dict[tuple[str, str], tuple[str, str]] | None = None) -> None:
    """Generate ``items`` of one suite on one attached group, storing each row as it ends."""
    suite = w.suite
    who = items[0][0].label if len({t for t, _ in items}) == 1 else f"{len({t for t, _ in items})} models"
    bar = _bar(len(items), f"{suite.name} × {who}") if progress_bar else None
    written = 0

    def store(target: Target, r: _Request, g: Generation, ppl: list[ScoreRow] | None) -> None:
        nonlocal written
        # An error row is this run's record of a failure, never a cached answer: it is stored under its
        # own key (cache key + run), so no later lookup finds it, a rerun retries the example, and this
        # run's own history keeps its error.
        key = r.key if g.error is None else f"{r.key}:error:{run.run_id}"
        run.add_generations([GenerationRow(
            key, base.ref.model_id, None if target.adapter is None else target.adapter.adapter_id,
            target.scale, suite.suite_id, r.example.id, r.prompt, g.text, suite.generation.to_json(),
            g.n_prompt_tokens, g.n_new_tokens, g.error, g.seconds, g.truncated,
            r.gen_key if g.error is None else None,
        )])
        scored = _score(w.scorers, g, r.example)
        run.add_scores(ScoreRow(key, s.metric, s.value, s.reason, sc.name, sc.version) for sc, s in scored)
        if w.wants_drift and base_answers is not None and target.adapter is None and g.error is None and g.text is not None:
            base_answers[(suite.name, r.example.id)] = (r.prompt, g.text)
        if ppl is not None and g.error is None:
            run.add_scores(ppl)
        if g.error is not None:
            stats.errors += 1
            stats.first_error = stats.first_error or f"{suite.name}/{r.example.id} at {target.label}: {g.error}"
        stats.generated += 1
        written += 1
        if bar is not None:
            bar.update(1)
        if written % flush_every == 0 or written == len(items):
            run.flush()
            if bar is None:
                log(f"    {suite.name}: {written}/{len(items)} generated")

    if w.wants_ppl:
        # the reference NLL needs a forward of its own per chunk, after the chunk's answers
        for start in range(0, len(items), flush_every):
            chunk = items[start : start + flush_every]
            routes = group.route([t for t, _ in chunk])
            gens = generate(group.model, base.tokenizer, [r.prompt for _, r in chunk], suite.generation,
                            batch_size, adapter_names=routes, log=log if start == 0 else None)
            nll = _perplexity(group.model, base, [r for _, r in chunk], routes)
            for (target, r), g, ppl in zip(chunk, gens, nll):
                store(target, r, g, ppl)
    else:
        # one generate() call for the whole share: the batch refills from one queue until the end, and
        # rows are stored (and flushed every ``flush_every``) as they end, so a killed run keeps them
        stored: set[int] = set()

        def one(i: int, g: Generation) -> None:
            stored.add(i)
            store(items[i][0], items[i][1], g, None)

        gens = generate(group.model, base.tokenizer, [r.prompt for _, r in items], suite.generation, batch_size,
                        adapter_names=group.route([t for t, _ in items]), on_result=one, log=log)
        for i, g in enumerate(gens):  # whatever was not reported as it ended (every result is stored once)
            if i not in stored:
                one(i, g)
    if w.wants_drift and base_answers is not None:
        drifted = [(t, r) for (t, r), g in zip(items, gens) if t.adapter is not None and g.error is None]
        if drifted:
            t0 = time.perf_counter()
            _drift(base, run, group, suite, drifted, base_answers, batch_size)
            run.flush()
            stats.drift_seconds += time.perf_counter() - t0
    if bar is not None:
        bar.close()

def _drift(base: LoadedBase, run, group, suite: Suite, items: Sequence[tuple[Target, _Request]],
           base_answers: dict[tuple[str, str], tuple[str, str]], batch_size: int) -> None:
    """Each adapter row's drift from the base on the base's own answer (``harness.generation.likelihood.drift``),
    stored as scores of that row; None with a reason where it cannot be measured (a failed gate says so: an
    unmeasured drift never passes)."""
    from harness.evaluation.engine import BASE_NAME
    from harness.generation.likelihood import drift

    def none(r: _Request, why: str) -> None:
        run.add_scores(ScoreRow(r.key, m, None, why, "drift", DRIFT_VERSION) for m in ("drift_kl", "drift_nll"))

    ready = []
    for t, r in items:
        known = base_answers.get((suite.name, r.example.id))
        if known is None:
            none(r, "the base model's answer to this prompt is not in the run (it errored or was not evaluated)")
        elif not group.mixed:
            none(r, "this adapter runs in a batch of its own (DoRA or modules_to_save), where the base row cannot "
                    "share its forward; drift not measured")
        else:
            ready.append((t, r, known))
    if not ready:
        return
    results = drift(group.model, base.tokenizer, [(bp, r.prompt, answer, group.names[t]) for t, r, (bp, answer) in ready],
                    BASE_NAME, batch_size)
    for (_, r, _), d in zip(ready, results):
        run.add_scores([ScoreRow(r.key, "drift_kl", d.kl, d.reason, "drift", DRIFT_VERSION),
                        ScoreRow(r.key, "drift_nll", d.nll_delta, d.reason, "drift", DRIFT_VERSION)])


def _likelihood_share(base: LoadedBase, run, group, w: _SuiteWork, items: Sequence[tuple[Target, _Request]],
                      stats: EvalStats, *, batch_size: int, log: Callable[[str], None]) -> None:
    """Score ``items`` of a likelihood suite: every (context, choice) of every row in shared batches, one routed
    row each; a row's output is the choice it prefers (multiple choice) or the continuation, with no decoding."""
    from harness.generation.likelihood import loglikelihoods
    from harness.scorers.likelihood import loglikelihood_scores, multiple_choice_scores

    suite = w.suite
    t0 = time.perf_counter()
    requests: list[tuple[str, str]] = []
    routes: list[str] = []
    spans = []
    names = group.route([t for t, _ in items])
    for k, (_, r) in enumerate(items):
        conts = r.example.choices if suite.kind == "multiple_choice" else (r.example.target or "",)
        spans.append((len(requests), len(conts)))
        # lm-eval puts the target delimiter before each choice, and none before a loglikelihood target
        delimiter = suite.target_delimiter if suite.kind == "multiple_choice" else ""
        requests.extend((r.prompt, delimiter + c) for c in conts)
        if names is not None:
            routes.extend([names[k]] * len(conts))
    log(f"    {suite.name}: {len(requests)} continuations of {len(items)} examples scored by log-likelihood (no decoding)")
    try:
        lls = loglikelihoods(group.model, base.tokenizer, requests, batch_size, routes if names is not None else None)
    except ValueError as exc:
        raise SuiteError(f"suite {suite.name} ({suite.path}): {exc}") from None
    per_row = (time.perf_counter() - t0) / max(1, len(items))
    for (target, r), (start, n) in zip(items, spans):
        got = lls[start:start + n]
        if suite.kind == "multiple_choice":
            assert r.example.gold is not None
            pred, scores = multiple_choice_scores([x.logprob for x in got], r.example.choices, r.example.gold)
            output = r.example.choices[pred]
        else:
            scores = loglikelihood_scores(got[0].logprob, got[0].is_greedy)
            output = r.example.target or ""
        run.add_generations([GenerationRow(
            r.key, base.ref.model_id, None if target.adapter is None else target.adapter.adapter_id, target.scale,
            suite.suite_id, r.example.id, r.prompt, output,
            json.dumps({"kind": suite.kind, "target_delimiter": suite.target_delimiter,
                        "logprobs": [round(x.logprob, 6) for x in got]}, sort_keys=True),
            None, sum(x.n_tokens for x in got), None, per_row, False, r.gen_key,
        )])
        run.add_scores(ScoreRow(r.key, s.metric, s.value, s.reason, suite.kind, LIKELIHOOD_VERSION) for s in scores)
        stats.generated += 1
    run.flush()


def _rescore(store: Store, run, target: Target, suite: Suite, scorers: Sequence[BoundScorer], base: LoadedBase,
             missing: Sequence[_Request]) -> set[str]:
    """Score stored outputs for the ``missing`` results whose output (same gen_key) is already stored.

    The new result gets its own generation row (a copy of the output under the new cache key, 0 s) and
    its scores; the old result and its scores stay as they were. Returns the keys handled.
    """
    by_gen = {r.gen_key: r for r in missing if r.gen_key}
    if not by_gen:
        return set()
    rows = store.query(
        "SELECT gen_key, any_value(output) AS output, any_value(n_prompt_tokens) AS n_prompt, "
        "any_value(n_new_tokens) AS n_new, bool_or(coalesce(truncated, false)) AS truncated FROM generations "
        "WHERE gen_key IN (SELECT unnest(?)) AND error IS NULL AND output IS NOT NULL GROUP BY gen_key", [list(by_gen)])
    done: set[str] = set()
    for row in rows:
        r = by_gen[row["gen_key"]]
        g = Generation(row["output"], row["n_prompt"] or 0, row["n_new"] or 0, 0.0, truncated=bool(row["truncated"]))
        run.add_generations([GenerationRow(
            r.key, base.ref.model_id, None if target.adapter is None else target.adapter.adapter_id, target.scale,
            suite.suite_id, r.example.id, r.prompt, g.text, suite.generation.to_json(), g.n_prompt_tokens,
            g.n_new_tokens, None, 0.0, g.truncated, r.gen_key,
        )])
        run.add_scores(ScoreRow(r.key, s.metric, s.value, s.reason, sc.name, sc.version) for sc, s in _score(scorers, g, r.example))
        done.add(r.key)
    if done:
        run.flush()
    return done


def _total(stats: EvalStats) -> EvalStats:
    """The counts of every rank, on every rank (cached counts are the same on every rank already)."""
    every = distributed.broadcast(distributed.gather((stats.generated, stats.errors, stats.first_error)) or [])
    stats.generated = sum(g for g, _, _ in every)
    stats.errors = sum(e for _, e, _ in every)
    stats.first_error = next((f for _, _, f in every if f), None)
    return stats


def _bar(total: int, desc: str):
    """A progress bar on stderr (for a terminal; logs get one line per flush instead)."""
    import sys

    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"  {desc}", unit="ex", file=sys.stderr, leave=True, dynamic_ncols=True)


def _perplexity(model, base: LoadedBase, chunk: Sequence[_Request], routes: Sequence[str] | None) -> list[list[ScoreRow] | None]:
    from harness.metrics.perplexity import reference_nll

    refs = [r.example.target or "" for r in chunk]
    results = reference_nll(model, base.tokenizer, [r.prompt for r in chunk], refs, adapter_names=routes)
    out: list[list[ScoreRow] | None] = []
    for r, res in zip(chunk, results):
        reason = None if res.mean_nll is not None else "reference has no tokens"
        out.append([
            ScoreRow(r.key, "nll", res.mean_nll, reason, "perplexity", "1"),
            ScoreRow(r.key, "perplexity", res.perplexity if res.mean_nll is not None else None, reason, "perplexity", "1"),
        ])
    return out
