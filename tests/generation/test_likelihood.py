"""Likelihood without decoding (harness.generation.likelihood) and the multiple-choice scores built on it.

Every figure is held against a computation written here in plain torch: the whole (context + continuation) through
the model in one forward, log_softmax, the continuation's tokens gathered and summed; the tokens split as
lm-evaluation-harness 0.4 splits them (trailing whitespace of the context moved to the continuation, the pair
encoded whole and cut at the context's own token count, an empty context the BOS token)."""

from __future__ import annotations

import math

import pytest
import torch

from harness.generation.likelihood import drift, encode_pair, loglikelihoods
from harness.models.base import load_base, resolve_base
from harness.scorers.likelihood import loglikelihood_scores, multiple_choice_scores

Q = "Question: What is the capital of France?\nAnswer:"


@pytest.fixture(scope="module")
def base(tiny_model_dir):
    return load_base(resolve_base(str(tiny_model_dir)))


@pytest.fixture(scope="module")
def lora(tiny_model_dir):
    """A PEFT LoRA ("default") on its own copy of the tiny model, initialised at random so it is not a no-op."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    cfg = LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj", "o_proj"], init_lora_weights=False)
    return get_peft_model(model, cfg).eval()


def lmeval_split(tok, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval 0.4's split, written out with the tokenizer alone."""
    n = len(context) - len(context.rstrip())
    if n:
        context, continuation = context[:-n], context[-n:] + continuation
    if context == "":
        return [tok.bos_token_id], tok(continuation, add_special_tokens=False)["input_ids"]
    ctx = tok(context)["input_ids"]
    whole = tok(context + continuation)["input_ids"]
    return ctx, whole[len(ctx):]


def reference(model, ctx: list[int], cont: list[int]) -> tuple[float, bool]:
    """(sum of the continuation's log-probabilities, every continuation token the argmax): one full forward."""
    ids = torch.tensor([ctx + cont])
    with torch.no_grad():
        lp = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
    at = lp[len(ctx) - 1:len(ctx) + len(cont) - 1]  # token t is predicted at position t - 1
    want = torch.tensor(cont)
    return float(at.gather(-1, want[:, None]).sum()), bool((at.argmax(-1) == want).all())


def greedy_continuation(model, tok, context: str, n: int) -> str:
    """The model's own greedy n tokens after ``context`` as text (checked to encode back to the same tokens)."""
    ids = tok(context)["input_ids"]
    got: list[int] = []
    for _ in range(n):
        with torch.no_grad():
            got.append(int(model(input_ids=torch.tensor([ids + got])).logits[0, -1].argmax()))
    text = tok.decode(got)
    assert lmeval_split(tok, context, text) == (ids, got), "the greedy tokens must survive decode/encode"
    return text


@pytest.fixture(scope="module")
def requests_(base):
    """Four choices sharing one context, multi- and single-token continuations, contexts ending in spaces and a
    newline, an empty context, and two continuations the model would write itself (greedy)."""
    model, tok = base.model, base.tokenizer
    reqs = [(Q, " Paris"), (Q, " Lyon"), (Q, " Marseille is big"), (Q, " N"),
            ("The order is ", "shirt"), ("Answer: ", "Paris"), ("Capital of France?\n", "Paris"),
            ("", "Paris"), ("", " Four."), ("Hi", "!"),
            ("What is two plus two?", " Four. Please send three red hoodies, size M"),
            ("The capital of France is", greedy_continuation(model, tok, "The capital of France is", 2)),
            ("What is two plus two?", greedy_continuation(model, tok, "What is two plus two?", 1))]
    split = [lmeval_split(tok, c, x) for c, x in reqs]
    # the mix is what the docstring says it is
    assert sum(c == Q for c, _ in reqs) >= 3
    assert any(len(cont) == 1 for _, cont in split) and any(len(cont) > 3 for _, cont in split)
    return reqs, split


