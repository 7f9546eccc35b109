"""Issue 19: `harness train` and `harness eval` under torchrun, two gloo processes on the CPU, against one
process: the same stored rows (each once) and, for train, the same adapter weights; a rank killed
mid-eval leaves the store consistent and re-running the command finishes the run.

Measured on this machine (tiny Llama, 4 steps, 8 rows; one process with batch 4 against two ranks with
batch 2 each): the adapters differ by at most 1.3e-6 (weights up to 0.13; fp32, gloo's gradient
average); the logged losses agree to 1e-6. The test allows 2e-5.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from harness.cli import main
from harness.util import distributed

ROOT = Path(__file__).resolve().parents[2]
WEIGHT_ATOL = 2e-5  # measured 1.3e-6 (see the module docstring)

SUITE = """\
name: tiny-qa
version: 1
data: {path: data.jsonl, fields: {input: question, target: answer}}
generation: {max_new_tokens: 6}
scorers:
  - name: alias_match
  - name: exact_match
"""
QUESTIONS = [("What is two plus two?", "four"), ("Capital of France?", "Paris"), ("Colour of the sky?", "blue"),
             ("Send three red hoodies", "ok"), ("abc?", "abc"), ("The order is shirt", "shirt"), ("Hi", "hello")]

# Loaded through PYTHONPATH into rank 1 only: it kills itself (SIGKILL, no clean-up) right after its
# first shard holding generations is durable, so the kill always falls mid-run at the same point.
KILL_HOOK = """\
import os
if os.environ.get("RANK") == "1" and os.environ.get("HARNESS_TEST_KILL_RANK1"):
    import harness.store as _store
    _flush = _store.RunWriter.flush

    def flush(self, force=False):
        shard = _flush(self, force)
        if shard is not None and (shard / "generations.jsonl").exists():
            os.kill(os.getpid(), 9)
        return shard

    _store.RunWriter.flush = flush
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(tmp: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_PORT", "MASTER_ADDR")}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", CUDA_VISIBLE_DEVICES="",
               TOKENIZERS_PARALLELISM="false", HOME=str(tmp), PYTHONPATH=str(ROOT))
    env.update(extra)
    return env


def torchrun(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 240) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(_free_port()), "-m", "harness", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def stored(db: Path) -> dict[str, object]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        q = lambda sql: con.execute(sql).fetchall()  # noqa: E731
        return {
            "generations": q("SELECT cache_key, adapter_id, scale, example_id, output, error, n_new_tokens "
                             "FROM generations ORDER BY cache_key"),
            "scores": q("SELECT cache_key, metric, value, reason, scorer FROM scores ORDER BY cache_key, metric"),
            "runs": q("SELECT run_id, status, n_expected FROM runs ORDER BY started_at"),
            "run_results": q("SELECT run_id, cache_key FROM run_results ORDER BY ALL"),
            "gates": q("SELECT run_id, gate, passed FROM gate_results ORDER BY ALL"),
            "examples": q("SELECT count(*) FROM examples")[0][0],
            "adapters": q("SELECT adapter_id, name FROM adapters ORDER BY ALL"),
        }
    finally:
        con.close()


# -- the split: global rank, contiguous, nothing lost or repeated, no padding ----------------------------

@pytest.mark.parametrize("n", [0, 1, 2, 5, 21])
@pytest.mark.parametrize("world", [1, 2, 3, 8])
def test_split_covers_every_item_once_by_global_rank(monkeypatch, n, world):
    items = list(range(n))
    shares = []
    for r in range(world):
        # two nodes: LOCAL_RANK repeats, the split must not look at it
        monkeypatch.setenv("WORLD_SIZE", str(world))
        monkeypatch.setenv("RANK", str(r))
        monkeypatch.setenv("LOCAL_RANK", str(r % 2))
        shares.append(distributed.split(items))
    assert [x for s in shares for x in s] == items
    assert max(map(len, shares)) - min(map(len, shares)) <= 1
    if n:
        assert shares[0], "the main process always has a share when there is work (it self-checks every group)"


