"""The harmony benchmark model: a tiny gpt-oss that speaks harmony, built once, seeded, cached.

    python -m bench.harmony_model              # build it (about 25 min on 2 cores), or say where
    python -m bench.harmony_model --notebook   # then run the notebook with it (AIMO 3 path, CPU)

The AIMO 3 path (the `aimo3_gpt_oss` preset: harmony, python tool calls, final channel) needs a
model that really speaks harmony to be tested and measured on a CPU. This is transformers'
`GptOssForCausalLM` (MoE, alternating sliding-window and full attention with sinks, YaRN RoPE)
at toy sizes (training/recipes/gpt-oss-tiny/toy-harmony.yaml), with gpt-oss's real o200k_harmony
tokenizer (bench/harmony_tokenizer.py), trained from scratch on the toy TIR problems
(training/toy.py's templates) written in harmony: the harmony teacher's solutions (analysis
channel, a call to python, the tool's real reply as the dialect renders it, a final message with
\\boxed{}) through the real data-generation path and the `aimo3_gpt_oss` prompt. It solves the
toy problems of its training templates; it knows nothing else.

It lands in $AIMO_CACHE/models/<name> with build.json (seeds, sizes, losses, sha256 of data
and weights) and gpt-oss's own generation_config.json (eos: <|return|>, <|endoftext|>,
<|call|>). The data generation resumes if interrupted; a finished build is reused.
The held-out set is bench/data/toy_heldout.jsonl, as for the ToRA benchmark model.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import time
import uuid

import yaml

from aimo_lib import SolverConfig
from aimo_lib.models import models_dir
from aimo_lib.solver import first_prompt
from bench import harmony_tokenizer
from bench._cache import publish, sha256_file
from bench.model import TRAIN_SEED, heldout_problems
from training import toy

HERE = os.path.dirname(os.path.abspath(__file__))
RECIPE = os.path.join(HERE, "..", "training", "recipes", "gpt-oss-tiny", "toy-harmony.yaml")
# gpt-oss's generation config: it ends at <|return|>, <|endoftext|> and <|call|>
GENERATION_CONFIG = {"bos_token_id": 199998, "eos_token_id": [200002, 199999, 200012],
                     "pad_token_id": 199999}
# What the tool writes between two of the model's messages: not the model's, so not trained on.
_TOOL_TURN = re.compile(r"<\|start\|>python to=assistant.*?<\|end\|><\|start\|>assistant",
                        re.DOTALL)


# `aimo3_gpt_oss` scaled for a tiny model on CPU: fewer samples and tokens, no second wave;
# everything else (harmony, the prompt, tool calls, early stop, selection) as is. The model is
# trained on this prompt (reasoning effort and all): serve it with these settings.
CPU_SETTINGS = {"num_samples": 4, "max_new_tokens": 128, "sample_max_tokens": 512,
                "retry_samples": 0, "reasoning_effort": "low"}


def cpu_config(**overrides) -> SolverConfig:
    """The scaled `aimo3_gpt_oss` (CPU_SETTINGS) with `overrides`."""
    return SolverConfig.preset("aimo3_gpt_oss", **{**CPU_SETTINGS, **overrides})


def notebook_settings() -> list[str]:
    """CPU_SETTINGS as the notebook's papermill parameters (-p NAME VALUE ...)."""
    return [x for k, v in CPU_SETTINGS.items() for x in ("-p", k.upper(), str(v))]


class ModelNotBuiltError(FileNotFoundError):
    """The harmony benchmark model is not in the cache yet."""


def _recipe(path: str = RECIPE) -> dict:
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def model_path(recipe: dict | None = None) -> str:
    r = recipe or _recipe()
    return os.path.join(models_dir(), f"gpt-oss-tiny-harmony-n{r['train_problems']}-s{r['seed']}")


def harmony_model() -> str:
    """The built model's folder; raises ModelNotBuiltError (saying how to build it) if absent."""
    path = model_path()
    if not os.path.exists(os.path.join(path, "build.json")):
        raise ModelNotBuiltError(f"the harmony benchmark model is not built: run `python -m "
                                 f"bench.harmony_model` (about 20 min on 2 cores; it lands in "
                                 f"{path}; AIMO_CACHE moves the cache)")
    return path


def tir_data(work: str, n: int) -> tuple[str, dict]:
    """The harmony teacher's solutions of n seen-template problems (none held out), through
    aimo_lib's generation path with the scaled AIMO 3 preset's prompt."""
    from aimo_lib.sandbox import Sandbox
    from training.generate_tir_data import generate

    held = {p.problem for p, _ in heldout_problems()}
    problems = [p for p, _ in toy.instances(n, seed=TRAIN_SEED) if p.problem not in held]
    path = os.path.join(work, "tir-harmony.jsonl")
    with Sandbox() as sandbox:
        counts = generate(problems, toy.harmony_teacher(), sandbox, path, attempts=4,
                          config=cpu_config(num_samples=1, early_stop=None), progress=True)
    return path, counts