@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("batch_size", [1, 4, 32])
def test_loglikelihoods_equal_one_full_forward_per_request(base, requests_, shared, batch_size):
    reqs, split = requests_
    got = loglikelihoods(base.model, base.tokenizer, reqs, batch_size, shared=shared)
    assert len(got) == len(reqs)
    want = [reference(base.model, ctx, cont) for ctx, cont in split]
    for (c, x), (_, cont), g, (lp, greedy) in zip(reqs, split, got, want):
        assert g.logprob == pytest.approx(lp, abs=1e-4), (c, x)
        assert g.is_greedy == greedy, (c, x)
        assert g.n_tokens == len(cont), (c, x)
    # is_greedy is not constant here: the comparison above could fail either way
    assert {g.is_greedy for g in got} == {True, False}


def test_a_request_longer_than_the_model_is_cut_on_the_left_as_lm_eval_cuts_it(base):
    """The tiny model has 512 positions: lm-eval keeps the last 513 tokens of context + continuation and feeds
    all but the last."""
    tok, model = base.tokenizer, base.model
    context = "hello " * 400 + "Answer:"
    ctx, cont = lmeval_split(tok, context, " Paris")
    assert len(ctx) + len(cont) > 513
    kept = (ctx + cont)[-513:]
    with torch.no_grad():
        lp = torch.log_softmax(model(input_ids=torch.tensor([kept[:-1]])).logits[0].float(), dim=-1)
    want = float(lp[-len(cont):].gather(-1, torch.tensor(cont)[:, None]).sum())
    for shared in (True, False):
        [got] = loglikelihoods(model, tok, [(context, " Paris")], 4, shared=shared)
        assert got.logprob == pytest.approx(want, abs=1e-4)
        assert got.n_tokens == len(cont)


@pytest.mark.parametrize("shared", [True, False])
def test_routed_rows_score_the_base_and_the_adapter_each_on_its_own(lora, base, shared):
    """adapter_names routes each request: "__base__" rows equal the model with the adapter disabled, "default" rows
    the adapter; the same context under two routes is two contexts."""
    tok = base.tokenizer
    reqs = [(Q, " Paris"), (Q, " Lyon"), (Q, " Paris"), (Q, " Lyon"), ("The order is ", "shirt"), ("", "Paris")]
    routes = ["__base__", "__base__", "default", "default", "default", "__base__"]
    got = loglikelihoods(lora, tok, reqs, 3, routes, shared=shared)
    for (c, x), route, g in zip(reqs, routes, got):
        ctx, cont = lmeval_split(tok, c, x)
        if route == "__base__":
            with lora.disable_adapter():
                lp, greedy = reference(lora, ctx, cont)
        else:
            lp, greedy = reference(lora, ctx, cont)
        assert g.logprob == pytest.approx(lp, abs=1e-4), (c, x, route)
        assert g.is_greedy == greedy
    # the adapter changes the figures, so a wrong route could not pass
    assert abs(got[0].logprob - got[2].logprob) > 1e-3


def test_encode_pair_moves_the_contexts_trailing_whitespace_to_the_continuation(base):
    tok = base.tokenizer
    assert encode_pair(tok, "Answer: ", "x") == encode_pair(tok, "Answer:", " x")
    assert encode_pair(tok, "Answer:", " x") == (tok("Answer:")["input_ids"], tok("Answer: x")["input_ids"][len(tok("Answer:")["input_ids"]):])
    assert encode_pair(tok, "Answer:\n\n", "x") == encode_pair(tok, "Answer:", "\n\nx")
    ctx, cont = encode_pair(tok, "Answer:\n\n", "x")
    assert ctx + cont == tok("Answer:\n\nx")["input_ids"] and len(cont) >= 2
    # an empty context is the BOS token
    assert encode_pair(tok, "", " Paris") == ([tok.bos_token_id], tok(" Paris", add_special_tokens=False)["input_ids"])


@pytest.mark.parametrize("shared", [True, False])
def test_a_continuation_with_no_tokens_is_a_value_error(base, shared):
    with pytest.raises(ValueError, match="no token"):
        loglikelihoods(base.model, base.tokenizer, [(Q, " Paris"), ("Hi", "")], 4, shared=shared)


