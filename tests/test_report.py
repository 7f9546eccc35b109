"""The HTML report renders hostile model output inert (FAULTS.md 38) and is written atomically."""

from html.parser import HTMLParser

import pytest
from hypothesis import given, settings, strategies as st

from harness.comparison import Cell, Comparison, Retention, Sample
from reports.render import render_html, write_report

PAYLOADS = [
    "<script>alert(1)</script>",
    "</script><script>alert(2)</script>",
    '<a href="javascript:alert(3)">x</a>',
    '" onmouseover="alert(4)',
    "{{ 7*7 }}",
    "\u202eRTL\u200bzero-width",
    "<img src=x onerror=alert(5)>",
]


def comparison(text: str) -> Comparison:
    return Comparison(
        title="t", run_id="r1", base_model="tiny", targets=("base", "a@1"),
        cells=(Cell("base", None, 0.0, "general-knowledge", "alias_match", 0.5, 2, 2),
               Cell("a@1", "x", 1.0, "general-knowledge", "alias_match", None, 2, 0)),
        retention=(Retention("a@1", "general-knowledge", "alias_match", 1, 0, 0.0),),
        categories=(),
        samples=(Sample("general-knowledge", text, text, text, (("base", text, 1.0), ("a@1", None, None))),),
        provenance=(("command", text),),
    )


class Audit(HTMLParser):
    def __init__(self):
        super().__init__()
        self.scripts = 0
        self.handlers = []
        self.js_links = []
        self.first_head_child = None
        self._in_head = False

    def handle_starttag(self, tag, attrs):
        if tag == "head":
            self._in_head = True
        elif self._in_head and self.first_head_child is None:
            self.first_head_child = (tag, dict(attrs))
        if tag == "script":
            self.scripts += 1
        for name, value in attrs:
            if name.startswith("on"):
                self.handlers.append((tag, name))
            if value and value.strip().lower().startswith("javascript:"):
                self.js_links.append((tag, name))


def audit(html: str) -> Audit:
    a = Audit()
    a.feed(html)
    return a


@pytest.mark.parametrize("payload", PAYLOADS)
def test_payloads_rendered_inert(payload):
    html = render_html(comparison(payload))
    a = audit(html)
    assert a.scripts == 0 and a.handlers == [] and a.js_links == []
    assert a.first_head_child[0] == "meta" and a.first_head_child[1].get("http-equiv") == "Content-Security-Policy"
    if payload == "{{ 7*7 }}":
        assert "{{ 7*7 }}" in html  # template syntax in data stays text, never evaluated


@settings(max_examples=60, deadline=None)
@given(st.text())
def test_any_text_is_inert(text):
    a = audit(render_html(comparison(text)))
    assert a.scripts == 0 and a.handlers == [] and a.js_links == []


def test_written_atomically(tmp_path):
    path = write_report(comparison("ok"), tmp_path / "r" / "report.html")
    assert path.read_text().startswith("<!doctype html>")
    assert [p.name for p in path.parent.iterdir()] == ["report.html"]  # no temporary left behind