def _examples(path: str, tok, cfg: SolverConfig) -> list[tuple[list[int], list[bool]]]:
    """(token ids, trained-on mask) per solution: the prompt the solver sends, then the
    solution; only the model's own messages are trained on."""
    from aimo_lib.dialects import get_dialect

    dialect = get_dialect("harmony", cfg.reasoning_effort)
    out = []
    with open(path, encoding="utf-8") as f:
        for row in map(json.loads, filter(str.strip, f)):
            problem, text = row["messages"][0]["content"], row["messages"][1]["content"]
            ids = tok.encode(first_prompt(cfg, dialect, problem, None), add_special_tokens=False)
            mask = [False] * len(ids)
            pos = 0
            for m in [*_TOOL_TURN.finditer(text), None]:
                own = text[pos:m.start() if m else len(text)]
                piece = tok.encode(own, add_special_tokens=False)
                ids, mask = ids + piece, mask + [True] * len(piece)
                if m:
                    piece = tok.encode(m.group(0), add_special_tokens=False)
                    ids, mask, pos = ids + piece, mask + [False] * len(piece), m.end()
            out.append((ids, mask))
    return out


def _batch(examples):
    """(ids, attention mask, trained-on mask) of examples, right-padded."""
    import torch

    width = max(len(ids) for ids, _ in examples)
    ids = torch.full((len(examples), width), GENERATION_CONFIG["pad_token_id"])
    att = torch.zeros((len(examples), width), dtype=torch.long)
    own = torch.zeros((len(examples), width), dtype=torch.bool)
    for i, (x, m) in enumerate(examples):
        ids[i, :len(x)], att[i, :len(x)], own[i, :len(m)] = torch.tensor(x), 1, torch.tensor(m)
    return ids, att, own


def _induction(vocab, space: int, n: int, length: int, gen):
    """n sequences of `length` random tokens of `vocab`, every other one a space, repeated;
    trained on the repeat: (ids, attention mask, trained-on mask)."""
    import torch

    seq = vocab[torch.randint(len(vocab), (n, length), generator=gen)]
    seq[:, ::2] = space
    ids = torch.cat([seq, seq], 1)
    own = torch.zeros_like(ids, dtype=torch.bool)
    own[:, length:] = True
    return ids, torch.ones_like(ids), own


def _loss(model, ids, att, own):
    """Cross-entropy over the full vocabulary where `own` (position t predicts token t+1),
    with the head's logits computed only there."""
    import torch

    hidden = model.model(input_ids=ids, attention_mask=att).last_hidden_state
    where = own[:, 1:]
    return torch.nn.functional.cross_entropy(model.lm_head(hidden[:, :-1][where]),
                                             ids[:, 1:][where])


def train(examples, recipe: dict, out: str, space: int, log=print) -> dict:
    """Train a fresh tiny GptOssForCausalLM on the examples (the recipe's induction
    pretraining first, then fine-tuning with induction sequences mixed in)."""
    import torch
    from transformers import GptOssConfig, GptOssForCausalLM

    torch.manual_seed(recipe["seed"])
    torch.set_num_threads(os.cpu_count() or 1)
    model = GptOssForCausalLM(GptOssConfig(**recipe["model"], **GENERATION_CONFIG,
                                           dtype="float32"))
    model.lm_head.weight = model.model.embed_tokens.weight  # tied while training
    opt = torch.optim.AdamW(model.parameters(), lr=recipe["learning_rate"],
                            weight_decay=recipe["weight_decay"])
    ind, steps, bs = recipe["induction"], recipe["steps"], recipe["batch_size"]
    total = ind["pretrain_steps"] + steps
    warm = max(1, int(recipe["warmup"] * total))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (
        1 + math.cos(math.pi * min(1.0, max(0, s - warm) / max(1, total - warm)))))
    gen = torch.Generator().manual_seed(recipe["seed"])
    vocab = torch.tensor(sorted({t for ids, _ in examples for t in ids}))
    losses, start = [], time.time()
    model.train()
    for step in range(1, total + 1):
        if step <= ind["pretrain_steps"]:
            loss = _loss(model, *_induction(vocab, space, ind["batch_size"], ind["length"], gen))
        else:
            pick = torch.randint(len(examples), (bs,), generator=gen).tolist()
            loss = _loss(model, *_batch([examples[i] for i in pick])) + _loss(
                model, *_induction(vocab, space, ind["mix_batch_size"], ind["length"], gen))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), recipe["grad_clip"])
        opt.step()
        sched.step()
        if step % 25 == 0 or step == total:
            losses.append(round(loss.item(), 4))
            phase = "induction" if step <= ind["pretrain_steps"] else "solutions+induction"
            log(f"[harmony-model] step {step}/{total} ({phase}) loss {loss.item():.4f} "
                f"({time.time() - start:.0f} s)", flush=True)
    model.lm_head.weight = torch.nn.Parameter(model.model.embed_tokens.weight.detach().clone())
    model.save_pretrained(out)
    return {"steps": total, "losses": losses, "seconds": round(time.time() - start)}


