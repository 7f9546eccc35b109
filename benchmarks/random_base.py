"""A random-weight copy of a base model and a random LoRA adapter for it, for timing where the real
weights cannot travel (a device machine without the network; the speed of a forward does not depend on
the weights' values).

    python benchmarks/random_base.py CONFIG_DIR OUT_DIR [--seed 0] [--r 16]

CONFIG_DIR: a model directory's ``config.json`` and tokenizer files (weights not needed), e.g. the
converted SmolLM2-135M under ``$HARNESS_HOME/models/``. Writes ``OUT_DIR/base`` (safetensors, fp32) and
``OUT_DIR/adapter`` (LoRA r on every projection, its B matrices random so every scale answers
differently), and prints both paths. Greedy answers of random weights rarely meet a stop string, so
every row runs to max_new_tokens: the timing is of full-length answers.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config_dir", type=Path)
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--r", type=int, default=16)
    args = ap.parse_args()

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from harness.train.spec import ALL_PROJECTIONS

    if not (args.config_dir / "config.json").is_file():
        raise SystemExit(f"{args.config_dir}: no config.json; pass a model directory (its weights are not read)")
    torch.manual_seed(args.seed)
    config = AutoConfig.from_pretrained(args.config_dir)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    base_dir, adapter_dir = args.out_dir / "base", args.out_dir / "adapter"
    model.save_pretrained(base_dir, safe_serialization=True)
    AutoTokenizer.from_pretrained(args.config_dir).save_pretrained(base_dir)
    peft_model = get_peft_model(model, LoraConfig(r=args.r, lora_alpha=2 * args.r, target_modules=list(ALL_PROJECTIONS),
                                                  init_lora_weights="gaussian"))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:  # zero at init: the adapter would change nothing
                p.normal_(0.0, 0.02)
    peft_model.peft_config["default"].base_model_name_or_path = str(base_dir.resolve())
    peft_model.save_pretrained(adapter_dir)
    print(f"base {base_dir}\nadapter {adapter_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
