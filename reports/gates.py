"""Every rendering of a gate report for people and CI: terminal lines, the Markdown step summary, JUnit
XML and JSON. Nothing here computes a verdict: each function shows the ``GateReport`` it is given."""

from __future__ import annotations

import re
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any


def print_report(report: Any, out: Any = None) -> None:
    """Every gate on stdout (PASS / FAIL / skip), then every failure again on stderr."""
    out = out or sys.stdout
    for o in report.outcomes:
        print(f"{'PASS' if o.passed else 'FAIL'}  {o.result.gate}: {o.result.message}", file=out)
    for name, reason in report.skipped:
        print(f"skip  {name}: {reason}", file=out)
    fails = report.failures
    n = len(report.outcomes)
    print(f"gates: {n - len(fails)} of {n} passed" + (f", {len(fails)} failed" if fails else ""), file=out)
    for o in fails:
        print(f"gate failed: {o.result.gate}: {o.result.message}", file=sys.stderr)
        for w in o.worst:
            print(f"    {w.suite}/{w.example_id}: {_short(w.output)!r} (score {_num(w.value)}"
                  + (f", baseline {_num(w.baseline_value)}" if w.baseline_value is not None else "") + ")", file=sys.stderr)


def _num(v: float | None) -> str:
    return "—" if v is None else f"{v:.4g}"


def _short(text: str | None, n: int = 80) -> str:
    text = "" if text is None else " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


#: Markdown's inline punctuation: escaped, so a model output's ``[text](url)`` or ``![img](url)`` stays text
_MD_PUNCT = re.compile(r"([\\`*_\[\]()!~|#])")
#: URLs GitHub would link on its own (autolinks): a zero-width space after the scheme keeps them text
_AUTOLINK = re.compile(r"(?i)\b(https?|ftp|mailto|file|javascript|data)(:)|\b(www)(\.)")


def _md(text: str) -> str:
    """Text safe inside a Markdown table cell: model outputs are hostile, so no HTML, no pipes, one line, and no
    live link or image (Markdown punctuation escaped, autolinks broken by a zero-width space)."""
    import html

    one_line = " ".join(str(text).split())
    one_line = _AUTOLINK.sub(lambda m: f"{m.group(1) or m.group(3)}\u200b{m.group(2) or m.group(4)}", one_line)
    return _MD_PUNCT.sub(r"\\\1", html.escape(one_line, quote=False))  # < > & as entities: no HTML either


def markdown_summary(report: Any, context: dict) -> str:
    status = "passed" if report.passed else f"FAILED ({len(report.failures)} gate(s))"
    lines = [f"## adapter-harness check: {status}", "",
             f"adapter `{_md(context['adapter'])}` (`{context['adapter_id'][:12]}`) at scale {context['scale']:g}, "
             f"run `{report.run_id}`" + (f"; baseline `{_md(context['baseline'])}` (`{context['baseline_id'][:12]}`)"
                                          if context.get("baseline") else ""), "",
             "| | gate | metric | observed | threshold | baseline | interval | sentence |",
             "|---|---|---|---|---|---|---|---|"]
    for o in sorted(report.outcomes, key=lambda o: o.passed):
        r = o.result
        iv = f"{o.interval.low:.4g} – {o.interval.high:.4g}" if o.interval else ""
        lines.append(f"| {'✅' if r.passed else '❌'} | {_md(r.gate)} | {_md(r.metric)} | {_num(r.observed)} | "
                     f"{_num(r.threshold)} | {_num(r.baseline)} | {iv} | {_md(r.message)} |")
    for name, reason in report.skipped:
        lines.append(f"| ⏭️ | {_md(name)} | | | | | | {_md(reason)} |")
    worst = [(o, w) for o in report.failures for w in o.worst]
    if worst:
        lines += ["", "### Worst examples of the failed gates", "", "| gate | example | output | score | baseline |", "|---|---|---|---|---|"]
        lines += [f"| {_md(o.result.gate)} | {_md(w.suite)}/{_md(w.example_id)} | {_md(_short(w.output))} | {_num(w.value)} | "
                  f"{_num(w.baseline_value)} |" for o, w in worst]
    return "\n".join(lines)


def write_junit(report: Any, path: Path) -> None:
    """One test case per gate (name: gate@scale), a <failure> with the sentence for each failed one."""
    import xml.etree.ElementTree as ET

    n, fails = len(report.outcomes), len(report.failures)
    root = ET.Element("testsuites", name="adapter-harness", tests=str(n + len(report.skipped)), failures=str(fails))
    suite = ET.SubElement(root, "testsuite", name="harness check", tests=str(n + len(report.skipped)), failures=str(fails),
                          errors="0", skipped=str(len(report.skipped)))
    for o in report.outcomes:
        name = o.result.gate + (f"@{o.scale:g}" if o.scale is not None else "")
        case = ET.SubElement(suite, "testcase", classname=f"harness.gates.{o.kind}", name=name, time="0")
        if not o.passed:
            body = [o.result.message] + [f"{w.suite}/{w.example_id}: {_short(w.output)!r} (score {_num(w.value)})" for w in o.worst]
            ET.SubElement(case, "failure", message=o.result.message).text = "\n".join(body)
        else:
            ET.SubElement(case, "system-out").text = o.result.message
    for name, reason in report.skipped:
        case = ET.SubElement(suite, "testcase", classname="harness.gates.skipped", name=name, time="0")
        ET.SubElement(case, "skipped", message=reason)
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)


def report_json(report: Any, context: dict) -> dict:
    return {
        "format_version": 1, "run_id": report.run_id, "passed": report.passed, **context,
        "gates": [{**asdict(o.result), "kind": o.kind, "target": o.target, "scale": o.scale, "suite": o.suite,
                   "interval": asdict(o.interval) if o.interval else None, "p_value": o.p_value,
                   "worst": [asdict(w) for w in o.worst]} for o in report.outcomes],
        "skipped": [{"gate": g, "reason": r} for g, r in report.skipped],
    }


#: what an errored check's exit code means, for its summary (DESIGN.md's codes)
_ERROR_KINDS = {2: "a usage or input error", 3: "incompatible artifacts", 4: "refused for safety", 5: "storage trouble"}


def error_markdown(code: int, message: str) -> str:
    """The step summary of a check that could not judge: no gate passed or failed, and why."""
    return "\n".join([f"## adapter-harness check: ERROR (exit {code}, {_ERROR_KINDS.get(code, 'an error')})", "",
                      "No gate was judged: the check stopped before it could.", "", f"> {_md(message)}"])


def error_json(code: int, message: str) -> dict:
    return {"format_version": 1, "passed": False, "error": {"exit_code": code, "kind": _ERROR_KINDS.get(code, "error"),
                                                            "message": message}, "gates": [], "skipped": []}


def write_error_junit(code: int, message: str, path: Path) -> None:
    """One test case, errored: a CI test report shows the check did not run rather than nothing at all."""
    import xml.etree.ElementTree as ET

    root = ET.Element("testsuites", name="adapter-harness", tests="1", failures="0", errors="1")
    suite = ET.SubElement(root, "testsuite", name="harness check", tests="1", failures="0", errors="1", skipped="0")
    case = ET.SubElement(suite, "testcase", classname="harness.check", name="harness check", time="0")
    ET.SubElement(case, "error", message=message, type=f"exit {code}").text = message
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)
