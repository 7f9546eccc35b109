"""A suite's prompt template: compiled once per template, rendered in Jinja's immutable sandbox
(``render_user_text``), with a template mistake or an unsafe operation raised as a suite error that names
the suite file and the example.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from harness.errors import SafetyError, SuiteError

if TYPE_CHECKING:
    from harness.scorers import Example
    from harness.suites.types import Suite


@functools.lru_cache(maxsize=64)
def _compiled(template: str):  # -> jinja2.Template
    """A suite's template compiled once, not once per example (compiling is ~1 ms; a suite has hundreds)."""
    return _env().from_string(template)


#: the most characters a template may render, or build with one repetition (``'x' * n``): a prompt is a few
#: thousand characters; ``{{ 'x' * 200000000 }}`` asked for 4 GB and the process aborted
MAX_RENDERED_CHARS = 200_000


@functools.lru_cache(maxsize=1)
def _env():  # -> jinja2.sandbox.ImmutableSandboxedEnvironment
    """Suites are shared data: their templates render in Jinja's immutable sandbox, never with
    access to Python internals (``cycler.__init__.__globals__.os`` raises SecurityError), and with bounded
    output: a repetition (``*``) or power (``**``) whose result would pass ``MAX_RENDERED_CHARS`` is refused
    before it is computed."""
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

    class Bounded(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset({"*", "**"})

        def call_binop(self, context, operator, left, right):
            if operator == "*":
                for seq, n in ((left, right), (right, left)):
                    if isinstance(seq, (str, list, tuple)) and isinstance(n, int) and len(seq) * n > MAX_RENDERED_CHARS:
                        raise SecurityError(f"a repetition of {len(seq)} x {n} items passes the cap of "
                                            f"{MAX_RENDERED_CHARS:,}")
            if operator == "**" and isinstance(right, (int, float)) and abs(right) > 64 and not (
                    isinstance(left, (int, float)) and abs(left) <= 1):
                raise SecurityError(f"a power with exponent {right} is refused (at most 64)")
            return super().call_binop(context, operator, left, right)

    return Bounded(undefined=jinja2.StrictUndefined, keep_trailing_newline=False, autoescape=False)


def _render(template: str, variables: dict) -> str:
    """Render chunk by chunk, stopping as soon as the text passes ``MAX_RENDERED_CHARS`` (a loop of many
    small pieces is caught as early as one large one)."""
    from jinja2.sandbox import SecurityError

    out: list[str] = []
    total = 0
    for chunk in _compiled(template).generate(**variables):
        total += len(chunk)
        if total > MAX_RENDERED_CHARS:
            raise SecurityError(f"the rendered prompt passes the cap of {MAX_RENDERED_CHARS:,} characters")
        out.append(chunk)
    return "".join(out)


def render_user_text(suite: Suite, example: Example) -> str:
    """Fill the suite's template for one example (before any chat template)."""
    import jinja2

    variables = dict(example.fields)
    variables.update(input=example.input, target=example.target, category=example.category)
    from jinja2.sandbox import SecurityError

    try:
        return _render(suite.prompt.template, variables)
    except SecurityError as exc:
        raise SafetyError(
            f"{suite.path}: prompt.template {suite.prompt.template!r} tried an unsafe operation ({exc}); refused: "
            "suite templates may only fill in fields ({{ input }}, {{ category }}, data columns)"
        ) from None
    except jinja2.UndefinedError as exc:
        raise SuiteError(f"{suite.path}: prompt.template: {exc.message} (example {example.id})") from None
    except (jinja2.TemplateError, TypeError, ValueError, ArithmeticError) as exc:
        raise SuiteError(f"{suite.path}: prompt.template fails on example {example.id}: {exc}") from None
