"""Regenerate examples.jsonl: 200 held-out orders (seed 2), none of whose messages the demo trains on.

    python suites/order-task/make_data.py
"""

from pathlib import Path

from harness.jobs.demo_data import generate_orders, write_jsonl

HELD_OUT_SEED, TRAIN_SEED, N = 2, 1, 200

if __name__ == "__main__":
    seen = {e.message for e in generate_orders(2000, seed=TRAIN_SEED)}
    held_out = [e for e in generate_orders(2 * N, seed=HELD_OUT_SEED) if e.message not in seen][:N]
    write_jsonl(held_out, Path(__file__).with_name("examples.jsonl"))
