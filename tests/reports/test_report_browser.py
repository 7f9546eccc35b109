"""The report in a real headless Chromium (Debian's package, installed by .ci/bootstrap), from file://:
no console error, every chart drawn, hostile outputs shown as text and never run, filters working.
A screenshot of a demo-like report is written under the test's tmp dir (and $HARNESS_ARTIFACTS).

These tests fail, never skip, when the browser is missing: the bootstrap installs it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from harness.analysis import build_report
from harness.reports.render import write_report
from tests.reports.test_report_data import HOSTILE, make_store


def chromium_path() -> str:
    path = os.environ.get("HARNESS_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.fail("no Chromium found: run .ci/bootstrap (it installs Debian's chromium) or set HARNESS_CHROMIUM")
    return path


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is not installed: pip install -e '.[test]'")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox"])
        yield b
        b.close()


def open_page(browser, path: Path, width: int = 1400):
    page = browser.new_page(viewport={"width": width, "height": 1000})
    errors: list[str] = []
    page.on("console", lambda m: errors.append(f"{m.type}: {m.text}") if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
    page.goto(path.resolve().as_uri())
    return page, errors


CHART_MARKS = """() => Array.from(document.querySelectorAll('figure.chart')).map(f => ({
  name: f.dataset.chart,
  lines: f.querySelectorAll('svg .mark-line path').length,
  points: f.querySelectorAll('svg .mark-symbol path').length,
  rules: f.querySelectorAll('svg .mark-rule line').length,
}))"""


@pytest.fixture(scope="module")
def hostile_report(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("browser-hostile")
    store, run_id = make_store(d / "h.duckdb", n_adapters=2, scales=(0.5, 1.0), n_examples=len(HOSTILE), hostile=HOSTILE)
    return write_report(build_report(store, [run_id], title="hostile report"), d / "report.html")


def test_hostile_outputs_shown_as_text_never_run(browser, hostile_report):
    page, errors = open_page(browser, hostile_report)
    page.wait_for_timeout(300)
    page.mouse.move(400, 400)
    page.hover("table.examples tr.ex >> nth=0")
    assert page.title() == "hostile report"
    assert errors == []
    found = page.evaluate("""() => ({
      scripts: document.scripts.length,
      handlers: Array.from(document.querySelectorAll('*')).flatMap(e => Array.from(e.attributes)
                  .filter(a => a.name.startsWith('on')).map(a => e.tagName + ' ' + a.name)),
      jsLinks: Array.from(document.querySelectorAll('[href],[src]')).map(e => e.getAttribute('href') || e.getAttribute('src'))
                  .filter(v => !v.startsWith('#')),
      extra: document.querySelectorAll('main img, main iframe, main pre *, main td > script').length,
      text: document.body.innerText,
    })""")
    assert found["scripts"] == 1 and found["handlers"] == [] and found["jsLinks"] == [] and found["extra"] == 0
    for payload in ("<script>document.title='pwned'</script>", "</script><script>document.title='pwned2'</script>",
                    "javascript:document.title='pwned3'", "onmouseover=", "{{ 7*7 }}", "<U+202E>evil-override"):
        assert payload in found["text"], payload
    assert page.title() == "hostile report"
    page.close()


def test_charts_drawn_and_filters_work(browser, hostile_report):
    page, errors = open_page(browser, hostile_report)
    charts = page.evaluate(CHART_MARKS)
    sweeps = [c for c in charts if c["name"].startswith("sweep")]
    losses = [c for c in charts if c["name"].startswith("loss")]
    assert len(sweeps) == 2 and len(losses) == 2
    for c in charts:
        assert c["lines"] > 0, c
    assert all(c["points"] > 0 for c in sweeps) and all(c["rules"] > 0 for c in losses)  # front points; findings
    # each adapter's chosen scale's table is shown; the others are one selection away (issue 35.6)
    tables = page.locator("details.example-table")
    assert tables.count() > 2
    assert page.evaluate("() => Array.from(document.querySelectorAll('details.example-table')).every(t => t.hidden === (t.dataset.chosen !== '1'))")
    total = page.locator("details.example-table[data-chosen='1'] tr.ex").count()
    count = page.locator("#f-count")
    assert count.inner_text() == f"{total} of {total} rows shown"
    page.select_option("#f-scale", "1")
    shown = page.evaluate("() => Array.from(document.querySelectorAll('details.example-table')).filter(t => !t.hidden).map(t => t.dataset.scale)")
    assert shown and set(shown) == {"1"}
    at_one = page.locator("details.example-table[data-scale='1'] tr.ex").count()
    assert count.inner_text() == f"{at_one} of {at_one} rows shown"
    page.select_option("#f-scale", "")
    page.check("#f-failed")
    failed = page.locator("details.example-table[data-chosen='1'] tr.ex[data-failed='1']").count()
    assert count.inner_text() == f"{failed} of {total} rows shown" and failed < total
    page.uncheck("#f-failed")
    page.check("#f-changed")
    changed = page.locator("details.example-table[data-chosen='1'] tr.ex[data-changed='1']").count()
    assert count.inner_text() == f"{changed} of {total} rows shown"
    page.uncheck("#f-changed")
    page.fill("#f-search", "question 3 of order-task")
    visible = page.evaluate("() => Array.from(document.querySelectorAll('tr.ex')).filter(r => !r.hidden).length")
    assert 1 <= visible < total
    page.fill("#f-search", "")
    page.select_option("#f-category", "cat-1")
    visible = page.evaluate("() => Array.from(document.querySelectorAll('tr.ex')).filter(r => !r.hidden).map(r => r.dataset.category)")
    assert visible and set(visible) == {"cat-1"}
    assert errors == []
    page.close()


def test_screenshot_of_a_demo_like_report(browser, tmp_path_factory):
    d = tmp_path_factory.mktemp("browser-demo")
    store, run_id = make_store(d / "h.duckdb", n_adapters=2, scales=(0.25, 0.5, 1.0, 1.5), n_examples=24, n_steps=48)
    path = write_report(build_report(store, [run_id], title="adapter-harness demo", max_examples=20), d / "report.html")
    page, errors = open_page(browser, path)
    shot = d / "report.png"
    page.screenshot(path=str(shot), full_page=True)
    top = d / "report-top.png"
    page.screenshot(path=str(top))
    assert errors == [] and shot.stat().st_size > 10_000
    if os.environ.get("HARNESS_ARTIFACTS"):
        out = Path(os.environ["HARNESS_ARTIFACTS"])
        out.mkdir(parents=True, exist_ok=True)
        for f in (shot, top, path):
            shutil.copy(f, out / f.name)
    page.close()


def test_a_narrow_screen_scrolls_tables_not_the_page(browser, hostile_report):
    """Issue 31: at 420 px the tables ran off the page. Each table scrolls inside itself; the page never needs
    a horizontal scroll, and every table's cells can still be reached."""
    page, errors = open_page(browser, hostile_report, width=420)
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 420
    tables = page.evaluate("""() => Array.from(document.querySelectorAll('table')).filter(t => t.offsetParent !== null)
        .map(t => ({right: t.getBoundingClientRect().right, scroll: t.scrollWidth, client: t.clientWidth,
                    overflow: getComputedStyle(t).overflowX}))""")
    assert tables
    for t in tables:
        assert t["right"] <= 420 + 1, t
        assert t["scroll"] <= t["client"] or t["overflow"] in ("auto", "scroll"), t
    assert errors == []
    page.close()
