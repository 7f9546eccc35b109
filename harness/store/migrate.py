"""Schema versions: ``schema.sql`` is the current schema, for reading; ``migrations/`` builds it."""

from __future__ import annotations

from contextlib import suppress
from pathlib import Path
from typing import Any

from harness.errors import IncompatibleError, StorageError
from harness.store.errors import damaged, disk_full, is_damage, is_disk_full

SCHEMA = Path(__file__).with_name("schema.sql")
MIGRATIONS = Path(__file__).with_name("migrations")


def migrations() -> list[tuple[int, Path]]:
    """(version, file) of every migration, in order."""
    return [(int(f.name[:4]), f) for f in sorted(MIGRATIONS.glob("[0-9][0-9][0-9][0-9]_*.sql"))]


SCHEMA_VERSION = migrations()[-1][0]


def schema_version(con: Any) -> int:
    """The highest migration applied (0: an empty or non-harness file)."""
    has_table = con.execute(
        "SELECT count(*) FROM duckdb_tables() WHERE table_name = 'schema_migrations' AND schema_name = 'main' "
        "AND database_name = current_database()"
    ).fetchone()[0]
    return con.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()[0] if has_table else 0


def recorded_shards(con: Any) -> dict[str, int]:
    """shard name -> rows it moved in, from ``ingested_shards`` (empty before migration 2)."""
    has_table = con.execute(
        "SELECT count(*) FROM duckdb_tables() WHERE table_name = 'ingested_shards' AND schema_name = 'main' "
        "AND database_name = current_database()"
    ).fetchone()[0]
    return dict(con.execute("SELECT shard, n_rows FROM ingested_shards").fetchall()) if has_table else {}


def refuse_newer(current: int, path: Path) -> None:
    if current > SCHEMA_VERSION:
        raise IncompatibleError(
            f"results DB {path} has schema v{current} > supported v{SCHEMA_VERSION}: it was written by a newer "
            "adapter-harness; upgrade the harness (pip install -U adapter-harness) or pass --db another.duckdb"
        )


def migrate(con: Any, path: Path) -> None:
    """Bring the database to SCHEMA_VERSION, one transaction per migration; refuse a newer one."""
    import duckdb

    current = schema_version(con)
    refuse_newer(current, path)
    for version, file in migrations():
        if version <= current or version > SCHEMA_VERSION:  # the set this process started with, and no more
            continue
        con.execute("BEGIN TRANSACTION")
        try:
            con.execute(file.read_text(encoding="utf-8"))
            con.execute("INSERT INTO schema_migrations (version) VALUES (?)", [version])
            con.execute("COMMIT")
        except duckdb.Error as exc:
            with suppress(duckdb.Error):
                con.execute("ROLLBACK")
            if is_disk_full(exc):
                raise disk_full(path, exc, f"migrating to schema v{version}") from None
            if is_damage(exc):
                raise damaged(path, exc) from None
            raise StorageError(f"migrating results DB {path} to schema v{version} failed, nothing changed: {exc}") from None
