"""Shard directories: the durable record of every row, and their manifests.

A shard is ``<name>.shard/`` holding one JSONL file per table and ``MANIFEST.json`` with the row count
and SHA-256 of each file. It is written under ``<name>.shard.tmp-<host>-<pid>`` (fsync'd, renamed), so
a directory without the temporary suffix is complete as written; the manifest is what proves it was
not damaged or cut since. Manifests from before checksums (format 1) are checked on counts and on
every line parsing.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import socket
import time
from collections.abc import Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import StorageError
from harness.store.errors import pid_alive

SHARD_SUFFIX = ".shard"
TMP_MARK = ".shard.tmp"
MANIFEST = "MANIFEST.json"
MANIFEST_FORMAT = 2
STALE_TMP_SECONDS = 60.0


@dataclass(frozen=True)
class ShardManifest:
    """What a shard holds: rows per table file and (format 2) each file's SHA-256."""

    run_id: str
    tables: dict[str, int]
    sha256: dict[str, str] = field(default_factory=dict)
    format_version: int = MANIFEST_FORMAT
    #: {"host", "pid"} of the process that wrote it (format 2)
    writer: dict[str, Any] = field(default_factory=dict)

    def writer_gone(self) -> bool:
        """The writer is known to have exited (so it will never move this shard in itself)."""
        pid = self.writer.get("pid")
        return self.writer.get("host") == socket.gethostname() and isinstance(pid, int) and not pid_alive(pid)

    @property
    def n_rows(self) -> int:
        return sum(self.tables.values())


class ShardError(StorageError):
    """A shard that does not match its manifest (cut, changed, unreadable)."""


def read_manifest(shard: Path) -> ShardManifest:
    """The one reader of MANIFEST.json (format 1: no checksums, no format_version)."""
    try:
        raw = json.loads((shard / MANIFEST).read_text(encoding="utf-8"))
        return ShardManifest(run_id=str(raw["run_id"]), tables={str(t): int(n) for t, n in raw["tables"].items()},
                             sha256={str(t): str(h) for t, h in raw.get("sha256", {}).items()},
                             format_version=int(raw.get("format_version", 1)), writer=dict(raw.get("writer") or {}))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ShardError(f"shard {shard}: {MANIFEST} is unreadable ({exc}); move the shard aside "
                         "or run `harness db rebuild --skip-damaged`") from None


def _find_damage(data: bytes, expected: int) -> str | None:
    """Where a table file departs from a whole JSONL file of ``expected`` rows, or None."""
    lines = data.split(b"\n")
    if data and not data.endswith(b"\n"):
        return f"line {len(lines)} is cut off (no line end: the file was truncated)"
    lines = lines[:-1] if data else []
    for i, line in enumerate(lines, 1):
        try:
            if not isinstance(json.loads(line), dict):
                raise ValueError("not an object")
        except ValueError:
            return f"line {i} is not a JSON object"
    if len(lines) != expected:
        return f"holds {len(lines)} rows, the manifest records {expected}"
    return None


def verify_shard(shard: Path) -> ShardManifest:
    """Check every table file against the manifest (checksum, else counts and lines); ShardError if not."""
    m = read_manifest(shard)
    for table, n in m.tables.items():
        if m.sha256 and table not in m.sha256:
            # a manifest with checksums has one for every table it lists: one missing was removed after the
            # shard was written, and a count alone would let a changed file through
            raise ShardError(f"shard {shard} is damaged: its manifest lists {table} without the SHA-256 the others "
                             "have (the manifest was edited); move the shard aside or run "
                             "`harness db rebuild --skip-damaged` to rebuild from the others")
        f = shard / f"{table}.jsonl"
        try:
            data = f.read_bytes()
        except OSError as exc:
            raise ShardError(f"shard {shard}: table file {f.name} is unreadable ({exc.strerror or exc}); "
                             "move the shard aside or run `harness db rebuild --skip-damaged`") from None
        want = m.sha256.get(table)
        if want is not None and hashlib.sha256(data).hexdigest() == want:
            continue
        problem = _find_damage(data, n)
        if problem is None and want is not None:
            problem = "does not match its SHA-256 in the manifest (changed after it was written)"
        if problem is not None:
            raise ShardError(f"shard {shard} is damaged: {f.name} {problem}; move the shard aside "
                             "or run `harness db rebuild --skip-damaged` to rebuild from the others")
    return m


