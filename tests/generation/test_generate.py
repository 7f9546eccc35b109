"""Batched generation: same outputs as one-at-a-time, input order kept, stop strings, errors isolated.

Every test runs on both paths (the fast decode loop and model.generate); tests/generation/test_generate_fast.py
compares the two directly."""

import pytest

from harness.generation.generate import GenerationSettings, cut_at_stop, generate, render_prompt
from harness.models.base import load_base, resolve_base


@pytest.fixture(autouse=True, params=["fast", "hf"])
def generation_path(request, monkeypatch):
    monkeypatch.setenv("HARNESS_GENERATE", request.param)
    return request.param


@pytest.fixture(scope="module")
def base(tiny_model_dir):
    return load_base(resolve_base(str(tiny_model_dir)))


PROMPTS = ["What is two plus two?", "Capital of France?", "Send three red hoodies, size M, express shipping please.", "Hi"]


def test_batched_equals_one_by_one_in_input_order(base):
    rendered = [render_prompt(base.tokenizer, p) for p in PROMPTS]
    s = GenerationSettings(max_new_tokens=8)
    batched = generate(base.model, base.tokenizer, rendered, s, batch_size=4)
    single = [generate(base.model, base.tokenizer, [p], s, batch_size=1)[0] for p in rendered]
    assert [g.text for g in batched] == [g.text for g in single]
    assert [g.n_prompt_tokens for g in batched] == [len(base.tokenizer(p, add_special_tokens=False)["input_ids"]) for p in rendered]
    assert all(g.error is None and 0 <= g.n_new_tokens <= 8 for g in batched)


def test_render_prompt_uses_chat_template(base):
    out = render_prompt(base.tokenizer, "hello", system="be brief")
    assert out.startswith("<|im_start|>system\nbe brief") and out.endswith("<|im_start|>assistant\n")
    assert render_prompt(base.tokenizer, "hello", raw=True) == "hello"


def test_stop_strings_cut_output():
    assert cut_at_stop("Paris.\n\nMore text", ["\n\n"]) == "Paris."
    assert cut_at_stop("a STOP b END", ["END", "STOP"]) == "a "
    assert cut_at_stop("nothing", []) == "nothing"


def test_too_long_prompt_is_an_error_row_not_a_crash(base):
    long_prompt = "hello " * 600  # the tiny model has 512 positions
    out = generate(base.model, base.tokenizer, [long_prompt, "Hi"], GenerationSettings(max_new_tokens=4), batch_size=2)
    assert out[0].text is None and "exceeds" in out[0].error
    assert out[1].error is None and out[1].text is not None


def test_an_answer_cut_by_max_new_tokens_is_marked_truncated(base):
    """Issue 11.5: "1000 cubic centimetres" cut to "...equal to 100" must say it was cut."""
    from harness.generation.generate import GenerationSettings, generate

    prompts = [render_prompt(base.tokenizer, "Capital of France?")]
    [cut] = generate(base.model, base.tokenizer, prompts, GenerationSettings(max_new_tokens=3))
    [long] = generate(base.model, base.tokenizer, prompts, GenerationSettings(max_new_tokens=40))
    assert cut.n_new_tokens == 3 and cut.truncated
    # the same prompt given room either ends (eos) or runs to the new limit, and says which
    assert long.truncated == (long.n_new_tokens >= 40)
