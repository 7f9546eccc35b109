"""Render a ``Report`` (harness/analysis/) to one self-contained HTML file.

Autoescaping is switched on explicitly (``select_autoescape`` would not cover ``*.html.j2``), undefined
variables raise, and the page carries a Content-Security-Policy, first in ``<head>``, that loads
nothing from anywhere and runs one script: the example filters, allowed by its SHA-256. Charts are
static SVG (reports/charts.py). The file is written to a temporary name and renamed, so a reader
never sees half a report. Model outputs and dataset text are hostile: they reach the page only as
escaped text, with bidirectional and invisible characters shown as visible ``<U+202E>`` marks.
Nothing here reads the store or computes a figure: that is harness/analysis/'s job.
"""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

import jinja2
from markupsafe import Markup

from harness.analysis.report_types import RAW_METRICS, Report
from harness.reports.text import shown
from harness.util.files import write_text_atomic

TEMPLATES = Path(__file__).resolve().parent / "templates"
SCRIPT = "filter.js"
CSP = ("default-src 'none'; script-src {script}; style-src 'unsafe-inline'; img-src data:; "
       "base-uri 'none'; form-action 'none'")
# Characters that reorder or hide text (Trojan Source), and C0/C1 controls other than tab and newline.


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.1f}%"


def _value(v: float | None, metric: str = "") -> str:
    if v is None:
        return "—"
    return f"{v:.2f}" if metric in RAW_METRICS else f"{100 * v:.1f}%"


def _score_class(score: float | None, higher_is_better: bool, metric: str) -> str:
    # the colour of one answer's score follows the metric's direction (format leakage 1.0 is bad)
    if score is None:
        return "bad"
    if metric in RAW_METRICS:
        return "neutral"
    return "ok" if (score >= 0.5) == higher_is_better else "bad"


def _env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["pct"] = _pct
    env.filters["num"] = lambda v: "—" if v is None else f"{v:.3f}"
    env.filters["value"] = _value
    env.filters["shown"] = shown
    env.globals["score_class"] = _score_class
    return env


def script_and_csp() -> tuple[Markup, str]:
    """The filter script (static code, not data) and the CSP that allows exactly it by hash."""
    code = (TEMPLATES / SCRIPT).read_text(encoding="utf-8")
    if "</script" in code.lower() or "<!--" in code:
        raise ValueError(f"{TEMPLATES / SCRIPT} must not contain '</script' or '<!--'")
    digest = base64.b64encode(hashlib.sha256(code.encode("utf-8")).digest()).decode()
    return Markup(code), CSP.format(script=f"'sha256-{digest}'")


def render_html(report: Report, chart_workers: int | None = None) -> str:
    """The report as a string (for tests); ``write_report`` writes it atomically.

    ``chart_workers``: processes that draw the charts (None: chosen by their number, see reports/svg.py).
    """
    from harness.reports.charts import draw_charts, loss_spec, sweep_spec

    keys = [(i, s.adapter_id) for i, run in enumerate(report.runs) for s in run.sweeps]
    specs = [(f"sweep-{i}-{k}", sweep_spec(s)) for i, run in enumerate(report.runs) for k, s in enumerate(run.sweeps)]
    specs += [(f"loss-{k}", loss_spec(t)) for k, t in enumerate(report.training)]
    charts = draw_charts(specs, chart_workers)
    sweeps = dict(zip(keys, charts))
    losses = charts[len(keys):]
    categories = sorted({c for run in report.runs for t in run.examples for c in t.categories})
    scales = sorted({t.scale for run in report.runs for t in run.examples})
    script, csp = script_and_csp()
    return _env().get_template("report.html.j2").render(
        r=report, csp=csp, script=script, sweep_charts=sweeps, loss_charts=losses, categories=categories,
        example_scales=scales,
    )


def check_out_path(path: Path) -> None:
    """Refuse a report path that cannot be written, before any work (exit 2)."""
    from harness.errors import UsageError

    path = Path(path)
    if path.is_dir():
        raise UsageError(f"--out {path} is a directory; pass a file name such as {path / 'report.html'}")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise UsageError(f"--out {path}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"--out {path}: cannot write in {parent} (permission denied); pick another path")
    if path.exists() and not os.access(path, os.W_OK):
        raise UsageError(f"--out {path}: the file exists and is read-only; pick another path")


def write_report(report: Report, path: Path, chart_workers: int | None = None) -> Path:
    """Write the report to ``path`` atomically (temporary file in the same directory, then rename)."""
    from harness.errors import StorageError

    path = Path(path)
    check_out_path(path)
    html = render_html(report, chart_workers)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # a report is for sharing: the usual mode under the umask. errors="replace": a lone surrogate
        # anywhere cannot stop the report (it shows as "?")
        write_text_atomic(path, html, errors="replace")
    except OSError as exc:
        # A full disk (or a path that went away) leaves the previous report as it was (FAULTS.md 32).
        raise StorageError(f"cannot write report {path}: {exc.strerror or exc}; the previous file is untouched") from None
    return path
