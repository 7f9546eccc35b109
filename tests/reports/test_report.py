"""The HTML report: hostile text rendered inert (FAULTS.md 38), a strict CSP with the one script
allowed by hash, colours that follow each metric's direction, the sections built from the store, the
`harness report` command, and an atomic write. The browser tests are in test_report_browser.py."""

from __future__ import annotations

import base64
import hashlib
import os
import re
from dataclasses import replace
from html.parser import HTMLParser

import jinja2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.analysis import (
    AdapterSweep,
    Answer,
    Cell,
    Column,
    Comparison,
    ExampleDiff,
    ExampleTable,
    Finding,
    LineageNode,
    LossPoint,
    MetricCurve,
    OverviewCell,
    OverviewRow,
    Report,
    Retention,
    RunProvenance,
    RunReport,
    SuiteInfo,
    TrainingCurve,
    build_report,
)
from harness.analysis.sweep import ScalePoint
from harness.reports.render import TEMPLATES, _env, render_html, script_and_csp, write_report
from tests.reports.test_report_data import HOSTILE, make_store

#: the elements the page itself uses; anything else in the HTML came from data
PAGE_TAGS = {"html", "head", "meta", "title", "style", "body", "header", "h1", "h2", "h3", "nav", "a", "main",
             "section", "p", "span", "strong", "small", "code", "table", "thead", "tbody", "tr", "th", "td", "br",
             "article", "figure", "figcaption", "details", "summary", "div", "label", "input", "select", "option",
             "pre", "ul", "li", "script",
             # chart SVG (vl-convert)
             "svg", "g", "path", "rect", "line", "text", "tspan", "desc", "defs", "clippath", "circle"}


class Audit(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[dict] = []
        self.script_text: list[str] = []
        self.handlers: list[tuple[str, str]] = []
        self.js_links: list[tuple[str, str]] = []
        self.tags: set[str] = set()
        self.first_head_child: tuple[str, dict] | None = None
        self._in_head = False
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        if tag == "head":
            self._in_head = True
        elif self._in_head and self.first_head_child is None:
            self.first_head_child = (tag, dict(attrs))
        if tag == "script":
            self.scripts.append(dict(attrs))
            self._in_script = True
        for name, value in attrs:
            if name.startswith("on"):
                self.handlers.append((tag, name))
            if name in ("href", "src", "action", "formaction", "xlink:href") and value and not value.startswith("#"):
                self.js_links.append((tag, value))

    def handle_endtag(self, tag):
        if tag == "script":
            self._in_script = False

    def handle_data(self, data):
        if self._in_script:
            self.script_text.append(data)


def audit(html: str) -> Audit:
    a = Audit()
    a.feed(html)
    return a


def assert_inert(html: str) -> Audit:
    a = audit(html)
    code, csp = script_and_csp()
    assert a.first_head_child is not None
    tag, attrs = a.first_head_child
    assert tag == "meta" and attrs.get("http-equiv") == "Content-Security-Policy" and attrs["content"] == csp
    assert "unsafe-eval" not in csp and "'unsafe-inline'" not in csp.split("script-src")[1].split(";")[0]
    assert len(a.scripts) == 1 and a.scripts[0] == {}, a.scripts  # ours only, inline, no src
    assert "".join(a.script_text) == str(code)
    digest = base64.b64encode(hashlib.sha256("".join(a.script_text).encode()).digest()).decode()
    assert f"'sha256-{digest}'" in csp
    assert a.handlers == [] and a.js_links == []
    assert a.tags <= PAGE_TAGS, a.tags - PAGE_TAGS
    return a


@pytest.fixture(scope="module")
def hostile_store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("hostile") / "h.duckdb", n_adapters=2, scales=(0.5, 1.0),
                      n_examples=len(HOSTILE), hostile=HOSTILE)


@pytest.fixture(scope="module")
def hostile_html(hostile_store):
    store, run_id = hostile_store
    return render_html(build_report(store, [run_id], title="hostile"))


