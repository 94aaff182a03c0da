"""Smoke test of the training chain's GPU paths where a GPU exists: stage-2 SFT in bf16 with
the recipe's attention implementation, gradient checkpointing and an eval split; a KTO step;
then the checkpoint served the way the notebook serves it (transformers on CUDA, in the chat
template it was trained on).

    python -m scripts.gpu_train_smoke --model DIR                  # a small causal LM
    python -m scripts.gpu_train_smoke --random-init DIR            # config + tokenizer only:
                                                                   # random weights (no hub)

Exits non-zero when something that should work does not (no GPU, a loss that is not finite
or does not fall, a checkpoint served in another format than it was trained on).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time


def tir_rows(n: int) -> list[dict]:
    return [{"messages": [
        {"role": "user", "content": f"What is {i} + {i}?"},
        {"role": "assistant", "content": f"```python\nprint({i} + {i})\n```\n```output\n"
                                         f"{2 * i}\n```\nThe answer is $\\boxed{{{2 * i}}}$."}]}
        for i in range(n)]


def random_model(config_dir: str, out: str) -> str:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(config_dir))
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(config_dir).save_pretrained(out)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--model", help="a small causal LM checkpoint")
    g.add_argument("--random-init", metavar="DIR", help="config.json + tokenizer: random weights")
    ap.add_argument("--attn", default="sdpa", help="attn_implementation (flash_attention_2 "
                    "where flash-attn is installed)")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--cpu", action="store_true", help="a dry run of this script on CPU")
    args = ap.parse_args()

    import torch

    if not torch.cuda.is_available() and not args.cpu:
        print("FAIL: no CUDA device visible")
        return 1
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
    print(f"device: {device}, torch {torch.__version__}", flush=True)
    from aimo_lib.kaggle.serve import load_config, make_runner
    from aimo_lib.prompts import render_prompt
    from training import kto, sft

    work = tempfile.mkdtemp(prefix="gpu-train-")
    model = args.model or random_model(args.random_init, os.path.join(work, "base"))
    data = os.path.join(work, "tir.jsonl")
    with open(data, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in tir_rows(32))

    start = time.perf_counter()
    report = sft.main({
        "model_name_or_path": model, "dataset_name": data, "output_dir": f"{work}/sft",
        "chat_template": "numina", "attn_implementation": args.attn, "dtype": "bfloat16",
        "bf16": True, "gradient_checkpointing": True, "max_steps": args.steps,
        "learning_rate": 3e-4, "lr_scheduler_type": "constant", "max_length": 256,
        "per_device_train_batch_size": 4, "logging_steps": 1, "save_steps": 1000,
        "eval_strategy": "steps", "eval_steps": args.steps // 2, "eval_fraction": 0.25})
    losses = report["losses"]
    print(f"SFT: {report['steps']} steps in {time.perf_counter() - start:.1f} s, loss "
          f"{losses[0]:.3f} -> {losses[-1]:.3f}, eval losses {report['eval_losses']}, "
          f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30 if not args.cpu else 0:.2f}"
          " GiB", flush=True)
    if not all(x == x for x in losses) or losses[-1] >= losses[0]:
        print("FAIL: the SFT loss is not finite or does not fall")
        return 1

    rows = [{"prompt": render_prompt("numina", f"What is {i} + {i}?"),
             "completion": r["messages"][1]["content"].replace(f"{{{2 * i}}}", "{7}")
             if i % 2 else r["messages"][1]["content"], "label": i % 2 == 0}
            for i, r in enumerate(tir_rows(8))]
    config, model_cfg, chat, _ = kto.parse_recipe(kto.RECIPE, {
        "model_name_or_path": f"{work}/sft", "output_dir": f"{work}/kto", "max_steps": 2,
        "per_device_train_batch_size": 4, "max_length": 256, "dtype": "float32", "bf16": True,
        "gradient_checkpointing": True, "attn_implementation": args.attn})
    start = time.perf_counter()
    k = kto.train(config, model_cfg, chat, rows, f"{work}/sft")
    print(f"KTO: {k['steps']} steps in {time.perf_counter() - start:.1f} s, rewards "
          f"{k['last_logged_rewards']}", flush=True)

    config = load_config(model=f"{work}/sft", engine="hf", competition="aimo3",
                         num_samples=8, max_rounds=2, max_new_tokens=64,
                         out_dir=f"{work}/submission")
    start = time.perf_counter()
    with make_runner(config) as runner:
        result = runner.solve("What is 5 + 5?", "p1").result
    took = time.perf_counter() - start
    print(f"served: prompt {result.prompt!r}, answer {result.answer}, "
          f"{result.tokens_generated} tokens in {took:.1f} s", flush=True)
    if render_prompt("numina", "What is 5 + 5?") not in result.prompt or result.error:
        print(f"FAIL: not served in its training format ({result.error})")
        return 1
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
