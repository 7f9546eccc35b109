"""Builders shared by the store fault tests (no tests here): real shards, real DuckDB files, and counts
taken in a fresh process, as FAULTS.md asks ("reopen the database in a fresh process and compare")."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from harness.store import Store, write_shard

ROOT = Path(__file__).resolve().parents[2]

COUNT = r"""
import json, sys, duckdb
con = duckdb.connect(sys.argv[1], read_only=True)
tables = [r[0] for r in con.execute("SELECT table_name FROM duckdb_tables() WHERE schema_name = 'main' ORDER BY 1").fetchall()]
print(json.dumps({t: con.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in tables}))
"""


def env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT))


def counts(db: Path) -> dict[str, int]:
    """Rows per table, read by plain DuckDB in a fresh process (no harness repair on the way)."""
    out = subprocess.run([sys.executable, "-c", COUNT, str(db)], capture_output=True, text=True, env=env(), timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout)


def harness(*args: str, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True, text=True, env=env(),
                          cwd=cwd or ROOT, timeout=timeout)


def gen(key: str, run_id: str, example: str | None = None, scale: object = 0.0, prompt: str = "p") -> dict:
    return {"cache_key": key, "run_id": run_id, "base_model_id": "base", "adapter_id": None, "scale": scale,
            "suite_id": "s", "example_id": example or key, "prompt": prompt, "output": "out", "settings": "{}",
            "n_prompt_tokens": 1, "n_new_tokens": 1, "error": None, "seconds": 0.1}


def score(key: str, value: object = 1.0) -> dict:
    return {"cache_key": key, "metric": "exact_match", "value": value, "reason": None, "scorer": "exact_match",
            "scorer_version": "1"}


def run_row(run_id: str) -> dict:
    return {"run_id": run_id, "kind": "eval", "command": "test", "status": "complete", "n_expected": None}


def shard_tables(run_id: str, start: int, n: int, prompt: str = "p") -> dict[str, list[dict]]:
    keys = [f"{run_id}-k{i}" for i in range(start, start + n)]
    return {"runs": [run_row(run_id)], "generations": [gen(k, run_id, prompt=prompt) for k in keys],
            "scores": [score(k) for k in keys], "run_results": [{"run_id": run_id, "cache_key": k} for k in keys]}


def fill(db: Path, n_shards: int = 3, rows: int = 5, prompt: str = "p") -> Store:
    """A database holding ``n_shards`` shards of ``rows`` generations (+ scores, run_results) each."""
    store = Store(db)
    with store.connect():
        pass
    for i in range(n_shards):
        write_shard(store.shard_dir, f"r{i}-00001", f"r{i}", shard_tables(f"r{i}", 0, rows, prompt))
    Store(db).query("SELECT 1")  # a fresh store moves the shards in
    return store
