"""Charts as static SVG: a Vega-Lite spec per chart, drawn by vl-convert, inlined in the page.

Why this library: the page must work offline, from ``file://``, under a CSP that runs no script but
our one hashed filter script. vl-convert draws Vega-Lite (a well-kept, declarative grammar) to SVG
in-process, with no browser and no JavaScript in the page, about 20-40 KiB a chart. Data reaches the
chart only as JSON values inside the spec (never as markup or as a Vega expression), and Vega's SVG
writer escapes text; ``check_svg`` still refuses any SVG that holds a script, a foreign object, an
event-handler attribute or a link, so a text a chart carries cannot become markup in the page.
Many charts are drawn in worker processes (reports/svg.py).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from markupsafe import Markup

from harness.analysis.report_types import AdapterSweep, TrainingCurve
from harness.reports.svg import ChartError, check_svg, draw_all

__all__ = ["Chart", "ChartError", "ChartSpec", "Key", "check_svg", "draw_charts", "loss_chart", "loss_spec", "sweep_chart",
           "sweep_spec"]

SEVERITY_COLOURS = {"error": "#c0392b", "warning": "#e67e22", "info": "#7f8c8d"}
FRONT, DOMINATED = "Pareto front", "dominated"
FRONT_COLOUR, DOMINATED_COLOUR, REC_COLOUR = "#1f5fa0", "#b8c7d9", "#1e8449"
LOSS_COLOUR, EVAL_COLOUR = "#4a7fb5", "#8e44ad"
FONT = "DejaVu Sans, Helvetica, Arial, sans-serif"
_ASTRAL = re.compile("[\U00010000-\U0010ffff]")
#: a loss series longer than this is thinned to the lowest and highest value of each of half as many
#: runs of steps (spikes stay visible); the chart is 560 px wide
MAX_LOSS_POINTS = 1000


@dataclass(frozen=True)
class Key:
    """One entry of a chart's key, drawn in HTML under the chart (Vega's own legend layout took a
    quarter of the time it takes to draw a chart)."""

    label: str
    colour: str
    #: line | point | rule (a dashed line)
    shape: str


@dataclass(frozen=True)
class ChartSpec:
    """A chart before it is drawn: the Vega-Lite spec (texts already made safe), caption and key."""

    spec: dict[str, Any]
    caption: str
    key: tuple[Key, ...] = ()


@dataclass(frozen=True)
class Chart:
    #: the chart's id in the page (``data-chart`` attribute), for tests and links
    name: str
    svg: Markup
    #: what the chart shows, in words (the figure caption and the image's accessible name)
    caption: str
    key: tuple[Key, ...] = ()


def _config() -> dict[str, Any]:
    return {"font": FONT, "view": {"stroke": "#ddd"}, "axis": {"labelFontSize": 10, "titleFontSize": 11},
            "header": {"labelFontSize": 11, "labelFontWeight": "bold"},
            "background": "white"}


def _arrow(higher_is_better: bool) -> str:
    return "↑" if higher_is_better else "↓"


def sweep_chart(s: AdapterSweep, name: str) -> Chart:
    """An adapter's sweep chart (``sweep_spec``), drawn here."""
    return draw_charts([(name, sweep_spec(s))], workers=0)[0]


def loss_chart(t: TrainingCurve, name: str) -> Chart:
    """A training run's loss chart (``loss_spec``), drawn here."""
    return draw_charts([(name, loss_spec(t))], workers=0)[0]


def draw_charts(charts: Sequence[tuple[str, ChartSpec]], workers: int | None = None) -> list[Chart]:
    """(name, spec) pairs drawn as ``Chart``s, in order; many are drawn in worker processes (reports/svg.py)."""
    svgs = draw_all([c.spec for _, c in charts], workers)
    return [Chart(name, _markup(svg), c.caption, c.key) for (name, c), svg in zip(charts, svgs)]


