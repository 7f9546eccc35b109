"""Reference NLL/perplexity: equals the model's own masked cross-entropy, independent of batching."""

import math

import pytest
import torch

from harness.generation.generate import render_prompt
from harness.metrics.perplexity import reference_nll
from harness.models.base import load_base, resolve_base


@pytest.fixture(scope="module")
def base(tiny_model_dir):
    return load_base(resolve_base(str(tiny_model_dir)))


def _hf_loss(base, prompt: str, reference: str) -> float:
    """The Trainer's loss for one example with the prompt masked out (labels -100)."""
    tok = base.tokenizer
    p = tok(prompt, add_special_tokens=False)["input_ids"]
    r = tok(reference, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([p + r])
    labels = ids.clone()
    labels[0, : len(p)] = -100
    with torch.no_grad():
        return float(base.model(input_ids=ids, labels=labels).loss)


def test_mean_nll_equals_the_masked_training_loss(base):
    prompt = render_prompt(base.tokenizer, "What is the capital of France?")
    res = reference_nll(base.model, base.tokenizer, [prompt], ["Paris is the capital."])[0]
    assert res.n_tokens == len(base.tokenizer("Paris is the capital.", add_special_tokens=False)["input_ids"])
    assert res.mean_nll == pytest.approx(_hf_loss(base, prompt, "Paris is the capital."), rel=1e-5)
    assert res.perplexity == pytest.approx(math.exp(res.mean_nll))


def test_batching_and_padding_do_not_change_numbers(base):
    prompts = [render_prompt(base.tokenizer, q) for q in ["Hi", "Name a colour of the sky on a clear summer day.", "2+2?"]]
    refs = ["Hello there, how can I help you today?", "Blue.", "4"]
    batched = reference_nll(base.model, base.tokenizer, prompts, refs, batch_size=3)
    single = [reference_nll(base.model, base.tokenizer, [p], [r], batch_size=1)[0] for p, r in zip(prompts, refs)]
    for b, s in zip(batched, single):
        assert b.n_tokens == s.n_tokens
        assert b.mean_nll == pytest.approx(s.mean_nll, rel=1e-5, abs=1e-6)


def test_empty_reference_has_no_value(base):
    res = reference_nll(base.model, base.tokenizer, ["Hi"], [""])[0]
    assert res.n_tokens == 0 and res.mean_nll is None and res.perplexity is None
