"""The fast generation path (own continuous-batching decode loop) against the reference path
(``model.generate`` on fixed batches): the same greedy outputs with stop strings, adapters at several
scales routed per row through ``adapter_names`` while rows leave and join the batch, a prompt too long
for the model, and one bad row isolated; the path choice is logged and can be forced."""

from __future__ import annotations

import pytest
import torch

from harness.generation.generate import GenerationSettings, choose_path, generate, render_prompt
from tests.analysis.test_sweep import make_adapter

QUESTIONS = [
    "Hi",
    "What is two plus two?",
    "Capital of France?",
    "Send three red hoodies, size M, express shipping please.",
    "The order is shirt, quantity 2.",
    "abc",
    "Please send two shirts to Paris, size XL, and one red hoodie.",
    "What is the capital of France? Answer in one word.",
]


@pytest.fixture(scope="module")
def base(tiny_model_dir):
    from harness.models.base import load_base, resolve_base

    return load_base(resolve_base(str(tiny_model_dir)), device="cpu")


@pytest.fixture(scope="module")
def adapters(tiny_model_dir, tmp_path_factory):
    from harness.models.adapters import inspect_adapter

    tmp = tmp_path_factory.mktemp("adapters")
    return (inspect_adapter(make_adapter(tiny_model_dir, tmp / "a", 1)),
            inspect_adapter(make_adapter(tiny_model_dir, tmp / "b", 2, use_rslora=True)))


def _same(fast, ref) -> None:
    assert [g.text for g in fast] == [g.text for g in ref]
    assert [g.truncated for g in fast] == [g.truncated for g in ref]
    assert [g.n_prompt_tokens for g in fast] == [g.n_prompt_tokens for g in ref]
    assert [g.error is None for g in fast] == [g.error is None for g in ref]


def test_fast_equals_reference_with_stops_adapters_scales_and_a_too_long_prompt(base, adapters):
    from harness.evaluation.engine import attached
    from harness.evaluation.targets import Target

    a, b = adapters
    targets = [Target(None, 0.0), Target(a, 0.5), Target(a, 1.0), Target(b, 2.0)]
    rendered = [render_prompt(base.tokenizer, q) for q in QUESTIONS]
    # What the tiny models say (seeded): the base "\n\n\n...", the adapters "898989", " hoodies hoodies",
    # "pp89ppp", "!!!!". "\n\n" starts in the prompt (the chat prompt ends in "\n"): model.generate's
    # criterion ends those rows at their first token, and the fast path must do the same.
    stops = ("\n\n", "9p", "s hood", "!!!")
    too_long = "hello " * 600  # the tiny model has 512 positions
    with attached(base, targets, checks=None) as group:
        rows = [(t, p) for p in rendered for t in targets] + [(targets[1], too_long)]
        prompts = [p for _, p in rows]
        names = group.route([t for t, _ in rows])
        for settings in (GenerationSettings(max_new_tokens=10, stop=stops), GenerationSettings(max_new_tokens=6)):
            ref = generate(group.model, base.tokenizer, prompts, settings, 5, adapter_names=names, path="hf")
            # batch 5 over 33 prompts: rows end at different steps, so rows leave and join (with their names)
            fast = generate(group.model, base.tokenizer, prompts, settings, 5, adapter_names=names, path="fast")
            _same(fast, ref)
            assert fast[-1].error is not None and "exceeds" in fast[-1].error
        # the stop strings did cut answers, and adapters changed answers (the routing was exercised)
        cut = generate(group.model, base.tokenizer, prompts, GenerationSettings(max_new_tokens=10, stop=stops), 5,
                       adapter_names=names, path="fast")
        assert sum(not g.truncated and g.n_new_tokens < 10 for g in cut[:-1]) >= 3
        per_target = [[g.text for (t, _), g in zip(rows, cut) if t == target] for target in targets]
        assert len({tuple(x) for x in per_target}) > 1


def test_one_unknown_adapter_name_fails_its_row_only(base, adapters):
    from harness.evaluation.engine import attached
    from harness.evaluation.targets import Target

    a, _ = adapters
    targets = [Target(None, 0.0), Target(a, 1.0)]
    rendered = [render_prompt(base.tokenizer, q) for q in QUESTIONS[:5]]
    with attached(base, targets, checks=None) as group:
        names = group.route([targets[k % 2] for k in range(len(rendered))])
        names[2] = "no_such_adapter"
        s = GenerationSettings(max_new_tokens=6)
        ref = generate(group.model, base.tokenizer, rendered, s, 4, adapter_names=names, path="hf")
        fast = generate(group.model, base.tokenizer, rendered, s, 4, adapter_names=names, path="fast")
    _same(fast, ref)
    assert fast[2].error is not None and all(g.error is None for k, g in enumerate(fast) if k != 2)