def sweep_spec(s: AdapterSweep) -> ChartSpec:
    """Task score, retention, leakage and the reference metrics against scale, one panel each: the
    Pareto front drawn as filled points, the recommended scale as a green rule."""
    panels: list[tuple[str, bool, list[tuple[float, float | None]]]] = [
        (f"task score {_arrow(True)}", True, [(p.scale, p.task) for p in s.points]),
        (f"{'behaviour retention' if any(p.knowledge is not None for p in s.points) else 'retention'} {_arrow(True)}", True,
         [(p.scale, p.retention) for p in s.points]),
        (f"knowledge retention {_arrow(True)}", True, [(p.scale, p.knowledge) for p in s.points]),
        (f"format leakage {_arrow(False)}", False, [(p.scale, p.leakage) for p in s.points]),
        (f"drift, KL nats/token {_arrow(False)}", False, [(p.scale, p.drift) for p in s.points]),
    ]
    for c in s.curves:
        panels.append((shown(f"{c.suite} · {c.metric}") + f" {_arrow(c.higher_is_better)}", c.higher_is_better,
                       list(c.points)))
    panels = [p for p in panels if any(v is not None for _, v in p[2])]
    front = set(s.front)
    values = [{"panel": title, "scale": x, "value": v,
               "point": FRONT if x in front else DOMINATED, "rec": x == s.recommended}
              for title, _, pts in panels for x, v in pts if v is not None]
    layers: list[dict[str, Any]] = [
        {"mark": {"type": "line", "color": "#4a7fb5"},
         "encoding": {"x": {"field": "scale", "type": "quantitative", "title": "LoRA scale"},
                      "y": {"field": "value", "type": "quantitative", "title": None, "scale": {"zero": False}}}},
        {"mark": {"type": "point", "filled": True, "size": 60},
         "encoding": {"x": {"field": "scale", "type": "quantitative"}, "y": {"field": "value", "type": "quantitative"},
                      "color": {"field": "point", "type": "nominal", "legend": None,
                                "scale": {"domain": [FRONT, DOMINATED], "range": [FRONT_COLOUR, DOMINATED_COLOUR]}}}},
    ]
    key = [Key(FRONT, FRONT_COLOUR, "point"), Key(DOMINATED, DOMINATED_COLOUR, "point")]
    if s.recommended is not None:
        # one row per panel carries rec (the point at the recommended scale): one rule each
        only = [{"filter": {"field": "rec", "equal": True}}]
        layers.append({"transform": only, "mark": {"type": "rule", "color": REC_COLOUR, "strokeWidth": 2, "strokeDash": [5, 3]},
                       "encoding": {"x": {"field": "scale", "type": "quantitative"}}})
        key.append(Key(f"recommended scale {s.recommended:g}", REC_COLOUR, "rule"))
    spec = {
        "$schema": "https://vega.github.io/schema/vega-lite/v5.json",
        "data": {"values": values}, "config": _config(),
        "facet": {"field": "panel", "type": "nominal", "title": None, "sort": [t for t, _, _ in panels]},
        "columns": min(len(panels), 3) or 1,
        "spec": {"width": 190, "height": 120, "layer": layers},
        "resolve": {"scale": {"y": "independent"}},
    }
    rec = f"recommended scale {s.recommended:g} (green rule)" if s.recommended is not None else "no recommended scale"
    return ChartSpec(_clean(spec), f"{s.label}: metrics against LoRA scale; filled points are the Pareto front; {rec}.",
                     tuple(key))