def test_without_a_launcher_every_helper_is_the_single_process(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert (distributed.world_size(), distributed.rank(), distributed.is_main(), distributed.is_distributed()) == (1, 0, True, False)
    assert distributed.split([1, 2, 3]) == [1, 2, 3] and distributed.broadcast("x") == "x" and distributed.agree(3) == 3
    assert distributed.device(None) is None and distributed.device("cpu") == "cpu"
    distributed.barrier()
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert not distributed.is_distributed() and distributed.gather(5) == [5]


def test_a_command_destroys_the_process_group_before_it_exits(monkeypatch):
    """Left to interpreter exit, gloo sometimes aborted a rank after its work was done (SIGABRT,
    "terminate called without an active exception"; about 1 in 9 runs of the README's two-rank eval),
    and torchrun reported the run as failed. A one-process gloo group stands in for the launcher's."""
    import torch.distributed as dist

    monkeypatch.setenv("WORLD_SIZE", "2")  # is_distributed() reads the launcher's environment
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setattr(distributed, "_group", None)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    try:
        assert main(["suites", "list"]) == 0
        assert not dist.is_initialized() and distributed._group is None
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


# -- eval: two ranks give one process's rows; a killed rank leaves a consistent store ----------------------

@pytest.fixture(scope="module")
def eval_setup(tiny_model_dir, tmp_path_factory):
    from tests.evaluation.test_eval_runner import make_adapter

    d = tmp_path_factory.mktemp("dist-eval")
    (d / "suite").mkdir()
    (d / "suite" / "suite.yaml").write_text(SUITE)
    (d / "suite" / "data.jsonl").write_text("".join(json.dumps({"id": f"q{i}", "question": q, "answer": a}) + "\n"
                                                    for i, (q, a) in enumerate(QUESTIONS)))
    adapter = make_adapter(tiny_model_dir, d / "ad", 3)
    args = ["eval", "--base", str(tiny_model_dir), "--adapter", str(adapter), "--scale", "0.5", "--scale", "1",
            "--suite", str(d / "suite")]
    # the reference: one process, the default batch size
    assert main([*args, "--db", str(d / "one.duckdb")]) == 0
    return d, args


def test_eval_under_torchrun_matches_one_process_and_survives_a_killed_rank(eval_setup, tmp_path):
    d, args = eval_setup
    one = stored(d / "one.duckdb")
    n = len(QUESTIONS) * 3  # base, ad@0.5, ad@1
    assert len(one["generations"]) == n
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(KILL_HOOK)
    db = tmp_path / "two.duckdb"
    # small batches and a flush per example: the ranks' batches differ from the single process's
    cmd = [*args, "--db", str(db), "--batch-size", "2", "--flush-every", "1"]

    killed = torchrun(cmd, tmp_path, _env(tmp_path, HARNESS_TEST_KILL_RANK1="1", PYTHONPATH=f"{hook}{os.pathsep}{ROOT}"))
    assert killed.returncode != 0, killed.stderr[-3000:]
    shards = sorted(p.name for p in (tmp_path / "two.duckdb.shards").glob("*.shard"))
    rank1 = [s for s in shards if "-r1-" in s]
    assert rank1 and all("-r0-" in s or "-r1-" in s for s in shards), shards
    # consistent: every stored row is whole and is one process's row; the only news is rank 1's shard,
    # durable on disk and not yet moved in (the next command does that)
    from harness.store import check

    report = check(db)
    assert report.problems and all("is not in the database" in p for p in report.problems), report.problems
    assert any("-r1-" in p for p in report.problems)
    part = stored(db)
    assert len(part["generations"]) < n  # rank 0 may or may not have stored some of its share by then
    assert set(part["generations"]) <= set(one["generations"])
    assert set(part["scores"]) <= set(one["scores"])
    assert [r[1] for r in part["runs"]] == ["running"]  # never marked complete

    # the same command again finishes the run: rank 1's shard is moved in, only what is missing is generated
    again = torchrun(cmd, tmp_path, _env(tmp_path))
    assert again.returncode == 0, again.stderr[-3000:]
    assert "moved " in again.stderr and "-r1-" in again.stderr
    line = next(ln for ln in again.stderr.splitlines() if ln.startswith("run ") and " generated, " in ln)
    generated, cached = int(line.split(": ")[1].split()[0]), int(line.split(", ")[1].split()[0])
    assert generated + cached == n and cached >= len(part["generations"]) + 1, line
    two = stored(db)
    assert two["generations"] == one["generations"]  # outputs per cache key, each once
    assert two["scores"] == one["scores"]
    assert not check(db).problems
    last = two["runs"][-1]
    assert last[1:] == ("complete", n)
    mine = [k for r, k in two["run_results"] if r == last[0]]
    assert sorted(mine) == sorted(g[0] for g in one["generations"]) and len(mine) == len(set(mine)) == n
    # the run's own rows (examples, adapters, self-check gates) written once, by the main process
    assert two["examples"] == one["examples"] == len(QUESTIONS)
    assert two["adapters"] == one["adapters"]
    assert len([g for g in two["gates"] if g[0] == last[0]]) == len([g for g in one["gates"] if g[0] == one["runs"][-1][0]])
    # the rows of every rank went through shards of their own, and only the main process wrote run rows
    from harness.store.shards import read_manifest

    for s in (tmp_path / "two.duckdb.shards").glob(f"{last[0]}-r1-*.shard"):
        assert "runs" not in read_manifest(s).tables


# -- train: DDP over two ranks with half the batch each is one process with the whole batch ----------------

def test_train_under_torchrun_writes_one_adapter_with_one_process_weights(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file

    rows = [{"prompt": f"Order {i} red hoodies, size M.", "completion": f'{{"item": "hoodie", "quantity": {i}}}'}
            for i in range(1, 9)]
    (tmp_path / "orders.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = tmp_path / "orders.yaml"
    # no dropout: its random masks are drawn per rank
    spec.write_text(f"base: {tiny_model_dir}\ndata: {tmp_path / 'orders.jsonl'}\nr: 4\nlora_alpha: 8\nlora_dropout: 0\n"
                    "learning_rate: 1e-2\nmax_steps: 4\nper_device_train_batch_size: 4\nlogging_steps: 1\n")
    assert main(["train", str(spec), "--out", str(tmp_path / "one"), "--db", str(tmp_path / "one.duckdb")]) == 0

    proc = torchrun(["train", str(spec), "--out", str(tmp_path / "two"), "--db", str(tmp_path / "two.duckdb"),
                     "--set", "per_device_train_batch_size=2"], tmp_path, _env(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines() == [str(tmp_path / "two")]  # printed once, by the main process
    assert proc.stderr.count("written to") == 1

    a, b = load_file(tmp_path / "one" / "adapter_model.safetensors"), load_file(tmp_path / "two" / "adapter_model.safetensors")
    assert sorted(a) == sorted(b)
    diff = max((a[k] - b[k]).abs().max().item() for k in a)
    assert diff <= WEIGHT_ATOL, f"adapter weights differ by {diff:.3g}"
    assert max(a[k].abs().max().item() for k in a) > 100 * WEIGHT_ATOL  # the update is not negligible

    def record(db: Path) -> dict:
        con = duckdb.connect(str(db), read_only=True)
        try:
            return {"adapters": con.execute("SELECT name, parent_adapter_id FROM adapters").fetchall(),
                    "runs": con.execute("SELECT kind, status FROM runs").fetchall(),
                    "steps": con.execute("SELECT step, loss, grad_norm, learning_rate FROM step_logs ORDER BY seq").fetchall()}
        finally:
            con.close()

    one, two = record(tmp_path / "one.duckdb"), record(tmp_path / "two.duckdb")
    assert two["adapters"] == one["adapters"] == [("orders", None)]  # one row, written once
    assert two["runs"] == one["runs"] == [("train", "complete")]
    assert [s[0] for s in two["steps"]] == [s[0] for s in one["steps"]] == [1, 2, 3, 4]
    for s1, s2 in zip(one["steps"], two["steps"]):
        assert s2[1] == pytest.approx(s1[1], abs=1e-4) and s2[3] == pytest.approx(s1[3])
    h1, h2 = (json.loads((tmp_path / d / "harness.json").read_text()) for d in ("one", "two"))
    assert h1["data"]["hash"] == h2["data"]["hash"] and h2["metrics"]["steps"] == 4
    assert not (tmp_path / "two" / ".saving").exists()
