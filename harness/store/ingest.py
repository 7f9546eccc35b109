"""Moving one verified shard into the database in one transaction, and reading every row back.

A shard is checked against its manifest before a row of it is read; a bad record rolls the whole
shard back, and the error names the table file, the line and the example. ROLLBACK is guarded: after
a failed COMMIT (disk full) DuckDB has no transaction left, and the rollback's own error must not hide
the first one.
"""

from __future__ import annotations

import json
import math
import re
from contextlib import suppress
from pathlib import Path
from typing import Any

from harness.errors import StorageError
from harness.store.errors import damaged, disk_full, first_line, is_damage, is_disk_full
from harness.store.rows import _now
from harness.store.shards import verify_shard

_NUMERIC = ("DOUBLE", "FLOAT", "INTEGER", "BIGINT", "SMALLINT", "TINYINT", "HUGEINT", "UBIGINT", "UINTEGER")
_COLUMN_CACHE: dict[str, list[tuple[str, str]]] = {}


def _sql_str(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def columns(con: Any, table: str) -> list[tuple[str, str]]:
    """(name, type) of a table's columns, JSON read as VARCHAR (the shard holds JSON text)."""
    if table not in _COLUMN_CACHE:
        rows = con.execute(
            "SELECT column_name, data_type FROM duckdb_columns() WHERE table_name = ? AND schema_name = 'main' "
            "AND database_name = current_database() ORDER BY column_index", [table]
        ).fetchall()
        if not rows:
            raise StorageError(f"unknown table {table!r} in a shard; is the harness older than the shard's writer?")
        _COLUMN_CACHE[table] = [(c, "VARCHAR" if t == "JSON" else t) for c, t in rows]
    return _COLUMN_CACHE[table]


def primary_key(con: Any, table: str) -> list[str]:
    rows = con.execute(
        "SELECT constraint_column_names FROM duckdb_constraints() WHERE table_name = ? AND schema_name = 'main' "
        "AND database_name = current_database() AND constraint_type = 'PRIMARY KEY'", [table]
    ).fetchall()
    return list(rows[0][0]) if rows else []


def read_json_sql(files: list[Path], cols: list[tuple[str, str]]) -> str:
    spec = "{" + ", ".join(f"{_sql_str(c)}: {_sql_str(t)}" for c, t in cols) + "}"
    paths = "[" + ", ".join(_sql_str(str(f)) for f in files) + "]"
    return f"read_json({paths}, format = 'newline_delimited', columns = {spec})"


def _bad_line(con: Any, file: Path, table: str, exc: BaseException) -> tuple[int | None, dict[str, Any] | None]:
    """The line (1-based) and row of ``file`` that made the insert fail, as far as it can be found."""
    m = re.search(r"in line (\d+)", str(exc))
    try:
        lines = file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return (int(m.group(1)) if m else None), None
    if m:
        n = int(m.group(1))
        with suppress(IndexError, ValueError):
            return n, json.loads(lines[n - 1])
        return n, None
    cols, key = dict(columns(con, table)), set(primary_key(con, table))
    for n, line in enumerate(lines, 1):  # constraint errors carry no line: find the row that breaks one
        try:
            row = json.loads(line)
        except ValueError:  # DuckDB reads a bare nan or inf that JSON (and Python) do not: that line is the one
            keys = re.finditer(r'"(example_id|cache_key|run_id)"\s*:\s*"([^"\\]*)"', line)
            return n, {m.group(1): m.group(2) for m in keys} or None
        for c, v in row.items():
            t = cols.get(c, "")
            non_finite = t in ("DOUBLE", "FLOAT") and (
                (isinstance(v, float) and not math.isfinite(v)) or (isinstance(v, str) and v.strip().lower() in
                                                                    ("nan", "inf", "-inf", "infinity", "-infinity")))
            wrong_type = t in _NUMERIC and isinstance(v, (str, dict, list)) and not non_finite
            if non_finite or wrong_type or (c in key and v is None):
                return n, row
        if any(k not in row or row[k] is None for k in key):
            return n, row
    return None, None


def ingest(con: Any, shard: Path, db: Path) -> int:
    """Move one shard's rows into the database in one transaction (once: shards are recorded)."""
    import duckdb

    if con.execute("SELECT 1 FROM ingested_shards WHERE shard = ?", [shard.name]).fetchone():
        return 0
    manifest = verify_shard(shard)
    table = None
    con.execute("BEGIN TRANSACTION")
    try:
        for table in manifest.tables:
            cols = columns(con, table)
            names = ", ".join(c for c, _ in cols)
            # Run rows carry the latest status; everything else is keyed and never duplicated.
            verb = "INSERT OR REPLACE" if table == "runs" else "INSERT OR IGNORE"
            con.execute(f"{verb} INTO {table} ({names}) SELECT {names} FROM {read_json_sql([shard / (table + '.jsonl')], cols)}")
        table = None
        con.execute("INSERT INTO ingested_shards VALUES (?, ?, ?, ?)", [shard.name, manifest.run_id, manifest.n_rows, _now()])
        con.execute("COMMIT")
    except duckdb.Error as exc:
        with suppress(duckdb.Error):
            con.execute("ROLLBACK")
        if is_disk_full(exc):
            raise disk_full(db, exc, f"moving in shard {shard}") from None
        if table is None or (is_damage(exc) and "json" not in str(exc).lower()):
            raise damaged(db, exc) if is_damage(exc) else StorageError(
                f"ingest of shard {shard} into {db} failed, nothing from it was stored: {first_line(exc)}") from None
        file = shard / f"{table}.jsonl"
        line, row = _bad_line(con, file, table, exc)
        where = f"{file}" + (f" line {line}" if line else "")
        if row:
            ident = row.get("example_id") or row.get("cache_key") or row.get("run_id")
            if ident:
                where += f" ({'example_id' if row.get('example_id') else 'cache_key' if row.get('cache_key') else 'run_id'} {ident})"
        raise StorageError(f"ingest of shard {shard} failed at {where}: {first_line(exc)}; nothing from the shard was "
                           "stored; fix or remove that record (or the shard) and rerun") from None
    return manifest.n_rows


def user_tables(con: Any, catalog: str | None = None) -> list[str]:
    where = f"database_name = {_sql_str(catalog)}" if catalog else "database_name = current_database()"
    return [r[0] for r in con.execute(
        f"SELECT table_name FROM duckdb_tables() WHERE schema_name = 'main' AND {where} AND NOT temporary ORDER BY 1"
    ).fetchall()]


def full_scan(con: Any, catalog: str | None = None) -> dict[str, int]:
    """Read every row of every table (DuckDB verifies each block's checksum as it reads): rows per table."""
    out = {}
    prefix = f"{catalog}.main." if catalog else ""
    for t in user_tables(con, catalog):
        n, _ = con.execute(f'SELECT count(*), sum(hash(_r)) FROM {prefix}"{t}" AS _r').fetchone()
        out[t] = n
    return out


def scan_or_raise(con: Any, db: Path) -> dict[str, int]:
    """``full_scan`` with damage as the store's StorageError (exit 5, the file and the fix)."""
    import duckdb

    try:
        return full_scan(con)
    except duckdb.Error as exc:
        raise damaged(db, exc) from None
