"""What a DuckDB error means for the store: a lock conflict, a full disk, a damaged file, or a bad row.

DuckDB reports damage through many classes (IOException, InternalException, SerializationException,
a plain ``duckdb.Error`` "Corrupt database file", InvalidInputException while replaying a WAL), so the
store decides by class and message in one place, and every read turns damage into a StorageError
(exit 5) that names the file and the fix instead of a traceback.
"""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

from harness.errors import StorageError

_LOCK_MARKERS = ("conflicting lock", "could not set lock")
_DISK_FULL_MARKERS = ("no space left", "disk quota exceeded", "file too large")


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def is_lock_conflict(exc: BaseException) -> bool:
    """DuckDB's own file lock is held by another process (not damage: wait and retry)."""
    return any(m in str(exc).lower() for m in _LOCK_MARKERS)


def lock_holder_pid(exc: BaseException) -> int | None:
    """The PID in DuckDB's "Conflicting lock is held in <program> (PID n)" message."""
    m = re.search(r"\(PID (\d+)\)", str(exc))
    return int(m.group(1)) if m else None


def is_disk_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return True
    return any(m in str(exc).lower() for m in _DISK_FULL_MARKERS)


def is_programming_error(exc: BaseException) -> bool:
    """An error in the harness's own SQL (a bug to see as a traceback, not a damaged file)."""
    import duckdb

    return isinstance(exc, (duckdb.ParserException, duckdb.BinderException))


def is_damage(exc: BaseException) -> bool:
    """An error that says the file (or its WAL) cannot be trusted."""
    import duckdb

    if is_lock_conflict(exc) or is_disk_full(exc):
        return False
    damage_types = (duckdb.IOException, duckdb.InternalException, duckdb.SerializationException, duckdb.FatalException)
    text = str(exc).lower()
    return (isinstance(exc, damage_types) or type(exc) is duckdb.Error
            or "corrupt" in text or "checksum" in text or "replaying wal" in text)


def damaged(path: Path, exc: BaseException) -> StorageError:
    """The one message for a database (or WAL) that cannot be read: the file and the fix."""
    wal = "wal" in str(exc).lower()
    fix = (f"`harness db quarantine-wal --db {path}` moves the damaged {path}.wal aside and re-ingests the shards, "
           f"or `harness db rebuild --db {path}` recreates it from its shards" if wal else
           f"`harness db rebuild --db {path}` recreates it from its shards (this file is kept beside it as a .bak)")
    return StorageError(f"results DB {path} cannot be read ({first_line(exc)}): the file is damaged or not a DuckDB "
                        f"database; nothing was written to it. {fix}")


def disk_full(path: Path, exc: BaseException, doing: str) -> StorageError:
    return StorageError(f"disk full (ENOSPC) at {path} while {doing} ({first_line(exc)}); nothing from it was stored "
                        "and the rows stored before are intact; free space there and rerun")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def describe_pid(pid: int) -> str:
    """'PID n (harness: cmd)' or 'PID n (not a harness process: cmd)', from /proc where there is one."""
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return f"PID {pid}"
    cmd = " ".join(cmd.split())  # one line: a `python -c` script has newlines
    if not cmd:
        return f"PID {pid}"
    words = cmd.split()
    is_harness = "harness" in (Path(words[0]).name, *words[1:3]) and ("-m" in words[:2] or Path(words[0]).name == "harness")
    kind = "harness" if is_harness else "not a harness process"
    return f"PID {pid} ({kind}: {cmd[:80]})"
