"""Small helpers shared by the commands that read a results database."""

from __future__ import annotations

import argparse
from pathlib import Path

from harness.errors import InputError
from harness.store import Store, default_db_path


def add_db_argument(parser: argparse.ArgumentParser) -> None:
    """The ``--db`` option every command that touches the results database takes."""
    parser.add_argument("--db", type=Path, default=None, metavar="F",
                        help="results database (default: $HARNESS_DB or ./harness.duckdb)")


def existing_store(db: Path | None) -> Store:
    """The store at ``db`` (or the default path), for reading: DuckDB is opened read-only.

    An input error when there is no database there.
    """
    path = Path(db or default_db_path())
    if not path.exists():
        raise InputError(f"no results database at {path}; run `harness eval` first or pass --db")
    return Store(path, read_only=True)


def pick_run(store: Store, run_id: str | None) -> str:
    """``run_id`` if the store has it, else (when None) the newest run that evaluated (eval, sweep, check, demo)."""
    if run_id is None:
        newest = store.queries.newest_run_id(("eval", "sweep", "check", "demo"))
        if newest is None:
            raise InputError(f"no eval, sweep, check or demo runs in {store.path}; `harness runs` lists what it holds")
        return newest
    if not store.queries.has_run(run_id):
        raise InputError(f"no run {run_id!r} in {store.path}; `harness runs` lists them")
    return run_id
