"""`harness sql`: a read-only SQL query against the results database, printed as a table."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from harness.commands._common import add_db_argument


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sql",
        help="run a read-only SQL query on the results database (views: v_runs, v_scores, v_suite_summary, ...)",
        description=(
            "Run one SQL query on the results database, read-only (the database is opened read-only: a query "
            "cannot change it), and print the rows as a table or JSON. The schema and its views are in "
            "harness/store/schema.sql; no separate duckdb command is needed."
        ),
    )
    p.add_argument("query", metavar="SQL", help="e.g. \"SELECT * FROM v_runs\"")
    add_db_argument(p)
    p.add_argument("--json", action="store_true", help="print a JSON list of rows")
    p.add_argument("--out", type=Path, default=None, metavar="FILE",
                   help="write every row to FILE instead, by its suffix: .csv, .parquet, .jsonl (one object a line) "
                        "or .json (a list); written whole or not at all")
    p.add_argument("--limit", type=int, default=None,
                   help="print at most N rows (default: 200 in the table; every row with --json, which never cuts silently)")


def run(args: argparse.Namespace) -> int:
    import duckdb

    from harness.analysis.summary import format_table
    from harness.commands._common import existing_store
    from harness.errors import InputError
    from harness.reports.text import shown

    try:
        statements = duckdb.extract_statements(args.query)
    except duckdb.Error as exc:
        raise InputError(f"query failed: {str(exc).splitlines()[0]}; the views are listed in harness/store/schema.sql") from None
    writes = sorted({st.type.name for st in statements if st.type.name not in ("SELECT", "EXPLAIN")})
    if len(statements) != 1 or writes:
        copy = "COPY" in writes
        raise InputError("harness sql runs one read-only SELECT" + (f", not {', '.join(writes)}" if writes else "")
                         + ("; to write a query's rows to a file, pass --out FILE.csv, .parquet, .jsonl or .json" if copy
                            else "; the store is changed only by harness commands (its shards are the record)"))
    if args.out is not None:
        return _write(args)
    store = existing_store(args.db)
    try:
        rows = store.query(args.query)
    except duckdb.Error as exc:
        # storage damage is already a StorageError inside the store; what reaches here is the query's own
        # mistake (parser, binder, a table that does not exist, an attempt to write)
        raise InputError(f"query failed: {str(exc).splitlines()[0]}; the views are listed in harness/store/schema.sql") from None
    if args.json:
        # machine output: every row unless --limit asks for fewer, and then the cut is said on stderr
        print(json.dumps(rows[: args.limit] if args.limit is not None else rows, indent=2, default=str))
        if args.limit is not None and len(rows) > args.limit:
            print(f"harness sql: {len(rows) - args.limit} more rows not printed (--limit {args.limit})", file=sys.stderr)
        return 0
    if not rows:
        print("(no rows)")
        return 0
    limit = 200 if args.limit is None else args.limit
    header = list(rows[0])
    # stored text is hostile: a model output's terminal escape sequences are shown as marks, never sent raw
    cells = [[("NULL" if v is None else shown(str(v)))[:60] for v in r.values()] for r in rows[:limit]]
    print(format_table([shown(h) for h in header], cells))
    if len(rows) > limit:
        print(f"({len(rows) - limit} more rows; --limit or --json)")
    return 0


#: --out's suffix -> DuckDB's COPY options
_FORMATS = {".csv": "FORMAT CSV, HEADER", ".parquet": "FORMAT PARQUET", ".jsonl": "FORMAT JSON",
            ".ndjson": "FORMAT JSON", ".json": "FORMAT JSON, ARRAY true"}


def _write(args: argparse.Namespace) -> int:
    """The query's rows into ``--out`` by DuckDB's own COPY (types kept in Parquet), through a temporary file
    beside it, so a failed or cut-off write leaves no partial file and a previous one untouched."""
    import os

    import duckdb

    from harness.commands._common import existing_store
    from harness.errors import InputError
    from harness.reports.render import check_out_path

    out: Path = args.out
    options = _FORMATS.get(out.suffix.lower())
    if options is None:
        raise InputError(f"--out {out}: give the file a suffix that names its format: {', '.join(_FORMATS)}")
    check_out_path(out)
    store = existing_store(args.db)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    target = str(tmp).replace("'", "''")
    try:
        with store.connect(write=False) as con:
            try:
                con.execute(f"COPY ({args.query.strip().rstrip(';')}) TO '{target}' ({options})")
                (n,) = con.execute(f"SELECT count(*) FROM ({args.query.strip().rstrip(';')})").fetchone()
            except duckdb.Error as exc:
                from harness.store.errors import disk_full, is_disk_full

                if is_disk_full(exc):
                    raise disk_full(out, exc, f"writing {out}") from None
                raise InputError(f"query failed: {str(exc).splitlines()[0]}; the views are listed in "
                                 "harness/store/schema.sql") from None
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    print(f"wrote {n} rows to {out}")
    return 0