@pytest.mark.parametrize("shared", [True, False])
def test_a_whitespace_only_context_is_scored_against_bos_or_refused(base, shared):
    tok = base.tokenizer
    try:
        [got] = loglikelihoods(base.model, tok, [(" ", "Paris")], 4, shared=shared)
    except ValueError:
        return  # refused like a continuation with no token: acceptable
    lp, _ = reference(base.model, [tok.bos_token_id], tok(" Paris", add_special_tokens=False)["input_ids"])
    assert got.logprob == pytest.approx(lp, abs=1e-4)


# --- scores -----------------------------------------------------------------------------------------------------


def _by_metric(scores):
    return {s.metric: s.value for s in scores}


def test_multiple_choice_a_tie_goes_to_the_first_choice():
    pred, scores = multiple_choice_scores([-2.0, -1.0, -1.0], ["a", "b", "c"], 2)
    assert pred == 1
    assert _by_metric(scores) == {"acc": 0.0, "acc_norm": 0.0, "margin": 0.0}
    pred, scores = multiple_choice_scores([-1.0, -1.0, -3.0], ["a", "b", "c"], 0)
    assert pred == 0
    assert _by_metric(scores) == {"acc": 1.0, "acc_norm": 1.0, "margin": 0.0}


def test_acc_norm_divides_by_the_choices_length_in_characters():
    # -6 / len("Washington") = -0.6 beats -4 / len("Rome") = -1.0, while -4 beats -6 unnormalised
    pred, scores = multiple_choice_scores([-6.0, -4.0], ["Washington", "Rome"], 0)
    assert pred == 1
    assert _by_metric(scores) == {"acc": 0.0, "acc_norm": 1.0, "margin": -2.0}
    # the other way round: the short right answer wins raw and loses normalised (-3/2 = -1.5 < -4/8 = -0.5)
    pred, scores = multiple_choice_scores([-3.0, -4.0], ["Oh", "Canberra"], 0)
    assert pred == 0
    assert _by_metric(scores) == {"acc": 1.0, "acc_norm": 0.0, "margin": 1.0}


def test_margin_is_the_right_choice_minus_the_best_wrong_one():
    pred, scores = multiple_choice_scores([-4.0, -1.5, -3.0, -2.25], ["w", "x", "y", "z"], 1)
    assert pred == 1
    assert _by_metric(scores) == {"acc": 1.0, "acc_norm": 1.0, "margin": 0.75}
    _, scores = multiple_choice_scores([-4.0, -1.5, -3.0, -2.25], ["w", "x", "y", "z"], 2)
    assert _by_metric(scores) == {"acc": 0.0, "acc_norm": 0.0, "margin": -1.5}


def test_loglikelihood_scores_are_the_logprob_and_greedy_as_acc():
    assert _by_metric(loglikelihood_scores(-3.25, True)) == {"loglikelihood": -3.25, "acc": 1.0}
    assert _by_metric(loglikelihood_scores(-0.5, False)) == {"loglikelihood": -0.5, "acc": 0.0}


# --- drift ------------------------------------------------------------------------------------------------------


def reference_drift_ids(model, pb: list[int], pa: list[int], ans: list[int], adapter_on: bool) -> tuple[float, float]:
    """(mean over the answer's tokens of KL(base || adapter), mean NLL under the adapter minus under the base), one
    unpadded forward per row: the base row with the adapter disabled, the adapter row with it enabled (or disabled
    for a "__base__" route)."""

    def logprobs(ids: list[int], on: bool):
        with torch.no_grad():
            if on:
                return torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), -1)
            with model.disable_adapter():
                return torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), -1)

    lb = logprobs(pb + ans, False)[len(pb) - 1:len(pb) - 1 + len(ans)]
    la = logprobs(pa + ans, adapter_on)[len(pa) - 1:len(pa) - 1 + len(ans)]
    kl = float((lb.exp() * (lb - la)).sum(-1).mean())
    want = torch.tensor(ans)[:, None]
    return kl, float(-la.gather(-1, want).mean()) - float(-lb.gather(-1, want).mean())


