"""What the training scripts share: recipes, chat templates, data loading, model preparation.

Recipes are YAML files named after model and stage (recipes/<model>/<stage>.yaml) whose keys are
the TRL/transformers config fields themselves (SFTConfig, KTOConfig, ModelConfig,
ScriptArguments) plus a few of ours (the dataclasses below), parsed with TRL's TrlParser:
`--config recipe.yaml`, and `--field value` on the command line overrides the file.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from dataclasses import dataclass, field

from aimo_lib.prompts import NUMINA_CHAT_TEMPLATE

# The checkout this package is in: a child `python -m training.<module>` started in another
# folder (quantize.py in its output folder) finds the package there.
CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def module_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """`env` (default: this process's) with the checkout first on PYTHONPATH, for a child
    `python -m training.<module>` whose working directory need not be the checkout."""
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (CHECKOUT, env.get("PYTHONPATH")) if p)
    return env


@dataclass
class ChatArguments:
    """Recipe keys of ours that every script shares (the rest are TRL/transformers fields)."""

    chat_template: str = field(default="model", metadata={
        "help": "'numina': the seed's ### Problem: / ### Solution: template, saved with the "
                "checkpoint as its own; 'model': the model's own chat template",
        "choices": ["model", "numina"]})
    gguf_file: str | None = field(default=None, metadata={
        "help": "a .gguf file inside model_name_or_path (dequantised once to a checkpoint)"})

    def __post_init__(self):
        if self.chat_template not in ("model", "numina"):
            raise ValueError(f"chat_template must be 'model' or 'numina', not "
                             f"{self.chat_template!r}")


@dataclass
class MachineDefaults:
    """Mixed into a trainer config (before it): this project's defaults, and on a machine
    without CUDA, training on the CPU (TRL's bf16 default needs a GPU there; a recipe that
    says bf16: true gets CPU bf16 autocast)."""

    save_total_limit: int | None = 2
    # torch warns on every checkpointed layer unless use_reentrant is said explicitly
    gradient_checkpointing_kwargs: dict | str | None = field(
        default_factory=lambda: {"use_reentrant": False})

    def __post_init__(self):
        import torch

        if not torch.cuda.is_available():
            self.use_cpu = True
            if self.bf16 is None:
                self.bf16 = False
        super().__post_init__()


def parse_recipe(types: tuple, source: dict | list[str] | None = None, doc: str | None = None
                 ) -> tuple:
    """A recipe as the dataclasses `types` (TRL's, transformers' and ours), as TRL's own scripts
    and the alignment-handbook parse them: the YAML keys are the config fields themselves.

    source: None or argv (`--config recipe.yaml [--field value ...]`, the command line
    overriding the file), or a dict (tests, toy.py). A key no dataclass has is an error, never
    silently ignored.
    """
    from transformers import HfArgumentParser
    from trl import TrlParser

    try:
        if isinstance(source, dict):
            return HfArgumentParser(types).parse_dict(source, allow_extra_keys=False)
        parser = TrlParser(types, description=doc,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        return parser.parse_args_and_config(source)
    except ValueError as exc:  # unknown keys, bad values: say which, and stop
        names = ", ".join(t.__name__ for t in types)
        raise SystemExit(f"recipe error: {exc}\nA recipe's keys are the fields of {names} "
                         "(--help lists them).") from None


def recipe_dict(*configs) -> dict:
    """Every field of the parsed recipe, for the reports written beside a run."""
    out = {}
    for c in configs:
        out.update(c.to_dict() if hasattr(c, "to_dict") else dataclasses.asdict(c))
    return out


def model_init_kwargs(model) -> dict:
    """What TRL's scripts pass to from_pretrained from ModelConfig."""
    return {"revision": model.model_revision, "dtype": model.dtype,
            "attn_implementation": model.attn_implementation}


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
