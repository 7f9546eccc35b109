"""Run every command of the README's ```bash blocks, in order, and check each one's exit code.

Called by `.ci/readme` (which sets the environment); see its header for how to run it. Rules the
README follows so that this check can read it:

- Each ```bash block is a list of commands: a line ending in `\\` continues on the next line, and a
  heredoc (`<<'EOF'` ... `EOF`) belongs to the command that opens it. Lines that start with `#` and
  blank lines are comments.
- A command is expected to exit 0 unless its first line ends with a comment `# exits N: why`.
- An HTML comment on the line right before a block's fence marks the block:
  `<!-- readme-check: skip (why) -->` never runs it (the set-up itself, hardware this check lacks);
  `<!-- readme-check: only-with --benchmarks -->` runs it only when that flag is given.
- A command fails when its exit code is not the expected one or its output holds a Python traceback.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MARKER = re.compile(r"^<!--\s*readme-check:\s*(?P<what>skip|only-with)\s*(?P<arg>.*?)\s*-->\s*$")
EXITS = re.compile(r"#\s*exits\s+(\d+)\b")
HEREDOC = re.compile(r"<<-?\s*(['\"]?)([A-Za-z_][A-Za-z0-9_]*)\1")
FLAGS = ("--benchmarks", "--tests")
COMMENT = re.compile(r"\s+#\s.*$")  # a trailing comment (for display only)
TRACEBACK = "Traceback (most recent call last)"


@dataclass(frozen=True)
class Command:
    text: str  # what bash runs (continuations and heredoc bodies included)
    line: int  # README line of its first line
    expect: int


@dataclass(frozen=True)
class Block:
    line: int  # README line of the opening fence
    commands: tuple[Command, ...]
    skip: str | None  # why it never runs
    only_with: str | None  # the flag it needs


def split_commands(lines: list[str], first_line: int) -> list[Command]:
    """The commands of one block's body; ``first_line`` is the README line of ``lines[0]``."""
    out: list[Command] = []
    i = 0
    while i < len(lines):
        stripped = lines[i].strip()
        if not stripped or stripped.startswith("#"):
            i += 1
            continue
        start, text = i, [lines[i]]
        while text[-1].rstrip().endswith("\\") and i + 1 < len(lines):
            i += 1
            text.append(lines[i])
        heredoc = HEREDOC.search("\n".join(text))
        if heredoc:
            end = heredoc.group(2)
            while i + 1 < len(lines) and lines[i].strip() != end:
                i += 1
                text.append(lines[i])
            if text[-1].strip() != end:
                raise SystemExit(f"README.md:{first_line + start}: heredoc {end!r} is never closed")
        m = EXITS.search(text[0]) or EXITS.search(text[-1])
        out.append(Command("\n".join(text), first_line + start, int(m.group(1)) if m else 0))
        i += 1
    return out


def read_blocks(readme: Path) -> list[Block]:
    lines = readme.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        if lines[i].strip() != "```bash":
            i += 1
            continue
        marker = MARKER.match(lines[i - 1].strip()) if i > 0 else None
        start = i
        i += 1
        body_start = i
        while i < len(lines) and lines[i].strip() != "```":
            i += 1
        skip = (marker.group("arg").strip("() ") or "marked skip") if marker and marker.group("what") == "skip" else None
        only = marker.group("arg") if marker and marker.group("what") == "only-with" else None
        if only is not None and only not in FLAGS:
            raise SystemExit(f"README.md:{start}: unknown flag {only!r} in the readme-check marker; known: {FLAGS}")
        blocks.append(Block(start + 1, tuple(split_commands(lines[body_start:i], body_start + 1)), skip, only))
        i += 1
    return blocks


def one_line(cmd: str, width: int = 150) -> str:
    """The command on one line for the table: continuations joined, trailing comments and heredoc bodies left out."""
    first, *rest = cmd.splitlines()
    if HEREDOC.search(first):
        parts, tail = [first], f" ... ({len(rest)} more lines)"
    else:
        parts, tail = cmd.splitlines(), ""
    text = " ".join(COMMENT.sub("", part).strip().rstrip("\\").strip() for part in parts) + tail
    return text if len(text) <= width else text[: width - 3] + "..."


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Run the README's bash blocks and check every exit code.")
    p.add_argument("--benchmarks", action="store_true", help="also run the block marked only-with --benchmarks")
    p.add_argument("--tests", action="store_true", help="also run the block marked only-with --tests")
    p.add_argument("--list", action="store_true", help="print the commands (numbered) and what is skipped; run nothing")
    p.add_argument("--from", dest="start", type=int, default=1, metavar="N",
                   help="start at command N (numbers from --list): to rerun after a fix")
    p.add_argument("--readme", type=Path, default=ROOT / "README.md")
    args = p.parse_args(argv)
    enabled = {f for f in FLAGS if getattr(args, f.lstrip("-"))}
    logs = Path(tempfile.mkdtemp(prefix="readme-check-"))
    n, failures = 0, []
    print(f"{'#':>3}  {'exit':>10}  {'secs':>6}  command (README line)")
    for block in read_blocks(args.readme):
        why = block.skip or (f"only with {block.only_with}" if block.only_with and block.only_with not in enabled
                             else None)
        if why:
            print(f"  -  {'skipped':>10}  {'':>6}  block at README.md:{block.line} ({len(block.commands)} commands): {why}")
            continue
        for cmd in block.commands:
            n += 1
            label = f"{one_line(cmd.text)}  (:{cmd.line})"
            if args.list or n < args.start:
                print(f"{n:>3}  {'expect ' + str(cmd.expect) if cmd.expect else '':>10}  {'':>6}  {label}")
                continue
            t0 = time.perf_counter()
            proc = subprocess.run(["bash", "-c", "set -o pipefail\n" + cmd.text], cwd=ROOT, stdin=subprocess.DEVNULL,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
            secs = time.perf_counter() - t0
            log = logs / f"{n:02d}.log"
            log.write_text(cmd.text + "\n----\n" + proc.stdout, encoding="utf-8")
            problems = []
            if proc.returncode != cmd.expect:
                problems.append(f"exit {proc.returncode}, expected {cmd.expect}")
            if TRACEBACK in proc.stdout:
                problems.append("a Python traceback in its output")
            print(f"{n:>3}  {proc.returncode:>10}  {secs:>6.1f}  {label}", flush=True)
            if problems:
                failures.append(f"command {n} (README.md:{cmd.line}): {'; '.join(problems)}; output in {log}")
                tail = proc.stdout.splitlines()[-25:]
                print("\n".join(f"       | {t}" for t in tail) + f"\n     FAILED: {'; '.join(problems)}", flush=True)
    if args.list:
        return 0
    print(f"\noutputs: {logs}")
    for f in failures:
        print(f"FAILED {f}")
    print(f"{n - len(failures) - (args.start - 1)} passed, {len(failures)} failed" if n else "no command ran")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