def loss_spec(t: TrainingCurve) -> ChartSpec:
    """Training and eval loss against step, each anomaly finding a rule at its step (colour = severity)."""
    kept = {"loss": thin([(i, p.loss) for i, p in enumerate(t.points) if p.loss is not None]),
            "eval_loss": thin([(i, p.eval_loss) for i, p in enumerate(t.points) if p.eval_loss is not None])}
    values = [{"step": p.step, "series": series, "value": v}
              for i, p in enumerate(t.points) for series, v in (("loss", p.loss), ("eval_loss", p.eval_loss))
              if v is not None and i in kept[series]]
    marks: list[dict[str, Any]] = [{"step": f.step, "severity": shown(f.severity), "kind": shown(f.kind)} for f in t.findings if f.step is not None]
    x = {"field": "step", "type": "quantitative", "title": "step"}
    layers: list[dict[str, Any]] = [
        {"mark": {"type": "line", "strokeWidth": 1.5},
         "encoding": {"x": x, "y": {"field": "value", "type": "quantitative", "title": "loss", "scale": {"zero": False}},
                      "color": {"field": "series", "type": "nominal", "legend": None,
                                "scale": {"domain": ["loss", "eval_loss"], "range": [LOSS_COLOUR, EVAL_COLOUR]}}}},
        {"transform": [{"filter": {"field": "series", "equal": "eval_loss"}}],
         "mark": {"type": "point", "filled": True, "size": 30, "color": EVAL_COLOUR},
         "encoding": {"x": x, "y": {"field": "value", "type": "quantitative"}}},
    ]
    key = [Key("loss", LOSS_COLOUR, "line"), Key("eval_loss", EVAL_COLOUR, "line")]
    if marks:
        sev = [k for k in SEVERITY_COLOURS if any(m["severity"] == k for m in marks)]
        sev += sorted({m["severity"] for m in marks} - set(sev))
        colours = [SEVERITY_COLOURS.get(k, "#555") for k in sev]
        layers.append({"data": {"values": marks}, "mark": {"type": "rule", "strokeWidth": 2, "strokeDash": [4, 2]},
                       "encoding": {"x": x, "stroke": {"field": "severity", "type": "nominal", "legend": None,
                                                       "scale": {"domain": sev, "range": colours}}}})
        key += [Key(f"finding: {k}", c, "rule") for k, c in zip(sev, colours)]
        layers.append({"data": {"values": marks}, "mark": {"type": "text", "align": "left", "dx": 3, "fontSize": 9,
                                                           "color": "#555"},
                       "encoding": {"x": x, "y": {"value": 8}, "text": {"field": "kind"}}})
    spec = {"$schema": "https://vega.github.io/schema/vega-lite/v5.json", "data": {"values": values},
            "config": _config(), "width": 560, "height": 160, "layer": layers,
            "resolve": {"scale": {"color": "independent"}}}
    n = len(marks)
    thinned = " (thinned to each stretch's lowest and highest)" if len(values) < sum(
        (p.loss is not None) + (p.eval_loss is not None) for p in t.points) else ""
    return ChartSpec(_clean(spec), f"{t.label}: training loss and eval loss by step{thinned}, {n} anomaly finding(s) marked.",
                     tuple(key))


def thin(points: Sequence[tuple[int, float]], limit: int = MAX_LOSS_POINTS) -> set[int]:
    """The keys of at most ``limit`` of the (key, value) ``points``: all of them, or the lowest and the
    highest value of each stretch of ``2 * len(points) / limit`` points."""
    if len(points) <= limit:
        return {k for k, _ in points}
    size = -(-len(points) // (limit // 2))
    out = set()
    for start in range(0, len(points), size):
        stretch = points[start:start + size]
        out.add(min(stretch, key=lambda kv: kv[1])[0])
        out.add(max(stretch, key=lambda kv: kv[1])[0])
    return out


def shown(text: str) -> str:
    """Chart text: invisible and control characters as visible marks, and no newline or tab (a NUL
    byte makes vl-convert abort the process, a lone surrogate makes it raise)."""
    if len(text) <= 60 and text.isascii() and text.isprintable():
        return text  # nothing to mark, replace or cut (a chart's data holds thousands of such labels)
    from harness.reports.text import shown as visible

    text = visible(text).replace("\n", " ").replace("\r", " ").replace("\t", " ")
    # Vega cuts long labels in UTF-16 units: a cut astral character (an emoji) leaves half a surrogate
    # pair, which vl-convert cannot read back. Chart text is short and BMP-only; the tables show it whole.
    text = _ASTRAL.sub(lambda m: f"<U+{ord(m.group()):X}>", text)
    return text if len(text) <= 60 else text[:59] + "…"


def _clean(value: Any) -> Any:
    if isinstance(value, str):
        return shown(value)
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def _markup(svg: str) -> Markup:
    # The one place chart markup becomes Markup: it was drawn by vl-convert from JSON data, and
    # check_svg (in harness.reports.svg.draw) has proved it holds no active content.
    return Markup(svg)
