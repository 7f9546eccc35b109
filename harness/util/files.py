"""File mechanics that carry a guarantee, in one place: atomic replacement and content hashes.

``write_text_atomic`` is the one way the harness replaces a small file (a record, a marker, a cache,
a report): a reader sees the old file or the new one, never half of either, and after it returns the
new content is on disk (written under a temporary name in the same directory, fsync'd, renamed).
The store's shards (several files and a manifest under one rename) keep their own writer in
``harness/store/shards.py``.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path
from typing import Any

_BLOCK = 1 << 20


def write_text_atomic(path: Path, text: str, *, encoding: str = "utf-8", errors: str = "strict") -> Path:
    """Replace ``path`` with ``text``: temporary name beside it, fsync, rename.

    The temporary name is unique to this call (pid and a random part), so two writers never share
    one; it is removed when the write fails. The file gets the usual mode under the umask.

    Raises:
        OSError: the write, fsync or rename failed (ENOSPC included); ``path`` is untouched then.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "x", encoding=encoding, errors=errors) as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def update_with_file(h: Any, path: Path) -> None:
    """Feed the bytes of ``path`` to the hash object ``h`` in 1 MiB blocks (same digest as one read)."""
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_BLOCK), b""):
            h.update(block)


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of the bytes of ``path``."""
    h = hashlib.sha256()
    update_with_file(h, path)
    return h.hexdigest()
