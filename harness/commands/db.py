"""`harness db`: maintenance of a results database (rebuild, check, info, quarantine-wal)."""

from __future__ import annotations

import argparse
from pathlib import Path

from harness.commands._common import add_db_argument

ACTIONS = {
    "rebuild": "recreate the database from its shards into a new file, swapped in only if it holds every row the "
               "current one does (the current file is kept as <db>.bak-<time>-<id>)",
    "check": "read every row of every table and compare the database with its shards; exit 5 on any problem",
    "info": "schema version and row counts (a quick look; `check` is the full scan)",
    "quarantine-wal": "move a damaged <db>.wal aside (<db>.wal.quarantined-<time>-<id>), re-ingest the shards, "
                      "report what was lost and recovered",
}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "db",
        help="results database maintenance (rebuild from shards, full check, schema info, WAL quarantine)",
        description="Maintenance of a results database and its shard directory (<db>.shards). "
                    + " ".join(f"{k}: {v}." for k, v in ACTIONS.items()),
    )
    p.add_argument("action", choices=list(ACTIONS), help="what to do (see above)")
    add_db_argument(p)
    p.add_argument("--shards", type=Path, default=None, help="shard directory (default: <db>.shards)")
    p.add_argument("--skip-damaged", action="store_true",
                   help="rebuild: leave out shards that fail their manifest check instead of stopping (they are named)")
    p.add_argument("--force", action="store_true",
                   help="rebuild: swap the new file in even if it lacks rows the current one holds (it is kept as a .bak)")


def _counts(counts: dict[str, int]) -> str:
    keys = [k for k in ("runs", "generations", "scores", "ingested_shards") if k in counts]
    return ", ".join(f"{counts[k]} {k}" for k in keys)


def run(args: argparse.Namespace) -> int:
    from harness.errors import InputError, StorageError
    from harness.store import SCHEMA_VERSION, Store, check, default_db_path, quarantine_wal, rebuild

    path = Path(args.db or default_db_path())
    if args.action == "rebuild":
        rep = rebuild(path, args.shards, skip_damaged=args.skip_damaged, force=args.force)
        for s in rep.skipped:
            print(f"skipped: {s}")
        for n in rep.notes:
            print(f"note: {n}")
        print(f"rebuilt {path} from {rep.shards} shards ({_counts(rep.counts)})"
              + (f"; the previous file is kept at {rep.backup}" if rep.backup else ""))
        return 0
    if not path.exists():
        raise InputError(f"no results database at {path}; pass --db")
    if args.action == "check":
        found = check(path, args.shards)
        if found.problems:
            for p in found.problems[:-1]:
                print(f"problem: {p}")
            raise StorageError(f"{path}: {len(found.problems)} problem(s) found by `harness db check`"
                               + (f" (the others are listed above); {found.problems[-1]}" if len(found.problems) > 1
                                  else f": {found.problems[-1]}"))
        print(f"{path}: healthy: every row of {len(found.counts)} tables read ({_counts(found.counts)}); "
              f"all {found.shards} shards match their manifests and are in the database")
        return 0
    if args.action == "quarantine-wal":
        q = quarantine_wal(path, args.shards)
        if q.moved_to is None:
            print(f"no WAL beside {path}: nothing to quarantine ({_counts(q.after)})")
            return 0
        print(f"moved {path}.wal to {q.moved_to}")
        print(f"with the WAL: {_counts(q.before) if q.before is not None else 'unreadable (' + str(q.before_error) + ')'}; "
              f"at the last checkpoint: {_counts(q.at_checkpoint)}; after re-ingesting {len(q.reingested)} shards: "
              f"{_counts(q.after)}")
        lost = q.lost
        if lost is None:
            print("lost: unknown beyond the shards (the WAL could not be read); every row the shards hold is back")
        elif lost:
            print("lost (rows the WAL held that no shard has): " + ", ".join(f"{n} {t}" for t, n in sorted(lost.items())))
        else:
            print("lost: nothing (every row the WAL held is back from the shards)")
        return 0
    store = Store(path, shard_dir=args.shards, read_only=True)
    counts = store.queries.counts()
    print(f"{path}: schema v{counts.schema_version} (harness supports v{SCHEMA_VERSION}); "
          f"{counts.runs} runs, {counts.generations} generations, {counts.scores} scores, {counts.shards} shards"
          "; `harness db check` reads every row")
    return 0
