import json

import pytest

from harness.errors import SuiteError
from harness.scorers import Example, Score, get_scorer, scorer_names


def ex(target=None, aliases=(), **kw):
    return Example(id="x", input="q", target=target, aliases=tuple(aliases), **kw)


def test_registry_lists_builtins():
    assert {"exact_match", "alias_match", "json_field", "format_leakage"} <= set(scorer_names())


def test_scorer_names_is_the_list_every_unknown_scorer_error_prints(tmp_path):
    """Issue 16.7: perplexity was named in an error's list but missing from scorer_names()."""
    from harness.metrics import model_metric_names
    from harness.suites.spec import load_suite

    names = scorer_names()
    assert "perplexity" in names and set(model_metric_names()) <= set(names) and names == sorted(set(names))
    listed = "available: " + ", ".join(names)
    with pytest.raises(SuiteError) as got:
        get_scorer("nope")
    assert str(got.value).endswith(listed)
    (tmp_path / "data.jsonl").write_text(json.dumps({"question": "q", "answer": "a"}) + "\n")
    (tmp_path / "suite.yaml").write_text("name: s\nversion: 1\ndata: {path: data.jsonl, fields: {input: question, "
                                         "target: answer}}\nscorers:\n  - name: nope\n")
    with pytest.raises(SuiteError) as got:
        load_suite(tmp_path / "suite.yaml")
    assert f"unknown scorer 'nope'; {listed}" in str(got.value)
    # every listed name is usable in a suite; perplexity is computed by the runner, not built as a text scorer
    for name in names:
        (tmp_path / "suite.yaml").write_text(
            "name: s\nversion: 1\ndata: {path: data.jsonl, fields: {input: question, target: answer}}\n"
            f"scorers:\n  - name: {name}\n" + ("    args: {keys: [a]}\n" if name == "format_leakage" else "")
            + ("    args: {pattern: a}\n" if name == "regex" else ""))
        assert [sc.name for sc in load_suite(tmp_path / "suite.yaml").scorers] == [name]
    with pytest.raises(SuiteError, match="'perplexity' is a model metric"):
        get_scorer("perplexity")


def test_unknown_scorer_and_bad_args_name_the_fix():
    with pytest.raises(SuiteError, match="available"):
        get_scorer("nope")
    with pytest.raises(SuiteError, match="accepted arguments"):
        get_scorer("exact_match", {"bogus": 1})


def test_exact_match_normalizes():
    s = get_scorer("exact_match")
    assert s("  The Paris! ", ex("paris"))[0].value == 1.0
    assert s("Lyon", ex("Paris"))[0].value == 0.0


@pytest.mark.parametrize(
    "output,expected",
    [
        ("The capital of France is Paris.", 1.0),
        ("paris", 1.0),
        ("Parisian food is great", 0.0),
        ("It is Lyon.", 0.0),
        ("Café de Paris", 1.0),
    ],
)
def test_alias_match_whole_words(output, expected):
    assert get_scorer("alias_match")(output, ex("Paris", ["City of Light"]))[0].value == expected


def test_alias_match_uses_aliases_and_numbers():
    s = get_scorer("alias_match")
    assert s("It has eight legs", ex("8", ["eight"]))[0].value == 1.0
    assert s("1,000 metres", ex("1000"))[0].value == 1.0


def test_json_field_order_and_whitespace_insensitive():
    target = json.dumps({"item": "hoodie", "quantity": 3, "size": "M"})
    s = get_scorer("json_field")
    scores = {x.metric: x.value for x in s('{ "size":"m",  "quantity": 3,"item":"Hoodie"}', ex(target))}
    assert scores["json_valid"] == 1.0 and scores["json_exact"] == 1.0
    scores = {x.metric: x.value for x in s('{"item": "hoodie", "quantity": 2, "size": "M"}', ex(target))}
    assert scores["json_exact"] == 0.0 and scores["json_field/quantity"] == 0.0 and scores["json_field/item"] == 1.0


def test_json_field_invalid_json_scores_zero_with_reason():
    out = get_scorer("json_field")('{"item": "hoodie", ', ex('{"item": "hoodie"}'))
    assert all(x.value == 0.0 for x in out)
    assert all("invalid JSON" in x.reason for x in out)


def test_format_leakage():
    s = get_scorer("format_leakage", {"keys": ["item", "quantity"]})
    assert s('{"item": "Paris", "quantity": 1}', ex())[0].value == 1.0
    assert s("Paris is the capital.", ex())[0].value == 0.0
    assert s('{"city": "Paris"}', ex())[0].value == 0.0
    # cut off by max_new_tokens before the object closed: still the task's format
    assert s('{"item": "water", "quantity": 1, "size": "c", "colour": "white",', ex())[0].value == 1.0
    # version 3: the task's format after prose leaks too, closed or not ("I like {"item": ..." starts an order)
    assert s('I like {"item": braces', ex())[0].value == 1.0
    assert s("I like {braces} and items: many", ex())[0].value == 0.0


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_score_never_holds_non_finite(bad):
    s = Score("m", bad)
    assert s.value is None and "non-finite" in s.reason


@pytest.mark.parametrize("output", [
    '{"item": "grass", "quantity": 1, "size": "M", "colour": "green", "shipping": "standard"}',
    '```json\n{"item": "grass", "colour": "green"}\n```',
    '{"item": "grass", "colour": "green", "quant',  # cut off before it closed
    'Sure: {"colour": "green"}',
])
def test_alias_match_never_credits_a_leaked_answer(output):
    """Issue 11.5: contains mode found "green" inside the order JSON and called it correct."""
    [s] = get_scorer("alias_match")(output, ex("green"))
    assert s.value == 0.0 and "leaked" in s.reason
    [s] = get_scorer("alias_match", {"structured_is_wrong": False})(output, ex("green"))
    assert s.value == 1.0


def test_alias_match_still_credits_plain_answers_with_braces_elsewhere():
    assert get_scorer("alias_match")("Green (the colour of chlorophyll)", ex("green"))[0].value == 1.0