def build(force: bool = False, recipe_path: str = RECIPE) -> str:
    """Build the model (or return the built one): tokenizer, harmony TIR data, training."""
    from transformers import AutoTokenizer

    recipe = _recipe(recipe_path)
    out = model_path(recipe)
    if os.path.exists(os.path.join(out, "build.json")) and not force:
        return out
    start = time.time()
    work = out + ".build"
    os.makedirs(work, exist_ok=True)
    tok_dir = harmony_tokenizer.build()
    tok = AutoTokenizer.from_pretrained(tok_dir)
    data, counts = tir_data(work, recipe["train_problems"])
    examples = _examples(data, tok, cpu_config())
    tmp = f"{out}.tmp-{uuid.uuid4().hex[:8]}"
    report = train(examples, recipe, tmp, tok.encode(" ", add_special_tokens=False)[0])
    tok.save_pretrained(tmp)
    with open(os.path.join(tmp, "generation_config.json"), "w", encoding="utf-8") as f:
        json.dump(GENERATION_CONFIG, f, indent=2)
    manifest = {
        "name": os.path.basename(out), "built": time.strftime("%Y-%m-%d %H:%M:%S"),
        "seconds": round(time.time() - start), "recipe": recipe,
        "train_seed": TRAIN_SEED, "examples": len(examples),
        "tokens": sum(len(ids) for ids, _ in examples),
        "trained_tokens": sum(sum(m) for _, m in examples),
        "tir_data": {"kept": len(examples), "this_run": counts}, "train": report,
        "sha256": {"tir-harmony.jsonl": sha256_file(data),
                   "model.safetensors": sha256_file(os.path.join(tmp, "model.safetensors"))}}
    return publish(tmp, out, manifest)


def run_notebook(model: str, out: str, limit: int | None, extra: list[str]) -> int:
    """The AIMO 3 path on CPU: kaggle_notebook.ipynb, unchanged, with this model (PRESET auto
    picks aimo3_gpt_oss from its config.json), CPU_SETTINGS, and the held-out problems."""
    import subprocess
    import sys

    from bench.model import HELDOUT

    repo = os.path.dirname(HERE)
    os.makedirs(out, exist_ok=True)
    cmd = [sys.executable, "-m", "papermill", os.path.join(repo, "kaggle_notebook.ipynb"),
           os.path.join(out, "executed.ipynb"), "-p", "MODEL", model, "-p", "PRESET", "auto",
           "-p", "PROBLEMS", HELDOUT, "-p", "OUT_DIR", out, *notebook_settings(),
           *(["-p", "LIMIT", str(limit)] if limit else []), *extra]
    print("[harmony-model] " + " ".join(cmd), flush=True)
    return subprocess.run(cmd).returncode


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default=RECIPE, help="model sizes and training (YAML)")
    ap.add_argument("--force", action="store_true", help="rebuild even if cached")
    ap.add_argument("--notebook", action="store_true",
                    help="then run the notebook with it on the held-out problems (the AIMO 3 "
                    "path on CPU: harmony, python tool calls, the aimo3_gpt_oss preset scaled)")
    ap.add_argument("--limit", type=int, default=None, help="--notebook: first N problems")
    ap.add_argument("--out", default="runs/harmony", help="--notebook: its output folder")
    args, extra = ap.parse_known_args(argv)  # with --notebook, the rest goes to papermill
    if extra and not args.notebook:
        ap.error(f"unrecognized arguments: {' '.join(extra)}")
    path = build(args.force, args.recipe)
    with open(os.path.join(path, "build.json"), encoding="utf-8") as f:
        print(json.dumps({k: v for k, v in json.load(f).items() if k != "recipe"}, indent=2))
    print(path)
    if args.notebook:
        raise SystemExit(run_notebook(path, args.out, args.limit, extra))


if __name__ == "__main__":
    main()
