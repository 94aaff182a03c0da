"""The harmony benchmark model: a tiny gpt-oss that speaks harmony, built once, seeded, cached.

    python -m bench.harmony_model              # build it (about 20 min on 2 cores), or say where
    python -m bench.harmony_model --notebook   # then run the notebook with it (AIMO 3 path, CPU)

The AIMO 3 path (the `aimo3_gpt_oss` preset: harmony, python tool calls, final channel) needs a
model that really speaks harmony to be tested and measured on a CPU. This is transformers'
`GptOssForCausalLM` (MoE, alternating sliding-window and full attention with sinks, YaRN RoPE)
at toy sizes (bench/recipes/gpt-oss-tiny-harmony.yaml), with gpt-oss's real o200k_harmony
tokenizer (bench/harmony_tokenizer.py), trained from scratch on the toy TIR problems
(training/toy.py's templates) written in harmony: the harmony teacher's solutions (analysis
channel, a call to python, the tool's real reply as the dialect renders it, a final message with
\\boxed{}) through the real data-generation path and the `aimo3_gpt_oss` prompt (for a share of
them, the recipe's plain_prompt_share, without its answer rules and check-before-boxing list, so
that bench/presets.py can compare the prompt with and without them). It solves the toy problems
of its training templates; it knows nothing else.

It lands in $AIMO_CACHE/models/<name> with build.json (seeds, sizes, losses, sha256 of data
and weights) and gpt-oss's own generation_config.json (eos: <|return|>, <|endoftext|>,
<|call|>). The data generation resumes if interrupted; a finished build is reused.
The held-out set is bench/data/toy_heldout.jsonl, as for the ToRA benchmark model.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import re
import time
import uuid
from dataclasses import replace

import yaml

from aimo_lib import SolverConfig
from aimo_lib.engines.cpu import usable_cores
from aimo_lib.fields import check_value
from aimo_lib.models import models_dir
from aimo_lib.solver import first_prompt
from bench import harmony_tokenizer
from bench._cache import publish, sha256_file
from bench.model import TRAIN_SEED, heldout_problems
from training import toy

HERE = os.path.dirname(os.path.abspath(__file__))
RECIPE = os.path.join(HERE, "recipes", "gpt-oss-tiny-harmony.yaml")
# gpt-oss's generation config: it ends at <|return|>, <|endoftext|> and <|call|>
GENERATION_CONFIG = {"bos_token_id": 199998, "eos_token_id": [200002, 199999, 200012],
                     "pad_token_id": 199999}
PAD = GENERATION_CONFIG["pad_token_id"]
# What the tool writes between two of the model's messages: not the model's, so not trained on.
_TOOL_TURN = re.compile(r"<\|start\|>python to=assistant.*?<\|end\|><\|start\|>assistant",
                        re.DOTALL)


# `aimo3_gpt_oss` scaled for a tiny model on CPU: fewer samples and tokens, no second wave;
# everything else (harmony, the prompt, tool calls, early stop, selection) as is. The model is
# trained on this prompt (reasoning effort and all; a plain_prompt_share of it without the
# answer rules and check list): serve it with these settings.
CPU_SETTINGS = {"num_samples": 4, "max_new_tokens": 128, "sample_max_tokens": 512,
                "retry_samples": 0, "reasoning_effort": "low"}


# The plain_prompt_share of the build that can compare the preset's prompt with the plain one.
BOTH_PROMPTS = 0.5


def cpu_config(**overrides) -> SolverConfig:
    """The scaled `aimo3_gpt_oss` (CPU_SETTINGS) with `overrides`."""
    return SolverConfig.preset("aimo3_gpt_oss", **{**CPU_SETTINGS, **overrides})


def notebook_settings() -> list[str]:
    """CPU_SETTINGS as the notebook's papermill parameters (-p NAME VALUE ...)."""
    return [x for k, v in CPU_SETTINGS.items() for x in ("-p", k.upper(), str(v))]


class ModelNotBuiltError(FileNotFoundError):
    """The harmony benchmark model is not in the cache yet."""


# Every recipe key: its type and range, in aimo_lib.fields' terms (checked when the recipe is
# read, so a typo or a hostile value stops the build before 20 minutes of work, never midway).
def _below_one(v) -> str | None:
    return None if v < 1 else "it takes a number below 1"


