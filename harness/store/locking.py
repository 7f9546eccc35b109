"""The store's file lock (``<db>.lock``) and DuckDB opens that wait for DuckDB's own lock.

Writers take the lock exclusively, readers shared; both waits (our flock, then DuckDB's lock, which a
``duckdb`` shell or notebook may hold) come out of ONE deadline, so no call waits longer than the
timeout it was given. The exclusive holder records itself in ``<db>.lock.owner`` so that a waiter can
name it; a record whose process has exited is stale and is removed, never believed.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from harness.errors import StorageError
from harness.store.errors import damaged, describe_pid, is_lock_conflict, lock_holder_pid, pid_alive
from harness.store.rows import _now
from harness.util.files import write_text_atomic

_POLL = 0.05
# (lock path, thread) -> [fd, mode, depth]: a thread that holds the lock may take it again (rebuild and
# quarantine call the open-time repair while they hold it); another thread of the process waits.
_HELD: dict[tuple[str, int], list[Any]] = {}


def owner_file(db: Path) -> Path:
    return db.with_name(db.name + ".lock.owner")


def _read_owner(db: Path) -> dict[str, Any] | None:
    try:
        o = json.loads(owner_file(db).read_text())
        int(o["pid"])
        return o
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_owner(db: Path, **extra: Any) -> None:
    record = {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv)[:200], "since": _now(), **extra}
    with suppress(OSError):
        write_text_atomic(owner_file(db), json.dumps(record))


def _drop_owner(db: Path) -> None:
    o = _read_owner(db)
    if o and o["pid"] == os.getpid() and o.get("host") == socket.gethostname():
        with suppress(OSError):
            owner_file(db).unlink()


def holder(db: Path) -> str:
    """Who holds ``<db>.lock``, as far as can be told; a stale owner record is removed, not reported."""
    o = _read_owner(db)
    if o is None:
        return "another process (harness readers, or one that left no owner record)"
    pid = int(o["pid"])
    if o.get("host") == socket.gethostname() and not pid_alive(pid):
        with suppress(OSError):
            owner_file(db).unlink()
        return f"another process (the owner record named PID {pid}, which has exited: removed as stale)"
    text = f"PID {pid} on {o.get('host')} ({str(o.get('command', ''))[:80]}) since {o.get('since')}"
    if o.get("waiting_for"):
        text += f", itself waiting for {o['waiting_for']} that holds the DuckDB file"
    return text


class _WaitNotice:
    """One line on stderr once a wait for the database has lasted a few seconds: a process queued behind
    another program's lock says so (and for how long it will wait) instead of printing nothing for minutes."""

    AFTER = 2.0

    def __init__(self, db: Path, deadline: float) -> None:
        self.db, self.deadline, self.start, self.said = db, deadline, time.monotonic(), False

    def tick(self, who: Any) -> None:
        if not self.said and time.monotonic() - self.start >= self.AFTER:
            self.said = True
            left = max(0.0, self.deadline - time.monotonic())
            print(f"waiting for the results DB {self.db}: held by {who()}; up to {left:.0f} s more "
                  "(pass --db another.duckdb not to wait)", file=sys.stderr, flush=True)


def deadline_after(timeout: float) -> float:
    return time.monotonic() + timeout


@contextmanager
def db_lock(db: Path, exclusive: bool, deadline: float, timeout: float) -> Iterator[None]:
    """Hold ``<db>.lock`` (exclusive for writers, shared for readers) until the block ends."""
    import fcntl

    key = (str(db.resolve()) + ".lock", threading.get_ident())
    held = _HELD.get(key)
    if held is not None:
        if exclusive and held[1] != "ex":
            raise RuntimeError(f"{db}: cannot take the write lock while holding the read lock")
        held[2] += 1
        try:
            yield
        finally:
            held[2] -= 1
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(key[0], os.O_RDWR | os.O_CREAT, 0o644)
    notice = _WaitNotice(db, deadline)
    try:
        while True:
            try:
                fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                notice.tick(lambda: holder(db))
                if time.monotonic() >= deadline:
                    raise StorageError(
                        f"results DB {db} locked by {holder(db)} for over {timeout:.0f}s; "
                        "wait for it to finish or pass --db another.duckdb"
                    ) from None
                time.sleep(_POLL)
        _HELD[key] = [fd, "ex" if exclusive else "sh", 1]
        if exclusive:
            _write_owner(db)
        try:
            yield
        finally:
            del _HELD[key]
            if exclusive:
                _drop_owner(db)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def open_duckdb(db: Path, read_only: bool, deadline: float, timeout: float) -> Any:
    """``duckdb.connect`` that waits (until ``deadline``) for another program holding DuckDB's lock.

    Any other failure to open is damage: a StorageError naming the file and ``harness db rebuild``.
    """
    import duckdb

    waited_for = None
    notice = _WaitNotice(db, deadline)
    while True:
        try:
            con = duckdb.connect(str(db), read_only=read_only)
        except duckdb.Error as exc:
            if not is_lock_conflict(exc):
                raise damaged(db, exc) from None
            pid = lock_holder_pid(exc)
            who = describe_pid(pid) if pid else "another program"
            notice.tick(lambda who=who: who)
            if who != waited_for:
                waited_for = who
                if _HELD.get((str(db.resolve()) + ".lock", threading.get_ident()), [None, "sh"])[1] == "ex":
                    _write_owner(db, waiting_for=who)  # so that harness processes queued behind us name the real holder
            if time.monotonic() < deadline:
                time.sleep(_POLL * 2)
                continue
            raise StorageError(
                f"results DB {db} is held open by {who} for over {timeout:.0f}s (DuckDB: conflicting lock); "
                "close that program or pass --db another.duckdb"
            ) from None
        try:
            _check_size(con, db)
        except BaseException:
            con.close()
            raise
        return con


def _check_size(con: Any, db: Path) -> None:
    """A file shorter than the blocks its header counts was cut (DuckDB may open it and fail only later,
    on the first read of a missing block): refuse it at open, cheaply."""
    import duckdb

    try:
        row = con.execute("PRAGMA database_size").fetchone()
        # used blocks each sit at their own place in the file (total_blocks also counts free ones, which
        # DuckDB may have cut off the end), so a healthy file holds at least that many
        block_size, used_blocks = int(row[2]), int(row[4])
        size = db.stat().st_size
    except (duckdb.Error, OSError, TypeError, ValueError, IndexError) as exc:
        raise damaged(db, exc) from None
    if size < block_size * used_blocks:
        raise damaged(db, OSError(f"the file is {size} bytes but holds {used_blocks} blocks of {block_size} bytes "
                                  "in use: it was cut short"))
