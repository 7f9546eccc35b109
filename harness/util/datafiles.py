"""Reading the rows of a data file (suite data, training data): JSONL here, the rest through ``datasets``.

JSONL is what suites and training data almost always are, and `datasets` costs about 1.3 s to import
(pandas, pyarrow) before it reads a line. A mistake in a command's flags, suite or adapter must show
in well under a second, so JSONL is read with the standard library, as `datasets` would read it for
the rows the harness accepts: every row gets every column that any row has (``None`` where a row
lacks it), in the order the columns first appear. ``tests/util/test_datafiles.py`` checks the rows equal
`datasets`' own for every built-in suite and for training-shaped files.

Where the two differ, on purpose: `datasets` infers one Arrow type per column, so a column holding
``1`` and ``2.5`` reads back as ``1.0`` and ``2.5``, and nested objects gain every key any row's
object has. Here each value stays as written. A file whose column mixes text and numbers, which
`datasets` refuses, is read here.

A suite's file has been checked line by line first (``harness.suites.data.check_jsonl``: malformed
lines, non-objects, NaN constants, invalid Unicode, each named with its line number); training data is
read and checked in that one pass (``scan_jsonl``), so the rows trained on are the rows checked.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

#: file suffix -> the `datasets` builder that reads it
DATA_SUFFIXES = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


def read_rows(path: Path, split: str | None = None, default_split: str | None = "train") -> tuple[list[dict[str, Any]], list[str]]:
    """The rows of a data file or saved dataset directory, and its column names in order.

    ``split`` picks a split of a saved ``DatasetDict``; without it, ``default_split`` if the dict has
    it, else its first split.

    Raises:
        ValueError, OSError, KeyError, or `datasets`' own errors: the caller names the file and the fix.
    """
    path = Path(path)
    if path.is_file() and path.suffix.lower() == ".jsonl":
        return read_jsonl(path)
    import datasets

    datasets.disable_progress_bars()
    if path.is_dir():
        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            ds = ds[split or (default_split if default_split in ds else next(iter(ds)))]
    else:
        ds = datasets.load_dataset(DATA_SUFFIXES[path.suffix.lower()], data_files=str(path), split="train")
    return ds.to_list(), list(ds.column_names)


def read_jsonl(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """One object per non-blank line; every row padded to the union of the columns (``None``)."""
    rows: list[dict[str, Any]] = []
    with open(path, encoding="utf-8", errors="strict") as f:
        for line in f:
            if not line.strip():
                continue
            row = json.loads(line, parse_constant=refuse_constant)
            if not isinstance(row, dict):
                raise ValueError("each line must be a JSON object")
            rows.append(row)
    return pad_rows(rows)


def pad_rows(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """Every row given every column any row has (``None`` where it lacks one), in the order the columns
    first appear, as `datasets` lays rows out; and those column names."""
    columns: dict[str, None] = {}
    for row in rows:
        for k in row:
            columns.setdefault(k)
    names = list(columns)
    return [{k: row.get(k) for k in names} for row in rows], names


def is_reader_error(exc: BaseException) -> bool:
    """An exception that means "this file cannot be read as data", not a bug: ours, or `datasets`'
    and pyarrow's many types for a malformed file."""
    return isinstance(exc, (ValueError, KeyError, OSError)) or type(exc).__module__.split(".")[0] in ("datasets", "pyarrow")


def refuse_constant(name: str) -> Any:
    # Python's json accepts NaN/Infinity, which are not JSON; a "NaN" target would be stored as text.
    raise ValueError(f"{name} is not a JSON value (write null, a number or a string)")
