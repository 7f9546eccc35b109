"""Equality with lm-evaluation-harness: the same task YAMLs, the same model, per-example log-likelihoods and acc.

    python benchmarks/lmeval_equality.py [--lmeval-python /tmp/lmeval-venv/bin/python] [--limit N]

For each task (the shipped ``suites/lmeval-capitals/task.yaml`` (multiple choice, 0-shot), the same task 2-shot,
and ``task_loglikelihood.yaml``):

- lm-eval 0.4 itself, from its own virtual environment (``benchmarks/eval_speed.py --install-lmeval`` makes one),
  runs ``simple_evaluate`` with ``--include_path`` on the task's folder (run from that folder, where its
  ``data_files`` are), HF backend, float32, CPU, ``log_samples``;
- the harness runs ``harness eval --suite TASK.yaml`` into a fresh DuckDB file (the real command: the task reader,
  the runner's shared per-context batches, the store), and the per-choice log-likelihoods are read back from it.

It prints, per task, the largest per-choice |log-likelihood difference| (must be <= 1e-4), how many examples'
acc / acc_norm differ (must be 0), and both means; exit 1 when any check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

LMEVAL_SCRIPT = r'''
import json, sys
cfg = json.load(open(sys.argv[1]))
import torch
torch.set_num_threads(cfg["threads"])
from lm_eval import simple_evaluate
from lm_eval.tasks import TaskManager
tm = TaskManager(include_path=cfg["folder"])
res = simple_evaluate(model="hf", model_args=f"pretrained={cfg['model']},dtype=float32", tasks=[cfg["task"]],
                      task_manager=tm, batch_size=16, device="cpu", log_samples=True, limit=cfg["limit"])
out = []
for s in res["samples"][cfg["task"]]:
    out.append({"doc_id": s["doc_id"], "lls": [float(r[0][0]) for r in s["resps"]],
                "greedy": [bool(r[0][1]) for r in s["resps"]],
                "acc": s.get("acc"), "acc_norm": s.get("acc_norm"),
                "context": s["arguments"][0][0] if s["arguments"] else None})
json.dump({"samples": out, "version": __import__("lm_eval").__version__}, open(cfg["out"], "w"))
'''


def run_lmeval(py: Path, folder: Path, task: str, model_dir: Path, limit: int | None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        script, cfg, out = Path(tmp) / "run.py", Path(tmp) / "cfg.json", Path(tmp) / "out.json"
        script.write_text(LMEVAL_SCRIPT)
        cfg.write_text(json.dumps({"folder": str(folder), "task": task, "model": str(model_dir), "limit": limit,
                                   "threads": int(os.environ.get("HARNESS_THREADS", "2")), "out": str(out)}))
        env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
                   TOKENIZERS_PARALLELISM="false")
        env.pop("PYTHONPATH", None)
        subprocess.run([str(py), str(script), str(cfg)], cwd=folder, env=env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        return json.loads(out.read_text())


def run_harness(task_file: Path, limit: int | None) -> dict[str, dict]:
    import duckdb

    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "h.duckdb"
        cmd = [sys.executable, "-m", "harness", "eval", "--suite", str(task_file), "--db", str(db)]
        if limit:
            cmd += ["--limit-per-suite", str(limit)]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        con = duckdb.connect(str(db), read_only=True)
        rows = con.execute("SELECT g.example_id, g.settings, g.prompt, s.metric, s.value FROM generations g "
                           "JOIN scores s USING (cache_key)").fetchall()
        con.close()
    out: dict[str, dict] = {}
    for ex, settings, prompt, metric, value in rows:
        d = out.setdefault(ex, {"lls": json.loads(settings)["logprobs"], "context": prompt})
        d[metric] = value
    return out


def compare(name: str, lm: dict, ours: dict[str, dict]) -> bool:
    worst, acc_diff, norm_diff, ctx_diff, n = 0.0, 0, 0, 0, 0
    for s in lm["samples"]:
        mine = ours.get(str(s["doc_id"]))
        if mine is None:
            print(f"  {name}: document {s['doc_id']} missing from the harness's run")
            return False
        n += 1
        worst = max([worst] + [abs(a - b) for a, b in zip(s["lls"], mine["lls"])])
        acc_diff += (s["acc"] is not None) and float(s["acc"]) != mine.get("acc")
        norm_diff += (s.get("acc_norm") is not None) and float(s["acc_norm"]) != mine.get("acc_norm")
        ctx_diff += s["context"] is not None and s["context"] != mine["context"]
    mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")  # noqa: E731
    lm_acc = mean([float(s["acc"]) for s in lm["samples"] if s["acc"] is not None])
    our_acc = mean([float(ours[str(s["doc_id"])]["acc"]) for s in lm["samples"]])
    ok = worst <= 1e-4 and acc_diff == 0 and norm_diff == 0 and ctx_diff == 0
    print(f"  {name}: {n} documents, contexts differing {ctx_diff}, max |log-likelihood difference| {worst:.2e} "
          f"(allowed 1e-4), acc differing {acc_diff}, acc_norm differing {norm_diff}; acc lm-eval {lm_acc:.4f} "
          f"harness {our_acc:.4f}: {'EQUAL' if ok else 'DIFFERENT'}")
    return ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lmeval-python", default="/tmp/lmeval-venv/bin/python")
    ap.add_argument("--limit", type=int, default=None)
    args = ap.parse_args()
    from harness.models.base import resolve_base

    py = Path(args.lmeval_python)
    if not py.exists():
        print(f"lm-eval: {py} not found; make it with benchmarks/eval_speed.py --install-lmeval")
        return 2
    model_dir = resolve_base().path
    src = ROOT / "suites" / "lmeval-capitals"
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "capitals"
        shutil.copytree(src, folder)
        text = (folder / "task.yaml").read_text()
        (folder / "task_2shot.yaml").write_text(text.replace("task: capitals_mc", "task: capitals_mc_2shot")
                                                .replace("num_fewshot: 0", "num_fewshot: 2"))
        for file, task in (("task.yaml", "capitals_mc"), ("task_2shot.yaml", "capitals_mc_2shot"),
                           ("task_loglikelihood.yaml", "capitals_ll")):
            lm = run_lmeval(py, folder, task, model_dir, args.limit)
            ours = run_harness(folder / file, args.limit)
            ok &= compare(f"{task} (lm-eval {lm['version']})", lm, ours)
    print("all equal" if ok else "NOT EQUAL")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
