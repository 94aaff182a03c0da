"""Stage-1 (CoT) and stage-2 (TIR) supervised fine-tuning with TRL's SFTTrainer.

    python -m training.sft --config training/recipes/deepseek-math-7b/stage1-cot.yaml
    accelerate launch --config_file training/deepspeed_zero3.yaml -m training.sft \\
        --config training/recipes/deepseek-math-7b/stage2-tir.yaml
    python -m training.sft --config ... --max_steps 10 --output_dir runs/try

The recipe's keys are SFTConfig, ModelConfig and ScriptArguments fields (TRL's own names) plus
DataArguments and ChatArguments below; `--help` lists them all, and an unknown key is an error.
The dataset has a `messages` column (user problem, assistant solution). Packing into
`max_length` tokens with `packing_strategy` (ours defaults to "bfd_split", which loses no token;
the rows and tokens beyond the block are counted and logged); loss on every token as in the
seed, unless `completion_only_loss` (only the assistant's turn) or `mask_output_blocks` (not
the interpreter's ```output blocks). An eval split comes from `dataset_test_split` or
`eval_fraction` when `eval_strategy` is not "no". A rerun resumes from the last checkpoint in
output_dir. The checkpoint is saved with the chat template it was trained on, so aimo_lib
serves it in that format by default.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from trl import ModelConfig, ScriptArguments, SFTConfig

from aimo_lib.dialects import OUTPUT_FENCE

from .common import (
    ChatArguments,
    MachineDefaults,
    load_dataset_any,
    load_tokenizer,
    model_init_kwargs,
    parse_recipe,
    prepare_model,
    recipe_dict,
    write_json,
)

_OUTPUT_BLOCK = re.compile(re.escape(OUTPUT_FENCE) + r".*?```", re.DOTALL)

# TRL's "bfd" truncates a row longer than the block (rows of 1500, 300 and 700 tokens packed at
# 1024 keep 2024 of 2500 tokens); "bfd_split" splits it over blocks and loses nothing, like the
# seed's ConstantLengthDataset; "wrapped" loses nothing but ignores row boundaries.
PACKING = "bfd_split"


@dataclass
class TrainConfig(MachineDefaults, SFTConfig):
    """SFTConfig with the defaults this project wants (a recipe can still say otherwise)."""

    packing_strategy: str = field(default=PACKING, metadata={
        "help": "bfd_split (default: loses no token) | bfd (truncates rows over the block) | "
                "wrapped"})


@dataclass
class DataArguments:
    max_samples: int | None = field(default=None, metadata={"help": "first N rows only"})
    eval_fraction: float = field(default=0.0, metadata={
        "help": "hold out this seeded share of the training rows for evaluation (for a file "
                "dataset, which has no test split)"})
    mask_output_blocks: bool = field(default=False, metadata={
        "help": "no loss on the interpreter's ```output blocks"})


RECIPE = (ScriptArguments, TrainConfig, ModelConfig, ChatArguments, DataArguments)


def build_dataset(rows, tokenizer, completion_only: bool, mask_outputs: bool):
    if "messages" not in rows.column_names:
        raise SystemExit(f"the dataset needs a 'messages' column, has {rows.column_names}")
    if not (completion_only or mask_outputs):
        return rows.select_columns(["messages"])  # TRL renders the chat template itself

    def tokenize(row):
        text = tokenizer.apply_chat_template(row["messages"], tokenize=False)
        prompt = tokenizer.apply_chat_template(row["messages"][:-1], tokenize=False,
                                               add_generation_prompt=True)
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        spans = [m.span() for m in _OUTPUT_BLOCK.finditer(text)] if mask_outputs else []
        mask = []
        for start, end in enc["offset_mapping"]:
            keep = not (completion_only and end <= len(prompt))
            keep = keep and not any(s <= start and end <= e for s, e in spans)
            mask.append(int(keep))
        return {"input_ids": enc["input_ids"], "completion_mask": mask}

    return rows.map(tokenize, remove_columns=rows.column_names)


def load_splits(script: ScriptArguments, config: SFTConfig, data: DataArguments):
    """(train, eval or None) rows: eval from `eval_fraction` (seeded) or the test split."""
    if not script.dataset_name:
        raise SystemExit("the recipe names no dataset_name (a hub dataset or a .jsonl file)")
    train = load_dataset_any(script.dataset_name, script.dataset_train_split, data.max_samples)
    if config.eval_strategy == "no":
        return train, None
    if data.eval_fraction > 0:
        split = train.train_test_split(test_size=data.eval_fraction, seed=config.seed)
        return split["train"], split["test"]
    if os.path.exists(script.dataset_name):
        raise SystemExit(f"eval_strategy {config.eval_strategy!r} on a file dataset: set "
                         "eval_fraction (e.g. 0.02) to hold out part of it")
    return train, load_dataset_any(script.dataset_name, script.dataset_test_split,
                                   data.max_samples)


def overflow_report(dataset, tokenizer, block_size: int) -> dict:
    """How many rows, and tokens, lie beyond `block_size` (what truncation would drop)."""
    if "input_ids" in dataset.column_names:
        lengths = [len(ids) for ids in dataset["input_ids"]]
    else:
        texts = [tokenizer.apply_chat_template(m, tokenize=False) for m in dataset["messages"]]
        lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    over = [n - block_size for n in lengths if n > block_size]
    return {"rows": len(lengths), "block_size": block_size, "rows_over": len(over),
            "tokens_over": sum(over), "tokens": sum(lengths)}


def train(script: ScriptArguments, config: TrainConfig, model: ModelConfig,
          chat: ChatArguments, data: DataArguments) -> dict:
    from transformers.trainer_utils import get_last_checkpoint
    from trl import SFTTrainer

    model_path = prepare_model(model.model_name_or_path, chat.gguf_file)
    tokenizer = load_tokenizer(model_path, chat.chat_template)
    masked = bool(config.completion_only_loss) or data.mask_output_blocks
    train_rows, eval_rows = load_splits(script, config, data)
    train_set = build_dataset(train_rows, tokenizer, bool(config.completion_only_loss),
                              data.mask_output_blocks)
    eval_set = eval_rows and build_dataset(eval_rows, tokenizer,
                                           bool(config.completion_only_loss),
                                           data.mask_output_blocks)
    overflow = overflow_report(train_set, tokenizer, config.max_length)
    keeps = " keeps them" if config.packing_strategy != "bfd" else " drops those tokens"
    print(f"[sft] {overflow['rows_over']} of {overflow['rows']} rows exceed max_length "
          f"{overflow['block_size']} ({overflow['tokens_over']} tokens beyond it); packing "
          f"{config.packing_strategy!r}" + (keeps if config.packing else ""), flush=True)
    config.completion_only_loss = masked  # our masks arrive as completion_mask
    config.model_init_kwargs = model_init_kwargs(model)
    trainer = SFTTrainer(model=model_path, args=config, train_dataset=train_set,
                         eval_dataset=eval_set, processing_class=tokenizer)
    out = config.output_dir
    last = get_last_checkpoint(out) if os.path.isdir(out) else None
    result = trainer.train(resume_from_checkpoint=last)
    trainer.save_model(out)  # rank 0 writes (ZeRO-3 gathers the shards first)
    if trainer.is_world_process_zero():  # with the chat template it was trained on
        tokenizer.save_pretrained(out)
    logs = trainer.state.log_history
    plugin = getattr(trainer.accelerator.state, "deepspeed_plugin", None)
    report = {"recipe": recipe_dict(script, config, model, chat, data),
              "train_loss": result.training_loss, "losses": [h["loss"] for h in logs
                                                             if "loss" in h],
              "eval_losses": [h["eval_loss"] for h in logs if "eval_loss" in h],
              "steps": trainer.state.global_step, "resumed_from": last,
              "world_size": trainer.args.world_size, "overflow": overflow,
              "zero_stage": getattr(plugin, "zero_stage", None), "output_dir": out}
    if trainer.is_world_process_zero():
        write_json(os.path.join(out, "train_report.json"), report)
    return report


def main(argv: list[str] | dict | None = None) -> dict:
    report = train(*parse_recipe(RECIPE, argv, __doc__))
    print(f"trained {report['steps']} steps, final loss {report['losses'][-1:]}, saved to "
          f"{report['output_dir']}")
    return report


if __name__ == "__main__":
    main()