_RECIPE = {
    "model": (dict, {"check": lambda v: None if v.get("vocab_size") == 201088 else
                     "gpt-oss's sizes, vocab_size 201088 (the o200k_harmony tokenizer's)"}),
    "train_problems": (int, {"gt": 0}),
    "steps": (int, {"gt": 0}),
    "batch_size": (int, {"gt": 0}),
    "learning_rate": (float, {"gt": 0, "check": _below_one}),
    "warmup": (float, {"ge": 0, "check": _below_one}),  # a share of the steps
    "weight_decay": (float, {"ge": 0}),
    "grad_clip": (float, {"gt": 0}),
    "seed": (int, {"ge": 0}),
    "eval_examples": (int, {"gt": 0}),  # and fewer than train_problems
    "plain_prompt_share": (float, {"ge": 0, "le": 1}),  # optional: _OPTIONAL
    "induction": (dict, {}),
}
# Top-level keys a recipe may leave out, and the value their absence means. A build is named by
# the recipe's hash: a key left at its default is dropped, so that it does not change the name.
_OPTIONAL = {"plain_prompt_share": 0.0}
_INDUCTION = {"pretrain_steps": (int, {"ge": 0}), "batch_size": (int, {"gt": 0}),
              "mix_batch_size": (int, {"ge": 0}), "length": (int, {"gt": 1}),
              "max_gap": (int, {"ge": 0})}


def _check(values, spec: dict, where: str, optional: dict | None = None) -> list[str]:
    """What is wrong with `values` against `spec`: unknown or missing keys (but the
    `optional` ones), and each value checked by aimo_lib.fields as every setting is."""
    if not isinstance(values, dict):
        return [f"{where or 'the recipe'} must be a mapping of {sorted(spec)}"]
    errors = [f"unknown key {where}{k} (known: {', '.join(sorted(spec))})"
              for k in values if k not in spec]
    errors += [f"missing key {where}{k}" for k in spec
               if k not in values and k not in (optional or {})]
    for k, (kind, meta) in spec.items():
        if k in values:
            try:
                check_value(f"{where}{k}", kind, values[k], meta)
            except ValueError as exc:
                errors.append(str(exc))
    return errors


def _recipe(path: str = RECIPE, **overrides) -> dict:
    """The recipe at `path` with `overrides` of its top-level keys, every key checked; a
    ValueError lists what is wrong."""
    with open(path, encoding="utf-8") as f:
        r = yaml.safe_load(f)
    if isinstance(r, dict):
        r.update(overrides)
    errors = _check(r, _RECIPE, "", _OPTIONAL)
    if not errors:
        from transformers import GptOssConfig

        known = set(GptOssConfig().to_dict())
        errors = [f"unknown key model.{k}: not a GptOssConfig field" for k in r["model"]
                  if k not in known]
        errors += _check(r["induction"], _INDUCTION, "induction.")
        if r["eval_examples"] >= r["train_problems"]:
            errors.append(f"eval_examples = {r['eval_examples']}: must be fewer than "
                          f"train_problems ({r['train_problems']})")
    if errors:
        raise ValueError(f"{path}: " + "; ".join(errors) + ". Fix the recipe (its comments "
                         "say what each key does).")
    # one name for one build: a float key given as an int is a float; an optional key at the
    # value its absence means is dropped
    r = {k: float(v) if _RECIPE[k][0] is float else v for k, v in r.items()}
    return {k: v for k, v in r.items() if _OPTIONAL.get(k, object()) != v}


def model_path(recipe: dict | None = None) -> str:
    """The build's folder, named by the recipe's content: a changed recipe is a new build,
    never a stale cache read under the old name."""
    r = recipe or _recipe()
    digest = hashlib.sha256(json.dumps(r, sort_keys=True).encode()).hexdigest()[:8]
    return os.path.join(models_dir(), f"gpt-oss-tiny-harmony-n{r['train_problems']}-s{r['seed']}"
                                      f"-{digest}")


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