def test_hostile_store_renders_inert(hostile_html):
    assert_inert(hostile_html)
    assert "<title>hostile</title>" in hostile_html
    # template syntax in data stays text, never evaluated; markup is escaped
    assert "{{ 7*7 }} {% if 1 %}jinja{% endif %}" in hostile_html
    assert "&lt;script&gt;document.title=" in hostile_html
    # bidirectional overrides and zero-width characters are shown as visible marks, not applied
    assert "\u202e" not in hostile_html and "&lt;U+202E&gt;" in hostile_html and "&lt;U+200B&gt;" in hostile_html


def _report_of(text: str) -> Report:
    """A report with ``text`` in every string a page shows (built directly: fast enough for a property test)."""
    suites = (SuiteInfo("t", "task", "json_exact"), SuiteInfo(text or "g", "general", "alias_match"),
              SuiteInfo("ref", "reference", "rougeL"))
    c = Comparison(text, text, text, ("base", f"{text}@1"),
                   (Cell("base", None, 0.0, "t", "json_exact", 0.5, 2, 2), Cell(f"{text}@1", "a" * 64, 1.0, "t", "json_exact", 1.0, 2, 2)),
                   (Retention(f"{text}@1", text or "g", "alias_match", 1, 0, 0.0),), (), (), ((text, text),), suites)
    points = (ScalePoint(0.0, 0.5, 1.0, 0.0, 2, 1, 1, 2, 0), ScalePoint(1.0, 1.0, 0.0, 0.5, 2, 0, 1, 2, 1))
    sweep = AdapterSweep("a" * 64, text, points, (0.0, 1.0), None, text, 1.0,
                         (MetricCurve(text or "ref", text or "rougeL", True, ((0.0, 0.3), (1.0, 0.4))),))
    answer = Answer(text, text, 1.0, text)
    diff = ExampleDiff(text, text, text, text, True, text, text, answer, Answer(text, None, None, text), answer,
                       "regression", True, True)
    cols = (Column("t", "json_exact", "headline", True),)
    run = RunReport(c, cols, (OverviewRow(text, "a" * 64, 1.0, True, (OverviewCell(1.0, 2, 2, "better"),)),), (), (sweep,),
                    (ExampleTable("a" * 64, text, 1.0, text, (diff,), 1, 1, 1, 1, (text,)),))
    training = (TrainingCurve("a" * 64, text, text, (LossPoint(1, 2.0, None), LossPoint(2, 1.0, 1.1)),
                              (Finding(text, "warning", 1, text), Finding(text, text, 2, text)), 1),)
    lineage = (LineageNode("p" * 64, text, 0, None, False), LineageNode("a" * 64, text, 1, "p" * 64, True))
    prov = (RunProvenance(text, text, ((text, text),), ((text, text),), ((text, text),)),)
    return Report(text, (run,), training, lineage, prov, 10)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=40) | st.sampled_from(HOSTILE))
def test_any_text_is_inert(text):
    assert_inert(render_html(_report_of(text)))


@pytest.mark.parametrize("payload", HOSTILE)
def test_payloads_everywhere_inert(payload):
    assert_inert(render_html(_report_of(payload)))


def test_templates_autoescape_strict_and_no_safe():
    env = _env()
    assert env.autoescape is True and env.undefined is jinja2.StrictUndefined
    with pytest.raises(jinja2.UndefinedError):
        env.from_string("{{ typo }}").render()
    for path in TEMPLATES.glob("*.j2"):
        text = path.read_text()
        assert not re.search(r"\|\s*safe\b", text), f"{path} uses |safe"
        assert "autoescape false" not in text


