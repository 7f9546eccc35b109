"""The `harness` command: parse, dispatch to one command module, map errors to exit codes.

Each subcommand lives in ``harness/commands/<name>.py`` and exposes ``add_parser(subparsers)`` and
``run(args) -> int``. Heavy libraries (torch, transformers) are imported inside ``run`` so that
``harness --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from harness import __version__
from harness.errors import HarnessError

# Order is the order shown in --help.
COMMANDS = ("demo", "train", "eval", "check", "sweep", "export", "suites", "runs", "results", "report", "anomalies", "db", "sql")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="harness",
        description=(
            "adapter-harness: train LoRA adapters, evaluate them against their base model for task "
            "accuracy and retained general knowledge, store every result in DuckDB, and report."
        ),
    )
    parser.add_argument("--version", action="version", version=f"adapter-harness {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"harness.commands.{name}").add_parser(sub)
    return parser


# Deprecations inside the libraries we call (peft 0.21 asks transformers 5 for is_gradient_checkpointing):
# nothing a user can act on, printed on every run. Only these exact messages are silenced.
_UPSTREAM_DEPRECATIONS = (r"`is_gradient_checkpointing` is deprecated",)


#: the exit code of an unexpected exception (sysexits' EX_SOFTWARE): distinct from 1 (a gate failed) and from
#: 2-5 (the user's input, artifacts, safety, storage), so CI never reads a crash as a verdict
INTERNAL_ERROR = 70


def _save_traceback() -> str | None:
    """The current exception's traceback in ``$HARNESS_HOME/crashes/`` (one line on the terminal, the whole
    story in the file); printed to stderr instead where the file cannot be written."""
    import os
    import time
    import traceback

    text = traceback.format_exc()
    try:
        from harness.models.base import harness_home

        folder = harness_home() / "crashes"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{os.getpid()}.txt"
        path.write_text(f"harness {' '.join(sys.argv[1:])}\n\n{text}", encoding="utf-8")
        return str(path)
    except Exception:  # wherever the file fails, the traceback still reaches the user
        print(text, file=sys.stderr, end="")
        return None


def main(argv: Sequence[str] | None = None) -> int:
    import warnings

    for message in _UPSTREAM_DEPRECATIONS:
        warnings.filterwarnings("ignore", message=message, category=FutureWarning)
    parser = build_parser()
    args = parser.parse_args(argv)
    module = importlib.import_module(f"harness.commands.{args.command}")
    try:
        return int(module.run(args))
    except HarnessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug, not a verdict: never exit 1, which CI reads as "a gate failed"
        where = _save_traceback()
        print(f"internal error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} -- a bug in "
              f"adapter-harness, not a verdict on the adapter (exit {INTERNAL_ERROR}); please report it with the "
              + (f"traceback in {where}" if where else "traceback above"), file=sys.stderr)
        return INTERNAL_ERROR
    finally:
        from harness.util import distributed

        distributed.shutdown()


if __name__ == "__main__":
    raise SystemExit(main())