def _examples(path: str, tok, cfg: SolverConfig, plain_share: float = 0.0, seed: int = 0
              ) -> list[tuple[list[int], list[bool]]]:
    """(token ids, trained-on mask) per solution: the prompt the solver sends, then the
    solution; only the model's own messages are trained on. A `plain_share` of the solutions,
    drawn per solution from `seed`, get cfg's prompt without the answer rules and the
    check-before-boxing list."""
    from aimo_lib.dialects import get_dialect

    dialect = get_dialect("harmony", cfg.reasoning_effort)
    plain = replace(cfg, state_answer_rules=False, check_before_boxing=False)
    out = []
    with open(path, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    # in problem order, not the order the generation finished them: training is order-sensitive
    rows.sort(key=lambda r: int(r["id"].rsplit("-", 1)[1]))
    for row in rows:
        problem, text = row["messages"][0]["content"], row["messages"][1]["content"]
        use = plain if random.Random(f"plain:{seed}:{row['id']}").random() < plain_share else cfg
        ids = tok.encode(first_prompt(use, dialect, problem, None), add_special_tokens=False)
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


class Compact:
    """The data's tokens as a small vocabulary, plus one row for all the others.

    Training on the 201,088-row vocabulary spent most of each step on the output head and the
    optimizer's update of rows no example uses. The model is trained instead over the K tokens
    the data holds plus one "other" row whose logit is raised by log(201,088 - K), and expanded
    when saved: every unused token gets the "other" row. The expanded model's softmax over the
    full vocabulary is then exactly the one trained (K logits, and 201,088 - K equal ones whose
    mass is the "other" class's), not an approximation.
    """

    def __init__(self, examples, full_vocab: int):
        self.ids = sorted({t for ids, _ in examples for t in ids} | {PAD})
        self.index = {t: i for i, t in enumerate(self.ids)}
        self.other, self.full_vocab = len(self.ids), full_vocab
        self.other_bias = math.log(full_vocab - len(self.ids))

    def encode(self, ids: list[int]) -> list[int]:
        return [self.index.get(t, self.other) for t in ids]

    def expand(self, weight):
        """A (K + 1, d) matrix as the full vocabulary's (full_vocab, d)."""
        import torch

        full = weight[self.other].repeat(self.full_vocab, 1)
        full[torch.tensor(self.ids)] = weight[:self.other]
        return full


def _prefix_len(examples) -> int:
    """Tokens every example starts with (the system and developer messages)."""
    first = examples[0][0]
    n = min(len(ids) for ids, _ in examples)
    for ids, _ in examples:
        n = next((i for i in range(n) if ids[i] != first[i]), n)
    return n


def _batch(examples, pad: int, skip: int = 0):
    """(ids, attention mask, trained-on mask) of examples from token `skip` on, right-padded."""
    import torch

    width = max(len(ids) for ids, _ in examples) - skip
    ids = torch.full((len(examples), width), pad)
    att = torch.zeros((len(examples), width), dtype=torch.long)
    own = torch.zeros((len(examples), width), dtype=torch.bool)
    for i, (x, m) in enumerate(examples):
        x, m = x[skip:], m[skip:]
        ids[i, :len(x)], att[i, :len(x)], own[i, :len(m)] = torch.tensor(x), 1, torch.tensor(m)
    return ids, att, own


def _induction(vocab: int, space: int, n: int, length: int, max_gap: int, gen):
    """n sequences of `length` random tokens (ids below `vocab`), every other one a space,
    repeated after a gap of 0..max_gap random tokens; trained on the repeat: (ids, attention
    mask, trained-on mask). A gap that varies from row to row (max_gap > 0) leaves no fixed
    distance to copy from: only finding each token by the one before it works."""
    import torch

    seq = torch.randint(vocab, (n, length), generator=gen)
    seq[:, ::2] = space
    gaps = torch.randint(max_gap + 1, (n,), generator=gen).tolist()
    width = 2 * length + max_gap
    ids = torch.full((n, width), space)
    att = torch.zeros((n, width), dtype=torch.long)
    own = torch.zeros((n, width), dtype=torch.bool)
    for i, g in enumerate(gaps):
        row = torch.cat([seq[i], torch.randint(vocab, (g,), generator=gen), seq[i]])
        # the repeat's first two tokens cannot be known from what precedes them: not trained on
        ids[i, :len(row)], att[i, :len(row)], own[i, length + g + 2:len(row)] = row, 1, True
    return ids, att, own


def _logits(model, ids, att, own, prefix=None):
    """(logits where `own`, their targets): position t predicts token t+1. With `prefix` (one
    row of ids every row starts with), the prefix is computed once and its keys and values
    shared by the batch, as a server's prefix cache does; the loss is the same."""
    import torch

    cache = None
    if prefix is not None:
        out = model.model(input_ids=prefix, use_cache=True)
        cache, last = out.past_key_values, out.last_hidden_state[:, -1:]
        cache.batch_repeat_interleave(ids.shape[0])
        att = torch.cat([torch.ones((ids.shape[0], prefix.shape[1]), dtype=att.dtype), att], 1)
    hidden = model.model(input_ids=ids, attention_mask=att, past_key_values=cache,
                         use_cache=prefix is not None).last_hidden_state
    if prefix is None:
        hidden, target, where = hidden[:, :-1], ids[:, 1:], own[:, 1:]
    else:  # the prefix's last position predicts the rows' first token
        hidden = torch.cat([last.expand(ids.shape[0], 1, -1), hidden[:, :-1]], 1)
        target, where = ids, own
    logits = model.lm_head(hidden[where])
    logits[:, -1] += model.other_bias
    return logits, target[where]


def _loss(model, *batch, prefix=None):
    import torch

    return torch.nn.functional.cross_entropy(*_logits(model, *batch, prefix=prefix))


def _number_accuracy(model, examples, numbers, pad: int, prefix) -> float:
    """Share of the number tokens the model writes (copied from the problem into the code and
    from the tool's reply into the box) that it predicts first: what a model of this size
    learns last."""
    import torch

    hit = total = 0
    model.eval()
    with torch.no_grad():
        for i in range(0, len(examples), 16):
            batch = _batch(examples[i:i + 16], pad, prefix.shape[1])
            logits, target = _logits(model, *batch, prefix=prefix)
            is_num = numbers[target]
            hit += (logits.argmax(-1) == target)[is_num].sum().item()
            total += is_num.sum().item()
    model.train()
    return round(hit / max(1, total), 4)


def train(examples, recipe: dict, out: str, space: int, numbers: set[int], log=print) -> dict:
    """Train a fresh tiny GptOssForCausalLM on the examples (the recipe's induction
    pretraining first, then fine-tuning with induction sequences mixed in), over the data's
    own tokens (Compact), and save it with gpt-oss's full vocabulary."""
    import torch
    from transformers import GptOssConfig, GptOssForCausalLM

    torch.manual_seed(recipe["seed"])
    torch.set_num_threads(len(usable_cores()))  # the cores it may run on (taskset), not all
    compact = Compact(examples, recipe["model"]["vocab_size"])
    data = [(compact.encode(ids), mask) for ids, mask in examples]
    held, data = data[:recipe["eval_examples"]], data[recipe["eval_examples"]:]
    pad, k = compact.index[PAD], compact.other + 1
    is_number = torch.tensor([t in numbers for t in compact.ids] + [False])
    model = GptOssForCausalLM(GptOssConfig(**{**recipe["model"], "vocab_size": k},
                                           pad_token_id=pad, dtype="float32"))
    model.lm_head.weight = model.model.embed_tokens.weight  # tied while training
    model.other_bias = compact.other_bias
    opt = torch.optim.AdamW(model.parameters(), lr=recipe["learning_rate"],
                            weight_decay=recipe["weight_decay"])
    ind, steps, bs = recipe["induction"], recipe["steps"], recipe["batch_size"]
    total = ind["pretrain_steps"] + steps
    warm = max(1, int(recipe["warmup"] * total))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (
        1 + math.cos(math.pi * min(1.0, max(0, s - warm) / max(1, total - warm)))))
    gen = torch.Generator().manual_seed(recipe["seed"])
    n_prefix = _prefix_len(data)
    prefix = torch.tensor([data[0][0][:n_prefix]])
    space = compact.index[space]
    losses, accuracy, start = [], [], time.time()
    model.train()
    for step in range(1, total + 1):
        pretraining = step <= ind["pretrain_steps"]
        n = ind["batch_size"] if pretraining else ind["mix_batch_size"]
        loss = torch.zeros(())
        if n:  # mix_batch_size 0: no induction sequences while fine-tuning
            loss = _loss(model, *_induction(compact.other, space, n, ind["length"],
                                            ind["max_gap"], gen))
        if not pretraining:
            pick = torch.randint(len(data), (bs,), generator=gen).tolist()
            loss = loss + _loss(model, *_batch([data[i] for i in pick], pad, n_prefix),
                                prefix=prefix)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), recipe["grad_clip"])
        opt.step()
        sched.step()
        if step % 50 == 0 or step == total:
            losses.append(round(loss.item(), 4))
            line = f"[harmony-model] step {step}/{total} loss {loss.item():.4f}"
            if not pretraining and (step % 500 == 0 or step == total):
                accuracy.append((step, _number_accuracy(model, held, is_number, pad, prefix)))
                line += f", numbers right on {len(held)} held-out solutions {accuracy[-1][1]:.1%}"
            log(f"{line} ({time.time() - start:.0f} s)", flush=True)
    full = GptOssForCausalLM(GptOssConfig(**recipe["model"], **GENERATION_CONFIG,
                                          dtype="float32"))
    state = model.state_dict()
    weight = compact.expand(state["model.embed_tokens.weight"])
    state["model.embed_tokens.weight"], state["lm_head.weight"] = weight, weight.clone()
    full.load_state_dict(state)  # untied, as gpt-oss's are
    full.save_pretrained(out)
    return {"steps": total, "losses": losses, "number_accuracy": accuracy,
            "vocabulary": compact.other, "seconds": round(time.time() - start)}