def test_colours_follow_direction(tmp_path):
    store, run_id = make_store(tmp_path / "h.duckdb", n_adapters=1, scales=(0.5, 1.5))
    run = build_report(store, [run_id]).runs[0]
    col = next(i for i, c in enumerate(run.columns) if c.metric == "format_leakage" and c.kind == "headline")
    assert run.columns[col].higher_is_better is False
    row = next(r for r in run.overview if r.target.endswith("@1.5"))
    base = next(r for r in run.overview if r.target == "base")
    assert row.cells[col].value > base.cells[col].value and row.cells[col].verdict == "worse"
    task = next(i for i, c in enumerate(run.columns) if c.metric == "json_exact")
    assert row.cells[task].value > base.cells[task].value and row.cells[task].verdict == "better"
    html = render_html(build_report(store, [run_id]))
    assert "td.better" in html and 'class="n worse"' in html and 'class="n better"' in html


def test_sections_from_the_store(small):
    store, run_id = small
    r = build_report(store, [run_id], max_examples=5)
    run = r.runs[0]
    assert [s.label for s in run.sweeps] == ["adapter-0", "adapter-1"]
    s = run.sweeps[0]
    assert [p.scale for p in s.points] == [0.0, 0.25, 0.5, 1.0, 1.5]
    assert s.recommended == 0.5 and s.sentence.startswith("ship scale 0.5") and s.chosen == 0.5
    assert {c.metric for c in s.curves} == {"rougeL", "bleu"}
    assert any(row.recommended and row.target == "adapter-0@0.5" for row in run.overview)
    assert [g.gate for g in run.gates] == ["retention", "task_min"] and run.gates[0].passed is False
    # issue 35.6: a table per adapter and evaluated scale, each adapter's chosen scale first
    assert [(t.label, t.scale, t.chosen) for t in run.examples] == [
        ("adapter-0", 0.5, True), ("adapter-0", 0.25, False), ("adapter-0", 1.0, False), ("adapter-0", 1.5, False),
        ("adapter-1", run.sweeps[1].chosen, True)] + [("adapter-1", sc, False) for sc in (0.25, 0.5, 1.0, 1.5)
                                                       if sc != run.sweeps[1].chosen]
    t = run.examples[0]
    assert len(t.rows) == 5 and t.n_total == 4 * 12 and t.scale == 0.5
    statuses = [d.status for d in t.rows]
    assert statuses == sorted(statuses, key=["regression", "improved", "changed", "same"].index)
    assert t.n_regressions == 0 or statuses[0] == "regression"
    # the continued fine-tune is shown beside its parent (at the parent's chosen scale), at every scale of its own
    assert {t.baseline for t in run.examples if t.label == "adapter-1"} == {"adapter-0"}
    at1 = next(t for t in run.examples if t.label == "adapter-1" and t.scale == 1.0)
    assert all(d.baseline is None or d.baseline.label == "adapter-0@0.5" for d in at1.rows)
    assert at1.rows and all(d.adapter.label == "adapter-1@1" for d in at1.rows)
    assert [(n.label, n.depth) for n in r.lineage] == [("adapter-0", 0), ("adapter-1", 1)]
    assert [len(c.points) for c in r.training] == [40, 40] and all(c.findings for c in r.training)
    eval_prov = r.provenance[0]
    assert eval_prov.run_id == run_id and dict(eval_prov.fields)["seed"] == "3407"
    assert any(k == "suite order-task" for k, _ in eval_prov.hashes)
    assert any(k == "training data" for p in r.provenance[1:] for k, _ in p.hashes)
    assert len(r.provenance) == 3


def test_no_gates_no_gate_table(tmp_path):
    store, run_id = make_store(tmp_path / "h.duckdb", n_adapters=1, scales=(1.0,), n_examples=4, gates=False)
    html = render_html(build_report(store, [run_id]))
    assert "<h3>Gates</h3>" not in html and 'class="gates"' not in html


