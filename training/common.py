"""What the training scripts share: recipes, chat templates, data loading, model preparation.

Recipes are YAML files named after model and stage (recipes/<model>/<stage>.yaml); any key
can be overridden on the command line with `--set key=value` (YAML syntax for the value).
"""

from __future__ import annotations

import json
import os
import sys

import yaml

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

# The AIMO-1 winner's chat template (NuminaMath-7B-TIR): "### Problem: {p}\n### Solution: ",
# BOS first, EOS after each solution (their packing appended one per sample).
NUMINA_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ '### Problem: ' + message['content'] + '\\n' }}"
    "{% elif message['role'] == 'assistant' %}"
    "{{ '### Solution: ' + message['content'] + '\\n' + eos_token }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '### Solution: ' }}{% endif %}"
)


def recipe_parser(doc: str):
    """The CLI every training script shares: --recipe FILE [--set key=value ...]; a script
    may add its own arguments."""
    import argparse

    ap = argparse.ArgumentParser(description=doc,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", required=True, help="YAML recipe (training/recipes/...)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a recipe key (repeatable; the value is YAML)")
    return ap


def recipe_from_argv(doc: str) -> dict:
    args = recipe_parser(doc).parse_args()
    return load_recipe(args.recipe, args.set)


def in_flight(items, fn, concurrency: int, desc: str, progress: bool = True):
    """fn(item) for every item, `concurrency` at a time (an engine serves their requests
    together); yields (item, future) as each finishes, with a progress bar, so the caller
    writes each result at once and an interrupted run loses only what was in flight."""
    from concurrent.futures import ThreadPoolExecutor, as_completed

    from tqdm.auto import tqdm

    with ThreadPoolExecutor(max(1, concurrency), thread_name_prefix=desc) as pool:
        futures = {pool.submit(fn, item): item for item in items}
        for future in tqdm(as_completed(futures), total=len(futures), desc=desc,
                           disable=not progress):
            yield futures[future], future


def load_recipe(path: str, overrides: list[str] | None = None) -> dict:
    """A YAML recipe, with `key=value` overrides (values parsed as YAML)."""
    with open(path, encoding="utf-8") as f:
        recipe = yaml.safe_load(f) or {}
    for item in overrides or []:
        if "=" not in item:
            raise SystemExit(f"--set takes key=value, got {item!r}")
        key, value = item.split("=", 1)
        recipe[key] = yaml.safe_load(value)
    return recipe


def prepare_model(name_or_path: str, gguf_file: str | None = None, cache_dir: str = "runs/models"
                  ) -> str:
    """A directory transformers can train from. A GGUF file cannot be trained or saved as it
    is: it is written once as a plain checkpoint (aimo_lib.models.checkpoint_from_gguf)."""
    from aimo_lib.models import checkpoint_from_gguf, default_model_path

    if name_or_path == "smollm2-gguf":
        name_or_path, gguf_file = default_model_path()
    if not gguf_file:
        return name_or_path
    out = os.path.join(cache_dir, os.path.splitext(os.path.basename(gguf_file))[0])
    return checkpoint_from_gguf(name_or_path, gguf_file, out)


def load_tokenizer(path: str, chat_template: str = "model"):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if chat_template == "numina":
        tokenizer.chat_template = NUMINA_CHAT_TEMPLATE
    elif chat_template != "model":
        raise SystemExit("chat_template must be 'numina' or 'model'")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token  # pad = eos, as in the seed
    return tokenizer


def load_dataset_any(source: str, split: str = "train", limit: int | None = None):
    """A `datasets.Dataset` from a local .jsonl/.json/.parquet file or a hub name."""
    import datasets

    ext = os.path.splitext(source)[1]
    if ext in (".jsonl", ".json"):
        ds = datasets.load_dataset("json", data_files=source, split="train")
    elif ext == ".parquet":
        ds = datasets.load_dataset("parquet", data_files=source, split="train")
    elif os.path.exists(source):
        raise SystemExit(f"{source}: expected a .jsonl, .json or .parquet file")
    else:
        ds = datasets.load_dataset(source, split=split)  # needs hub access
    return ds.select(range(min(limit, len(ds)))) if limit else ds


def write_json(path: str, obj) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, default=str)
