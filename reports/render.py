"""Render a ``Comparison`` to one self-contained HTML file.

Autoescaping is switched on explicitly (``select_autoescape`` would not cover ``*.html.j2``), undefined
variables raise, the page carries a Content-Security-Policy that allows no script at all, and the file
is written to a temporary name and renamed so a reader never sees half a report. Model outputs are
hostile text: they only ever reach the page as escaped strings.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import jinja2

from harness.comparison import HEADLINE, Comparison

TEMPLATES = Path(__file__).resolve().parent / "templates"
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'"


def _env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["pct"] = lambda v: "—" if v is None else f"{100 * v:.1f}%"
    env.filters["num"] = lambda v: "—" if v is None else f"{v:.3f}"
    return env


def render_html(comparison: Comparison) -> str:
    """The report as a string (for tests); ``write_report`` writes it atomically."""
    headline = [c for c in comparison.cells if HEADLINE.get(c.suite) == c.metric]
    suites = sorted({c.suite for c in headline})
    table = [
        (t, [comparison.cell(t, s, HEADLINE[s]) for s in suites])
        for t in comparison.targets
    ]
    others = [c for c in comparison.cells if HEADLINE.get(c.suite) != c.metric]
    return _env().get_template("report.html.j2").render(
        c=comparison, csp=CSP, suites=suites, headline_metrics=[HEADLINE[s] for s in suites],
        table=table, others=others,
    )


def write_report(comparison: Comparison, path: Path) -> Path:
    """Write the report to ``path`` atomically (temporary file in the same directory, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    html = render_html(comparison)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(html)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