def test_adapter_filter_and_command(tmp_path, small, capsys):
    from harness.cli import main

    store, run_id = small
    out = tmp_path / "r.html"
    assert main(["report", "--db", str(store.path), "--run", run_id, "--adapter", "adapter-1", "--out", str(out)]) == 0
    html = out.read_text()
    assert_inert(html)
    assert "adapter-1@0.5" in html and "adapter-0@0.5" not in html
    assert main(["report", "--db", str(store.path), "--adapter", "nope", "--out", str(out)]) == 2
    assert "nope" in capsys.readouterr().err


def test_written_atomically(tmp_path, small):
    store, run_id = small
    path = write_report(build_report(store, [run_id]), tmp_path / "r" / "report.html")
    assert path.read_text().startswith("<!doctype html>")
    assert [p.name for p in path.parent.iterdir()] == ["report.html"]  # no temporary left behind


def test_nonfinite_losses_left_out(tmp_path):
    store, run_id = make_store(tmp_path / "h.duckdb", n_adapters=1, scales=(1.0,), n_examples=3)
    aid = store.query("SELECT adapter_id FROM adapters LIMIT 1")[0]["adapter_id"]
    with store.connect(write=True) as con:  # shards refuse NaN; a hand-edited or older database may hold one
        con.execute("INSERT INTO step_logs VALUES ('t-run', ?, 1, NULL, 'NaN'::DOUBLE, NULL, NULL, 'inf'::DOUBLE, 1), "
                    "('t-run', ?, 2, NULL, 1.0, NULL, NULL, NULL, 2)", [aid, aid])
    r = build_report(store, [run_id])
    curve = next(t for t in r.training if t.run_id == "t-run")
    assert curve.n_nonfinite == 2 and curve.points[0].loss is None and curve.points[1].loss == 1.0
    assert_inert(render_html(r))


def test_base_template_unchanged_by_replace(small):
    # a title is data too: it is escaped in <title> and <h1>
    store, run_id = small
    r = replace(build_report(store, [run_id]), title="</title><script>x</script>")
    html = render_html(r)
    assert_inert(html)
    assert "<title>&lt;/title&gt;&lt;script&gt;x&lt;/script&gt;</title>" in html


def test_lone_surrogate_does_not_stop_the_write(tmp_path):
    path = write_report(_report_of("a\ud800b"), tmp_path / "s.html")
    assert path.exists() and "a" in path.read_text()


def test_chart_check_refuses_active_svg():
    from harness.reports.charts import ChartError, check_svg

    for bad in ['<svg xmlns="http://www.w3.org/2000/svg"><script>x</script></svg>',
                '<svg xmlns="http://www.w3.org/2000/svg" onload="x"></svg>',
                '<svg xmlns="http://www.w3.org/2000/svg"><a href="javascript:x"><text>x</text></a></svg>',
                '<svg xmlns="http://www.w3.org/2000/svg"><foreignObject/></svg>']:
        with pytest.raises(ChartError):
            check_svg(bad)
    check_svg('<svg xmlns="http://www.w3.org/2000/svg"><g><text>&lt;script&gt;</text></g></svg>')


from tests.reports.test_report_data import small  # noqa: E402,F401  (the shared module fixture)


def test_report_file_has_the_usual_mode_not_0600(tmp_path):
    import os
    import stat

    from harness.reports.render import write_report

    out = write_report(_report_of("plain text"), tmp_path / "r.html")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~umask


def test_charts_drawn_in_worker_processes_equal_charts_drawn_here(small):
    """reports/svg.py: many charts are dealt out to worker interpreters; the SVG is the same either way,
    and a chart that cannot be drawn is a ChartError on both paths."""
    from harness.reports.charts import loss_spec, sweep_spec
    from harness.reports.svg import ChartError, draw_all

    store, run_id = small
    r = build_report(store, [run_id])
    specs = [sweep_spec(s).spec for s in r.runs[0].sweeps] + [loss_spec(t).spec for t in r.training]
    here = draw_all(specs, workers=0)
    assert draw_all(specs, workers=2) == here and len(here) == 4
    bad = [specs[0], {"mark": "no-such-mark", "data": {"values": [{"a": 1}]}}]
    for workers in (0, 2):
        with pytest.raises(ChartError, match="could not draw"):
            draw_all(bad, workers=workers)


