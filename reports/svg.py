"""Vega-Lite specs drawn to checked static SVG by vl-convert, in this process or in worker processes.

vl-convert runs one Vega runtime per process and draws one chart at a time (threads queue behind
it), about 50-150 ms of CPU a chart here. A report of many adapters has tens of charts, so when
two or more workers would each get ``CHARTS_PER_WORKER`` charts they are dealt out to fresh
interpreters running this module (``python -m harness.reports.svg``, specs in and SVG out as JSON lines),
one per idle CPU, at most ``MAX_WORKERS``. Each worker starts its own runtime (about a second of CPU),
so a few charts are drawn here. ``HARNESS_CHART_WORKERS`` overrides the choice (0: always in this
process); the choice is logged. A worker checks its SVG with ``check_svg`` before sending it.

This file imports only vl-convert and the standard library, so a worker starts quickly.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: charts a worker must get to pay for its start (a new interpreter and Vega runtime, ~1 s of CPU)
CHARTS_PER_WORKER = 8
MAX_WORKERS = 4
_SAFE_TAGS = {"svg", "g", "path", "rect", "line", "text", "tspan", "title", "desc", "defs", "clipPath", "circle"}
_logger = logging.getLogger(__name__)


class ChartError(ValueError):
    """A chart could not be drawn, or its SVG held something a page must not carry (a script, a
    handler, a link)."""


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


def draw(spec: dict[str, Any]) -> str:
    """One Vega-Lite spec as SVG that ``check_svg`` passed."""
    import vl_convert

    try:
        svg: str = vl_convert.vegalite_to_svg(spec)
    except ValueError as exc:  # vl-convert's "conversion failed" with Vega's message
        raise ChartError(f"vl-convert could not draw a chart: {' '.join(str(exc).split())[:300]}") from None
    check_svg(svg)
    return svg


def workers_for(n_charts: int) -> int:
    """Worker processes for ``n_charts`` charts: 0 (draw here) unless at least two would each get
    ``CHARTS_PER_WORKER`` charts and two CPUs are idle. On a busy machine a worker gets no CPU of
    its own: it only adds the start of another Vega runtime (measured on the 2-core machine at load
    4: 7.4-8.4 s in two workers, 6.4 s here)."""
    override = os.environ.get("HARNESS_CHART_WORKERS", "").strip()
    if override:
        if not override.isdigit():
            raise ValueError(f"HARNESS_CHART_WORKERS={override!r}: give a whole number of worker processes (0: none)")
        return int(override)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    # the 1-minute load average counts this process's own recent work (building the comparison, or a
    # caller's set-up) as load too: take it out, so only other jobs keep the charts in this process
    t = os.times()
    own = min(60.0, t.user + t.system) / 60.0
    idle = round(cpus - max(0.0, os.getloadavg()[0] - own)) if hasattr(os, "getloadavg") else cpus
    n = min(cpus, idle, MAX_WORKERS, n_charts // CHARTS_PER_WORKER)
    return n if n >= 2 else 0


def draw_all(specs: Sequence[dict[str, Any]], workers: int | None = None) -> list[str]:
    """Every spec as checked SVG, in order; ``workers`` processes (None: ``workers_for``, 0 or 1: here)."""
    n = min(workers_for(len(specs)) if workers is None else workers, len(specs))
    if n <= 1:
        _logger.info("charts: %d drawn in this process", len(specs))
        return [draw(s) for s in specs]
    _logger.info("charts: %d drawn in %d worker processes", len(specs), n)
    from concurrent.futures import ThreadPoolExecutor

    shares = [list(range(k, len(specs), n)) for k in range(n)]  # dealt round-robin: each gets every kind
    out: list[str] = [""] * len(specs)
    # a thread a worker only waits on its pipes; a worker's error is raised here
    with ThreadPoolExecutor(n) as threads:
        for share, svgs in zip(shares, threads.map(_in_worker, [[specs[i] for i in share] for share in shares])):
            for i, svg in zip(share, svgs):
                out[i] = svg
    return out


def _in_worker(specs: Sequence[dict[str, Any]]) -> list[str]:
    """Draw ``specs`` in a fresh interpreter running this module: JSON lines in, JSON lines out. (Not
    multiprocessing: its spawned children import the caller's main module again, which runs an
    unguarded script twice.)"""
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.Popen([sys.executable, "-m", "harness.reports.svg"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    data = "".join(json.dumps(s) + "\n" for s in specs).encode("ascii")
    stdout, stderr = proc.communicate(data)
    lines = stdout.decode("utf-8").splitlines()
    if proc.returncode != 0 or len(lines) != len(specs):
        tail = stderr.decode("utf-8", "replace").strip().splitlines()[-3:]
        raise ChartError(f"the chart worker stopped (exit {proc.returncode}) after {len(lines)} of {len(specs)} charts: "
                         + (" / ".join(tail) or "no message"))
    out = []
    for line in lines:
        answer = json.loads(line)
        if "error" in answer:
            raise ChartError(answer["error"])
        out.append(answer["svg"])
    return out


def _serve() -> None:
    """The worker: one spec a line on stdin, one ``{"svg": ...}`` or ``{"error": ...}`` a line on stdout."""
    for line in sys.stdin:
        try:
            answer = {"svg": draw(json.loads(line))}
        except ChartError as exc:
            answer = {"error": str(exc)}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    _serve()
