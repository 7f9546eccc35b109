"""Charts as static SVG: a Vega-Lite spec per chart, drawn by vl-convert, inlined in the page.

Why this library: the page must work offline, from ``file://``, under a CSP that runs no script but
our one hashed filter script. vl-convert draws Vega-Lite (a well-kept, declarative grammar) to SVG
in-process, with no browser and no JavaScript in the page, about 20-40 KiB a chart. Data reaches the
chart only as JSON values inside the spec (never as markup or as a Vega expression), and Vega's SVG
writer escapes text; ``check_svg`` still refuses any SVG that holds a script, a foreign object, an
event-handler attribute or a link, so a text a chart carries cannot become markup in the page.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from markupsafe import Markup

from harness.comparison import AdapterSweep, TrainingCurve

SEVERITY_COLOURS = {"error": "#c0392b", "warning": "#e67e22", "info": "#7f8c8d"}
FONT = "DejaVu Sans, Helvetica, Arial, sans-serif"
_ASTRAL = re.compile("[\U00010000-\U0010ffff]")
_SAFE_TAGS = {"svg", "g", "path", "rect", "line", "text", "tspan", "title", "desc", "defs", "clipPath", "circle"}


class ChartError(ValueError):
    """A chart's SVG held something a page must not carry (a script, a handler, a link)."""


@dataclass(frozen=True)
class Chart:
    #: the chart's id in the page (``data-chart`` attribute), for tests and links
    name: str
    svg: Markup
    #: what the chart shows, in words (the figure caption and the image's accessible name)
    caption: str


def _config() -> dict[str, Any]:
    return {"font": FONT, "view": {"stroke": "#ddd"}, "axis": {"labelFontSize": 10, "titleFontSize": 11},
            "header": {"labelFontSize": 11, "labelFontWeight": "bold"}, "legend": {"labelFontSize": 10},
            "background": "white"}


def _arrow(higher_is_better: bool) -> str:
    return "↑" if higher_is_better else "↓"


def sweep_chart(s: AdapterSweep, name: str) -> Chart:
    """Task score, retention, leakage and the reference metrics against scale, one panel each: the
    Pareto front drawn as filled points, the recommended scale as a green rule."""
    panels: list[tuple[str, bool, list[tuple[float, float | None]]]] = [
        (f"task score {_arrow(True)}", True, [(p.scale, p.task) for p in s.points]),
        (f"retention {_arrow(True)}", True, [(p.scale, p.retention) for p in s.points]),
        (f"format leakage {_arrow(False)}", False, [(p.scale, p.leakage) for p in s.points]),
    ]
    for c in s.curves:
        panels.append((shown(f"{c.suite} · {c.metric}") + f" {_arrow(c.higher_is_better)}", c.higher_is_better,
                       list(c.points)))
    panels = [p for p in panels if any(v is not None for _, v in p[2])]
    front = set(s.front)
    values = [{"panel": title, "scale": x, "value": v,
               "point": "Pareto front" if x in front else "dominated", "rec": x == s.recommended}
              for title, _, pts in panels for x, v in pts if v is not None]
    layers: list[dict[str, Any]] = [
        {"mark": {"type": "line", "color": "#4a7fb5"},
         "encoding": {"x": {"field": "scale", "type": "quantitative", "title": "LoRA scale"},
                      "y": {"field": "value", "type": "quantitative", "title": None, "scale": {"zero": False}}}},
        {"mark": {"type": "point", "filled": True, "size": 60},
         "encoding": {"x": {"field": "scale", "type": "quantitative"}, "y": {"field": "value", "type": "quantitative"},
                      "color": {"field": "point", "type": "nominal", "title": None,
                                "scale": {"domain": ["Pareto front", "dominated"], "range": ["#1f5fa0", "#b8c7d9"]}}}},
    ]
    if s.recommended is not None:
        # one row per panel carries rec (the point at the recommended scale): one rule and one label each
        only = [{"filter": {"field": "rec", "equal": True}}]
        layers.append({"transform": only, "mark": {"type": "rule", "color": "#1e8449", "strokeWidth": 2, "strokeDash": [5, 3]},
                       "encoding": {"x": {"field": "scale", "type": "quantitative"}}})
        layers.append({"transform": only, "mark": {"type": "text", "color": "#1e8449", "align": "left", "dx": 3, "fontSize": 9},
                       "encoding": {"x": {"field": "scale", "type": "quantitative"}, "y": {"value": 6},
                                    "text": {"value": "recommended"}}})
    spec = {
        "$schema": "https://vega.github.io/schema/vega-lite/v5.json",
        "data": {"values": values}, "config": _config(),
        "facet": {"field": "panel", "type": "nominal", "title": None, "sort": [t for t, _, _ in panels]},
        "columns": min(len(panels), 3) or 1,
        "spec": {"width": 190, "height": 120, "layer": layers},
        "resolve": {"scale": {"y": "independent"}},
    }
    rec = f"recommended scale {s.recommended:g} (green rule)" if s.recommended is not None else "no recommended scale"
    return Chart(name, _svg(spec), f"{s.label}: metrics against LoRA scale; filled points are the Pareto front; {rec}.")


