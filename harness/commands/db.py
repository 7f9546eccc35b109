"""`harness db`: maintenance of a results database."""

from __future__ import annotations

import argparse
from pathlib import Path

from harness.commands._common import add_db_argument


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "db",
        help="results database maintenance (rebuild from shards, schema info)",
        description="Maintenance of a results database and its shard directory (<db>.shards).",
    )
    p.add_argument("action", choices=["rebuild", "info"],
                   help="rebuild: recreate the database from its shards (the old file is kept as <db>.bak-<time>); "
                        "info: schema version and row counts")
    add_db_argument(p)
    p.add_argument("--shards", type=Path, default=None, help="shard directory (default: <db>.shards)")


def run(args: argparse.Namespace) -> int:
    from harness.errors import InputError
    from harness.store import SCHEMA_VERSION, Store, default_db_path, rebuild

    path = Path(args.db or default_db_path())
    if args.action == "rebuild":
        n, moved = rebuild(path, args.shards)
        print(f"rebuilt {path} from {n} shards" + (f"; the previous file is kept at {moved}" if moved else ""))
        return 0
    if not path.exists():
        raise InputError(f"no results database at {path}; pass --db")
    store = Store(path, shard_dir=args.shards)
    counts = store.query(
        "SELECT (SELECT max(version) FROM schema_migrations) AS schema_version, (SELECT count(*) FROM runs) AS runs, "
        "(SELECT count(*) FROM generations) AS generations, (SELECT count(*) FROM scores) AS scores, "
        "(SELECT count(*) FROM ingested_shards) AS shards"
    )[0]
    print(f"{path}: schema v{counts['schema_version']} (harness supports v{SCHEMA_VERSION}); " +
          ", ".join(f"{counts[k]} {k}" for k in ("runs", "generations", "scores", "shards")))
    return 0