def test_chart_workers_chosen_by_count_and_overridden(monkeypatch):
    from harness.reports import svg

    monkeypatch.delenv("HARNESS_CHART_WORKERS", raising=False)
    monkeypatch.setattr(svg.os, "sched_getaffinity", lambda _: {0, 1}, raising=False)
    monkeypatch.setattr(svg.os, "getloadavg", lambda: (0.2, 0.2, 0.2), raising=False)
    idle_self = os.times_result((0.0, 0.0, 0.0, 0.0, 0.0))
    monkeypatch.setattr(svg.os, "times", lambda: idle_self)
    assert svg.workers_for(4) == 0  # a few charts: drawn here, no worker start to pay for
    assert svg.workers_for(40) == 2  # one worker an idle CPU
    monkeypatch.setattr(svg.os, "getloadavg", lambda: (1.2, 1.0, 1.0), raising=False)
    assert svg.workers_for(40) == 0  # one CPU is busy: a second worker would only wait for it
    # ... unless most of that load is this process's own last minute of work (48 s of CPU: 0.8 of the 1.2)
    busy_self = os.times_result((40.0, 8.0, 0.0, 0.0, 0.0))
    monkeypatch.setattr(svg.os, "times", lambda: busy_self)
    assert svg.workers_for(40) == 2
    monkeypatch.setattr(svg.os, "times", lambda: idle_self)
    monkeypatch.setattr(svg.os, "sched_getaffinity", lambda _: set(range(16)), raising=False)
    assert svg.workers_for(40) == svg.MAX_WORKERS
    monkeypatch.setattr(svg.os, "sched_getaffinity", lambda _: {0}, raising=False)
    assert svg.workers_for(40) == 0
    monkeypatch.setenv("HARNESS_CHART_WORKERS", "3")
    assert svg.workers_for(4) == 3
    monkeypatch.setenv("HARNESS_CHART_WORKERS", "many")
    with pytest.raises(ValueError, match="HARNESS_CHART_WORKERS"):
        svg.workers_for(4)


def test_long_loss_curves_are_thinned_keeping_spikes():
    from harness.reports.charts import MAX_LOSS_POINTS, loss_spec

    points = tuple(LossPoint(s, 2.0 - s * 1e-4 + (3.0 if s == 4321 else 0.0) - (1.0 if s == 77 else 0.0),
                             1.5 if s % 100 == 0 else None) for s in range(1, 20_001))
    chart = loss_spec(TrainingCurve("a" * 64, "long", "run", points, (), 0))
    loss = [v for v in chart.spec["data"]["values"] if v["series"] == "loss"]
    evals = [v for v in chart.spec["data"]["values"] if v["series"] == "eval_loss"]
    assert len(loss) <= MAX_LOSS_POINTS and len(evals) == 200  # 200 eval points: kept whole
    steps = [v["step"] for v in loss]
    assert steps == sorted(steps) and 4321 in steps and 77 in steps  # the spike and the dip stay
    assert max(v["value"] for v in loss) == max(p.loss for p in points)
    assert "thinned" in chart.caption
    short = tuple(LossPoint(s, 1.0 / s, None) for s in range(1, 41))
    chart = loss_spec(TrainingCurve("a" * 64, "short", "run", short, (), 0))
    assert len(chart.spec["data"]["values"]) == 40 and "thinned" not in chart.caption


def test_reports_render_without_importing_the_store():
    """Issue 12.5: reports/ imports the report's types, never the store (nor DuckDB)."""
    import subprocess
    import sys

    code = ("import sys, harness.reports.render, harness.reports.charts; "
            "bad = [m for m in ('duckdb', 'harness.store') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