def build(force: bool = False, recipe_path: str = RECIPE,
          plain_prompt_share: float | None = None) -> str:
    """Build the model (or return the built one): tokenizer, harmony TIR data, training.
    plain_prompt_share, if given, replaces the recipe's (a build of its own)."""
    from transformers import AutoTokenizer

    shares = {} if plain_prompt_share is None else {"plain_prompt_share": plain_prompt_share}
    recipe = _recipe(recipe_path, **shares)
    out = model_path(recipe)
    if os.path.exists(os.path.join(out, "build.json")) and not force:
        return out
    start = time.time()
    work = out + ".build"
    os.makedirs(work, exist_ok=True)
    tok_dir = harmony_tokenizer.build()
    tok = AutoTokenizer.from_pretrained(tok_dir)
    data, counts = tir_data(work, recipe["train_problems"])
    share = recipe.get("plain_prompt_share", _OPTIONAL["plain_prompt_share"])
    examples = _examples(data, tok, cpu_config(), share, recipe["seed"])
    tmp = f"{out}.tmp-{uuid.uuid4().hex[:8]}"
    numbers = {i for t, i in tok.get_vocab().items() if t.isascii() and t.isdigit()}
    report = train(examples, recipe, tmp, tok.encode(" ", add_special_tokens=False)[0], numbers)
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
    ap.add_argument("--plain-prompt-share", type=float, default=None,
                    help="train this share of the solutions under the aimo3_gpt_oss prompt "
                    "without its answer rules and check list (default: the recipe's; absent, "
                    f"0); {BOTH_PROMPTS} builds the model bench.presets' aimo3_plain_prompt arm "
                    "runs on")
    ap.add_argument("--notebook", action="store_true",
                    help="then run the notebook with it on the held-out problems (the AIMO 3 "
                    "path on CPU: harmony, python tool calls, the aimo3_gpt_oss preset scaled)")
    ap.add_argument("--limit", type=int, default=None, help="--notebook: first N problems")
    ap.add_argument("--out", default="runs/harmony", help="--notebook: its output folder")
    args, extra = ap.parse_known_args(argv)  # with --notebook, the rest goes to papermill
    if extra and not args.notebook:
        ap.error(f"unrecognized arguments: {' '.join(extra)}")
    share = args.plain_prompt_share
    try:  # the flag and the recipe are checked before any build work
        if share is not None:
            check_value("--plain-prompt-share", float, share, _RECIPE["plain_prompt_share"][1])
        _recipe(args.recipe)
    except ValueError as exc:
        ap.error(str(exc))
    path = build(args.force, args.recipe, share)
    with open(os.path.join(path, "build.json"), encoding="utf-8") as f:
        print(json.dumps({k: v for k, v in json.load(f).items() if k != "recipe"}, indent=2))
    print(path)
    if args.notebook:
        raise SystemExit(run_notebook(path, args.out, args.limit, extra))


if __name__ == "__main__":
    main()