def reference_drift(model, tok, base_prompt: str, prompt: str, answer: str, adapter_on: bool) -> tuple[float, float]:
    def enc(text: str) -> list[int]:
        return tok(text, add_special_tokens=False)["input_ids"]

    return reference_drift_ids(model, enc(base_prompt), enc(prompt), enc(answer), adapter_on)


DRIFT_ITEMS = [
    ("Question: What is the capital of France?\nAnswer:", "Question: What is the capital of France?\nAnswer:", " Paris is", "default"),
    ("What is two plus two?", "Please: What is two plus two?", " Four. Send three red hoodies", "default"),
    ("Hi", "Hi", "", "default"),
    ("The order is", "The order is", " shirt, size M", "__base__"),
    ("abc", "abc def", " xyz", "__base__"),
]


def test_drift_equals_an_independent_kl_and_nll_delta(lora, base):
    tok = base.tokenizer
    want = [reference_drift(lora, tok, bp, p, answer, route == "default") if answer else None
            for bp, p, answer, route in DRIFT_ITEMS]
    for batch_size in (2, 4, 16):  # one item a batch, two, all five (rows of different lengths padded together)
        got = drift(lora, tok, DRIFT_ITEMS, "__base__", batch_size)
        assert len(got) == len(DRIFT_ITEMS)
        for (bp, _, answer, route), d, w in zip(DRIFT_ITEMS, got, want):
            if w is None:
                continue
            assert d.reason is None
            assert d.n_tokens == len(tok(answer, add_special_tokens=False)["input_ids"])
            assert d.kl is not None and d.kl >= 0.0
            assert d.kl == pytest.approx(w[0], abs=1e-4), (batch_size, bp, route)
            assert d.nll_delta == pytest.approx(w[1], abs=1e-4), (batch_size, bp, route)
        # the adapter moved the model: a KL that ignored the route could not pass
        assert got[0].kl > 1e-3 and got[1].kl > 1e-3
        # both rows on the base with the same prompt: no drift at all
        assert abs(got[3].kl) < 1e-6 and abs(got[3].nll_delta) < 1e-6
        # both rows on the base with different prompts: a prompt change alone is a drift too
        assert got[4].kl > 1e-4


def test_drift_of_an_empty_base_answer_is_none_with_a_reason(lora, base):
    [empty, full] = drift(lora, base.tokenizer, [DRIFT_ITEMS[2], DRIFT_ITEMS[0]], "__base__", 4)
    assert empty.kl is None and empty.nll_delta is None and empty.n_tokens == 0
    assert empty.reason and "empty" in empty.reason
    assert full.kl is not None and math.isfinite(full.kl) and full.reason is None


def test_drift_of_an_empty_prompt_is_none_or_a_true_figure(lora, base):
    """Acceptable: None with a reason; the answer's tokens after the first, conditioned on it; or the answer after BOS."""
    tok = base.tokenizer
    ans = tok(" Paris is", add_special_tokens=False)["input_ids"]
    for items in ([("", "", " Paris is", "default"), DRIFT_ITEMS[0]], [("", "", " Paris is", "default")]):
        try:
            got = drift(lora, tok, items, "__base__", 4)
        except ValueError:
            continue  # refused up front: acceptable
        d = got[0]
        if d.kl is None:
            assert d.reason
            continue
        if d.n_tokens == len(ans) - 1:
            kl, nll = reference_drift_ids(lora, ans[:1], ans[:1], ans[1:], True)
        else:
            bos = [tok.bos_token_id]
            kl, nll = reference_drift_ids(lora, bos, bos, ans, True)
        assert d.kl == pytest.approx(kl, abs=1e-4) and d.nll_delta == pytest.approx(nll, abs=1e-4)