def loss_chart(t: TrainingCurve, name: str) -> Chart:
    """Training and eval loss against step, each anomaly finding a rule at its step (colour = severity)."""
    values = [{"step": p.step, "series": series, "value": v}
              for p in t.points for series, v in (("loss", p.loss), ("eval_loss", p.eval_loss)) if v is not None]
    marks: list[dict[str, Any]] = [{"step": f.step, "severity": shown(f.severity), "kind": shown(f.kind)} for f in t.findings if f.step is not None]
    x = {"field": "step", "type": "quantitative", "title": "step"}
    layers: list[dict[str, Any]] = [
        {"mark": {"type": "line", "strokeWidth": 1.5},
         "encoding": {"x": x, "y": {"field": "value", "type": "quantitative", "title": "loss", "scale": {"zero": False}},
                      "color": {"field": "series", "type": "nominal", "title": "curve",
                                "scale": {"domain": ["loss", "eval_loss"], "range": ["#4a7fb5", "#8e44ad"]}}}},
        {"transform": [{"filter": {"field": "series", "equal": "eval_loss"}}],
         "mark": {"type": "point", "filled": True, "size": 30, "color": "#8e44ad"},
         "encoding": {"x": x, "y": {"field": "value", "type": "quantitative"}}},
    ]
    if marks:
        sev = [k for k in SEVERITY_COLOURS if any(m["severity"] == k for m in marks)]
        sev += sorted({m["severity"] for m in marks} - set(sev))
        layers.append({"data": {"values": marks}, "mark": {"type": "rule", "strokeWidth": 2, "strokeDash": [4, 2]},
                       "encoding": {"x": x, "stroke": {"field": "severity", "type": "nominal", "title": "finding",
                                                       "scale": {"domain": sev,
                                                                 "range": [SEVERITY_COLOURS.get(k, "#555") for k in sev]}}}})
        layers.append({"data": {"values": marks}, "mark": {"type": "text", "align": "left", "dx": 3, "fontSize": 9,
                                                           "color": "#555"},
                       "encoding": {"x": x, "y": {"value": 8}, "text": {"field": "kind"}}})
    spec = {"$schema": "https://vega.github.io/schema/vega-lite/v5.json", "data": {"values": values},
            "config": _config(), "width": 560, "height": 160, "layer": layers,
            "resolve": {"scale": {"color": "independent"}}}
    n = len(marks)
    return Chart(name, _svg(spec), f"{t.label}: training loss and eval loss by step, {n} anomaly finding(s) marked.")


def shown(text: str) -> str:
    """Chart text: invisible and control characters as visible marks, and no newline or tab (a NUL
    byte makes vl-convert abort the process, a lone surrogate makes it raise)."""
    from reports.render import shown as visible

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


def _svg(spec: dict[str, Any]) -> Markup:
    import vl_convert

    svg = vl_convert.vegalite_to_svg(_clean(spec))
    check_svg(svg)
    # The one place chart markup becomes Markup: it was drawn by vl-convert from JSON data, and
    # check_svg has proved it holds no active content.
    return Markup(svg)


def check_svg(svg: str) -> None:
    """Refuse SVG with active content: script, foreignObject, on* attributes, links, unknown elements."""
    try:
        root = ET.fromstring(svg)
    except ET.ParseError as exc:
        raise ChartError(f"chart SVG does not parse: {exc}") from None
    for el in root.iter():
        tag = el.tag.rsplit("}", 1)[-1]
        if tag not in _SAFE_TAGS:
            raise ChartError(f"chart SVG holds a <{tag}> element")
        for attr, value in el.attrib.items():
            local = attr.rsplit("}", 1)[-1].lower()
            if local.startswith("on") or (local in ("href", "src", "style") and re.search(r"(?i)(javascript|url\()", value)):
                raise ChartError(f"chart SVG holds a {local}= attribute on <{tag}>")
            if local == "href":
                raise ChartError(f"chart SVG holds a link on <{tag}>")


def sweep_charts(sweeps: Sequence[AdapterSweep], prefix: str) -> dict[str, Chart]:
    return {s.adapter_id: sweep_chart(s, f"{prefix}sweep-{i}") for i, s in enumerate(sweeps)}
