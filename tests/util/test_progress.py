"""Issue 35.2: a long step shows progress and an estimate: a line per tenth of the way off a terminal."""

from __future__ import annotations

import re

from harness.util.progress import Progress


def test_off_a_terminal_a_line_per_tenth_with_the_time_left():
    lines: list[str] = []
    p = Progress(200, "replay answers", lines.append, terminal=False)
    for done in range(0, 201, 8):  # 8 at a time: crosses each tenth once
        p.update(done)
    p.close()
    assert len(lines) == 10, lines
    assert [int(re.search(r": (\d+)/200", line).group(1)) for line in lines] == [24, 40, 64, 80, 104, 120, 144, 160, 184, 200]
    assert all("left" in line for line in lines[:-1]) and "left" not in lines[-1]
    assert lines[-1].startswith("  replay answers: 200/200 (100%)")


def test_one_update_that_crosses_many_tenths_is_one_line():
    lines: list[str] = []
    with Progress(5, "x", lines.append, terminal=False) as p:
        p.update(5)
        p.update(5)
    assert len(lines) == 1 and "5/5 (100%)" in lines[0]


def test_nothing_to_do_says_nothing():
    lines: list[str] = []
    with Progress(0, "x", lines.append, terminal=False) as p:
        p.update(0)
    assert lines == []