def pending_shards(shard_dir: Path) -> list[Path]:
    """Every complete shard directory, in name order (a run's shards in the order they were written)."""
    if not shard_dir.is_dir():
        return []
    return sorted(p for p in shard_dir.iterdir() if p.name.endswith(SHARD_SUFFIX) and p.is_dir())


def _tmp_writer(name: str) -> tuple[str | None, int | None]:
    """(host, pid) from ``<name>.shard.tmp-<host>-<pid>``; (None, None) for an older bare ``.tmp``."""
    tail = name.rpartition(TMP_MARK)[2]
    if not tail.startswith("-"):
        return None, None
    host, _, pid = tail[1:].rpartition("-")
    return (host, int(pid)) if pid.isdigit() else (None, None)


def _newest_mtime(path: Path) -> float:
    times = [path.stat().st_mtime]
    for p in path.iterdir():
        with suppress(OSError):
            times.append(p.stat().st_mtime)
    return max(times)


def clean_stale_tmp(shard_dir: Path, now: float | None = None) -> list[Path]:
    """Remove temporary shards left by a killed writer: its PID is gone, or (unknown writer) a minute old."""
    if not shard_dir.is_dir():
        return []
    now = time.time() if now is None else now
    removed = []
    for p in shard_dir.iterdir():
        if TMP_MARK not in p.name or not p.is_dir():
            continue
        host, pid = _tmp_writer(p.name)
        try:
            if host == socket.gethostname() and pid is not None:
                stale = not pid_alive(pid)
            else:  # another host's or an old-style name: only age tells
                stale = now - _newest_mtime(p) > STALE_TMP_SECONDS
        except OSError:
            continue
        if stale:
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


def write_shard(shard_dir: Path, name: str, run_id: str, tables: Mapping[str, list[dict[str, Any]]]) -> Path:
    """The one writer of a shard: files under a temporary name, fsync'd, manifest with checksums, one rename.

    A failure (disk full) removes the temporary directory and is a StorageError naming the path.
    """
    final = shard_dir / (name + SHARD_SUFFIX)
    tmp = shard_dir / f"{name}{TMP_MARK}-{socket.gethostname()}-{os.getpid()}"
    current = shard_dir
    try:
        shard_dir.mkdir(parents=True, exist_ok=True)
        tmp.mkdir(exist_ok=True)
        counts: dict[str, int] = {}
        sums: dict[str, str] = {}
        for table, rows in tables.items():
            if not rows:
                continue
            current = tmp / f"{table}.jsonl"
            digest = hashlib.sha256()
            with open(current, "wb") as f:
                for row in rows:
                    line = (json.dumps(row, default=str, allow_nan=False) + "\n").encode("utf-8")
                    digest.update(line)
                    f.write(line)
                f.flush()
                os.fsync(f.fileno())
            counts[table], sums[table] = len(rows), digest.hexdigest()
        current = tmp / MANIFEST
        manifest = {"format_version": MANIFEST_FORMAT, "run_id": run_id, "tables": counts, "sha256": sums,
                    "writer": {"host": socket.gethostname(), "pid": os.getpid()}}
        with open(current, "w", encoding="utf-8") as f:
            json.dump(manifest, f)
            f.flush()
            os.fsync(f.fileno())
        current = final
        os.replace(tmp, final)
        dir_fd = os.open(shard_dir, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        what = "disk full (ENOSPC)" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else (exc.strerror or str(exc))
        raise StorageError(f"cannot write shard {final}: {what} at {current}; the temporary files were removed and "
                           "rows stored before are intact; free space and rerun") from None
    return final
