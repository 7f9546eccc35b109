"""harness/util/datafiles.py: JSONL rows read without `datasets` equal `datasets`' own rows (that the
commands report mistakes without importing it: tests/commands/test_early_mistakes.py)."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest

from harness.suites.spec import load_examples, load_suite
from harness.util.datafiles import read_jsonl, read_rows

REPO = Path(__file__).resolve().parents[2]
BUILT_IN = sorted(p.name for p in (REPO / "suites").iterdir() if (p / "suite.yaml").exists())


def _datasets_rows(path: Path) -> tuple[list[dict], list[str]]:
    ds = datasets.load_dataset("json", data_files=str(path), split="train")
    return ds.to_list(), list(ds.column_names)


@pytest.mark.parametrize("name", BUILT_IN)
def test_built_in_suite_rows_equal_datasets_rows(name):
    suite = load_suite(name)
    assert suite.data_path.suffix == ".jsonl"
    rows, columns = read_jsonl(suite.data_path)
    ref_rows, ref_columns = _datasets_rows(suite.data_path)
    assert columns == ref_columns
    assert rows == ref_rows
    assert len(load_examples(suite)) == len(ref_rows)


def test_rows_are_padded_to_every_column_as_datasets_pads_them(tmp_path):
    f = tmp_path / "d.jsonl"
    lines = [{"id": 1, "prompt": "a", "completion": "b"}, {"id": 2, "prompt": "c", "completion": "d", "note": "x"},
             {"id": 3, "completion": "f", "prompt": "e"}]
    f.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    rows, columns = read_rows(f)
    assert columns == ["id", "prompt", "completion", "note"]
    assert rows == [{"id": 1, "prompt": "a", "completion": "b", "note": None},
                    {"id": 2, "prompt": "c", "completion": "d", "note": "x"},
                    {"id": 3, "prompt": "e", "completion": "f", "note": None}]
    assert (rows, columns) == _datasets_rows(f)


def test_values_stay_as_written_where_datasets_would_coerce_them(tmp_path):
    # datasets infers one type per column: 1 and 2.5 read back as 1.0 and 2.5; a target written 1 stays 1
    f = tmp_path / "d.jsonl"
    f.write_text('{"input": "q1", "target": 1}\n{"input": "q2", "target": 2.5}\n')
    rows, _ = read_rows(f)
    assert [r["target"] for r in rows] == [1, 2.5]
    assert [r["target"] for r in _datasets_rows(f)[0]] == [1.0, 2.5]


def test_other_formats_still_read_through_datasets(tmp_path):
    f = tmp_path / "d.csv"
    f.write_text("input,target\nq1,a1\nq2,a2\n")
    rows, columns = read_rows(f)
    assert columns == ["input", "target"]
    assert rows == [{"input": "q1", "target": "a1"}, {"input": "q2", "target": "a2"}]


def test_training_jsonl_is_read_once_and_its_rows_are_the_checked_rows(tmp_path, monkeypatch):
    # harness.train.data.load_rows checks and reads a JSONL file in one pass: the rows it returns are the lines it
    # checked (as datasets lays them out), and a bad line is named with its number
    from harness.errors import DatasetError
    from harness.train.data import load_rows
    from harness.util import datafiles

    f = tmp_path / "train.jsonl"
    lines = [{"prompt": "a", "completion": "b"}, {"prompt": "c", "completion": "d", "id": 7}]
    f.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    opened = []
    real_open = open

    def counting_open(path, *a, **k):
        if Path(path) == f:
            opened.append(path)
        return real_open(path, *a, **k)

    monkeypatch.setattr("builtins.open", counting_open)
    monkeypatch.setattr(datafiles, "read_rows", lambda *a, **k: pytest.fail("JSONL read a second time"))
    rows = load_rows(f)
    assert len(opened) == 1
    assert rows == _datasets_rows(f)[0] == [{"prompt": "a", "completion": "b", "id": None},
                                             {"prompt": "c", "completion": "d", "id": 7}]
    f.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "c", "completion": \n')
    with pytest.raises(DatasetError, match=r"train\.jsonl:2: malformed JSON line"):
        load_rows(f)
