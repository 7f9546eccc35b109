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

from harness.comparison import Comparison

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
    headline = [c for c in comparison.cells if comparison.headline(c.suite) == c.metric]
    suites = [i.name for i in comparison.suites if any(c.suite == i.name for c in headline)]
    metrics = {s: comparison.headline(s) for s in suites}
    table = [(t, [comparison.cell(t, s, metrics[s]) for s in suites]) for t in comparison.targets]
    others = [c for c in comparison.cells if comparison.headline(c.suite) != c.metric]
    # colours follow each metric's direction: format leakage of 1.0 is bad, not good
    high_good = {i.name: i.higher_is_better(i.headline) for i in comparison.suites if i.headline}
    return _env().get_template("report.html.j2").render(
        c=comparison, csp=CSP, suites=suites, headline_metrics=[metrics[s] for s in suites],
        table=table, others=others, high_good=high_good,
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


def write_report(comparison: Comparison, path: Path) -> Path:
    """Write the report to ``path`` atomically (temporary file in the same directory, then rename)."""
    from harness.errors import StorageError

    path = Path(path)
    check_out_path(path)
    html = render_html(comparison)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(html)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        # A full disk (or a path that went away) leaves the previous report as it was (FAULTS.md 32).
        raise StorageError(f"cannot write report {path}: {exc.strerror or exc}; the previous file is untouched") from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
    return path
