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


@functools.lru_cache(maxsize=1)
def _env():  # -> jinja2.sandbox.ImmutableSandboxedEnvironment
    """Suites are shared data: their templates render in Jinja's immutable sandbox, never with
    access to Python internals (``cycler.__init__.__globals__.os`` raises SecurityError)."""
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    return ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined, keep_trailing_newline=False, autoescape=False)


def render_user_text(suite: Suite, example: Example) -> str:
    """Fill the suite's template for one example (before any chat template)."""
    import jinja2

    variables = dict(example.fields)
    variables.update(input=example.input, target=example.target, category=example.category)
    from jinja2.sandbox import SecurityError

    try:
        return _compiled(suite.prompt.template).render(**variables)
    except SecurityError as exc:
        raise SafetyError(
            f"{suite.path}: prompt.template {suite.prompt.template!r} tried an unsafe operation ({exc}); refused: "
            "suite templates may only fill in fields ({{ input }}, {{ category }}, data columns)"
        ) from None
    except jinja2.UndefinedError as exc:
        raise SuiteError(f"{suite.path}: prompt.template: {exc.message} (example {example.id})") from None
    except (jinja2.TemplateError, TypeError, ValueError, ArithmeticError) as exc:
        raise SuiteError(f"{suite.path}: prompt.template fails on example {example.id}: {exc}") from None
