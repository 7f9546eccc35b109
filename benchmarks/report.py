"""Report at scale: 20 adapters x 6 scales x 4 suites x 300 examples, from a constructed store.

Prints the time to build and write the report, its size, and the time Chromium takes to open it
from file:// (load event and first paint of every chart), with the machine's load average (the
times are wall-clock: on a shared machine they vary with what else runs). Targets: written in under
5 s, under 15 MB, opened in under 3 s. What keeps it bounded: the aggregates are GROUP BYs in DuckDB
(only the per-example rows of the tables shown reach Python), the per-example table holds at most
--max-examples rows per adapter at its chosen scale (regressions first; the counts cover every
example), each text is cut to 2000 characters, loss curves past 1000 points are thinned, and charts
are static SVG (one sweep and one loss chart per adapter) drawn in worker processes when there are
many and CPUs are idle (--chart-workers; default: one per idle CPU, see reports/svg.py).

    .venv/bin/python benchmarks/report.py [--adapters 20] [--scales 6] [--examples 300]
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.analysis import build_report
from harness.reports.render import write_report
from tests.reports.test_report_data import make_store


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--adapters", type=int, default=20)
    ap.add_argument("--scales", type=int, default=6)
    ap.add_argument("--suites", type=int, default=4)
    ap.add_argument("--examples", type=int, default=300)
    ap.add_argument("--steps", type=int, default=500, help="logged training steps per adapter")
    ap.add_argument("--max-examples", type=int, default=100)
    ap.add_argument("--chart-workers", type=int, default=None, help="processes that draw the charts (0: this one)")
    args = ap.parse_args()
    scales = tuple(round(0.25 * (i + 1), 2) for i in range(args.scales))
    drawn: list[str] = []  # harness.reports.svg logs where the charts were drawn
    log = logging.getLogger("harness.reports.svg")
    log.setLevel(logging.INFO)
    log.addHandler(Collect(drawn))
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        store, run_id = make_store(Path(d) / "h.duckdb", n_adapters=args.adapters, scales=scales,
                                   n_examples=args.examples, n_suites=args.suites, n_steps=args.steps)
        n = store.query("SELECT count(*) AS n FROM run_results WHERE run_id = ?", [run_id])[0]["n"]
        print(f"store: {n} generations ({args.adapters} adapters x {args.scales} scales x {args.suites} suites x "
              f"{args.examples} examples + base), {args.steps} steps per training run; built in {time.perf_counter() - t:.1f}s")
        t = time.perf_counter()
        report = build_report(store, [run_id], max_examples=args.max_examples)
        t_build = time.perf_counter() - t
        t = time.perf_counter()
        path = write_report(report, Path(d) / "report.html", chart_workers=args.chart_workers)
        t_write = time.perf_counter() - t
        size = path.stat().st_size
        rows = sum(len(x.rows) for r in report.runs for x in r.examples)
        print(f"report: built from the store in {t_build:.2f}s, rendered and written in {t_write:.2f}s "
              f"(total {t_build + t_write:.2f}s; target < 5 s); {drawn[-1] if drawn else 'no charts'}; "
              f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        print(f"size: {size / 1e6:.2f} MB (target < 15 MB); {rows} per-example rows "
              f"(at most {args.max_examples} per adapter)")
        t_open = open_in_chromium(path)
        if t_open is not None:
            print(f"chromium: opened from file:// in {t_open:.2f}s (target < 3 s)")
    return 0


class Collect(logging.Handler):
    def __init__(self, into: list[str]) -> None:
        super().__init__()
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        self.into.append(record.getMessage())


def open_in_chromium(path: Path) -> float | None:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        print("chromium: not installed (run .ci/bootstrap); open time not measured")
        return None
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        t = time.perf_counter()
        page.goto(path.resolve().as_uri(), wait_until="load")
        page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
        took = time.perf_counter() - t
        charts = page.evaluate("() => document.querySelectorAll('figure.chart svg').length")
        print(f"chromium: {charts} charts, {len(errors)} page errors")
        browser.close()
    return took


if __name__ == "__main__":
    raise SystemExit(main())