def test_a_failing_decode_step_reruns_its_rows_alone(base):
    """A step that raises (whatever the cause) costs its rows a rerun one by one, not their answers."""
    rendered = [render_prompt(base.tokenizer, q) for q in QUESTIONS]
    s = GenerationSettings(max_new_tokens=8)
    ref = generate(base.model, base.tokenizer, rendered, s, 4, path="hf")

    def boom(module, args, kwargs):
        ids = kwargs.get("input_ids")
        if ids is not None and ids.shape[1] == 1 and ids.shape[0] > 1:
            raise RuntimeError("injected failure in a batched decode step")

    handle = base.model.register_forward_pre_hook(boom, with_kwargs=True)
    try:
        fast = generate(base.model, base.tokenizer, rendered, s, 4, path="fast")
    finally:
        handle.remove()
    _same(fast, ref)
    assert all(g.error is None for g in fast)


def test_progress_counts_every_prompt(base):
    rendered = [render_prompt(base.tokenizer, q) for q in QUESTIONS]
    seen: list[int] = []
    generate(base.model, base.tokenizer, rendered, GenerationSettings(max_new_tokens=5), 3, progress=seen.append, path="fast")
    assert seen == sorted(seen) and seen[-1] == len(rendered)


def test_path_choice_is_logged_and_can_be_forced(base, monkeypatch):
    lines: list[str] = []
    s = GenerationSettings(max_new_tokens=2)
    generate(base.model, base.tokenizer, ["Hi"], s, log=lines.append)
    monkeypatch.setenv("HARNESS_GENERATE", "hf")
    generate(base.model, base.tokenizer, ["Hi"], s, log=lines.append)
    assert lines[0].startswith("generate: fast path (default)") and lines[1].startswith("generate: hf path (HARNESS_GENERATE=hf)")
    monkeypatch.delenv("HARNESS_GENERATE")
    assert choose_path(base.model, GenerationSettings(do_sample=True))[1].startswith("falls back: sampling")
    with pytest.raises(ValueError, match="fast generation path cannot run"):
        choose_path(base.model, GenerationSettings(do_sample=True), "fast")
    with pytest.raises(ValueError, match="must be one of"):
        choose_path(base.model, s, "vllm")


def test_slab_cache_attention_equals_concatenated_cache(base):
    """The preallocated cache returns the same keys/values model.generate's DynamicCache would."""
    from transformers import DynamicCache

    from harness.generation.fastdecode import _slab_layer_class

    slab = _slab_layer_class()(torch.zeros(2, 2, 8, 4), torch.zeros(2, 2, 8, 4), 0)
    plain = DynamicCache().layers[0] if DynamicCache().layers else None
    ref_k = ref_v = None
    for step in range(5):
        k, v = torch.randn(2, 2, 1 if step else 3, 4), torch.randn(2, 2, 1 if step else 3, 4)
        got_k, got_v = slab.update(k, v)
        ref_k = k if ref_k is None else torch.cat([ref_k, k], -2)
        ref_v = v if ref_v is None else torch.cat([ref_v, v], -2)
        assert torch.equal(got_k, ref_k) and torch.equal(got_v, ref_v) and slab.get_seq_length() == ref_k.shape[-2]
    assert plain is None or plain.get_seq_length() == 0


def test_the_thread_count_is_the_process_one_unless_told_and_is_held(monkeypatch):
    """Issue 34.2: one matmul timed at each refill picked the thread count from the neighbours' load of that moment.
    The count is now the process's own, or HARNESS_THREADS, and the choice is said."""
    import torch

    from harness.errors import UsageError
    from harness.generation.fastdecode import decode_threads

    monkeypatch.delenv("HARNESS_THREADS", raising=False)
    monkeypatch.delenv("HARNESS_GENERATE_THREADS", raising=False)
    n, why = decode_threads()
    assert n == torch.get_num_threads() and "the process's torch thread count" in why
    monkeypatch.setenv("HARNESS_THREADS", "1")
    assert decode_threads() == (1, "1 thread(s) (HARNESS_THREADS)")
    monkeypatch.setenv("HARNESS_THREADS", "zero")
    with pytest.raises(UsageError, match="HARNESS_THREADS='zero'"):
        decode_threads()
