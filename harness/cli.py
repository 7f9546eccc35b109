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
    finally:
        from harness.util import distributed

        distributed.shutdown()


if __name__ == "__main__":
    raise SystemExit(main())
