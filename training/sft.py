"""Stage-1 (CoT) and stage-2 (TIR) supervised fine-tuning with TRL's SFTTrainer.

    python training/sft.py --recipe training/recipes/deepseek-math-7b/stage1-cot.yaml
    accelerate launch --config_file training/deepspeed_zero3.yaml training/sft.py \\
        --recipe training/recipes/deepseek-math-7b/stage2-tir.yaml
    python training/sft.py --recipe ... --set max_steps=10 --set output_dir=runs/try

The dataset has a `messages` column (user problem, assistant solution). Packing into
`block_size` tokens with `packing_strategy` (default "bfd_split", which loses no token; the
rows and tokens beyond the block are counted and logged); loss on every token as in the seed, unless
`completion_only_loss` (only the assistant's turn) or `mask_output_blocks` (not the
interpreter's ```output blocks). A rerun resumes from the last checkpoint in output_dir.
"""

from __future__ import annotations

import os
import re

from common import load_dataset_any, load_tokenizer, prepare_model, recipe_from_argv, write_json

_OUTPUT_BLOCK = re.compile(r"```output\n.*?```", re.DOTALL)


def build_dataset(recipe: dict, tokenizer):
    ds = load_dataset_any(recipe["dataset"], recipe.get("dataset_split", "train"),
                          recipe.get("max_samples"))
    if "messages" not in ds.column_names:
        raise SystemExit(f"{recipe['dataset']}: needs a 'messages' column, has "
                         f"{ds.column_names}")
    completion_only = recipe.get("completion_only_loss", False)
    mask_outputs = recipe.get("mask_output_blocks", False)
    if not (completion_only or mask_outputs):
        return ds.select_columns(["messages"])  # TRL renders the chat template itself

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

    return ds.map(tokenize, remove_columns=ds.column_names)


# TRL's "bfd" truncates a row longer than the block (rows of 1500, 300 and 700 tokens packed at
# 1024 keep 2024 of 2500 tokens); "bfd_split" splits it over blocks and loses nothing, like the
# seed's ConstantLengthDataset; "wrapped" loses nothing but ignores row boundaries.
PACKING = "bfd_split"


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


def train(recipe: dict) -> dict:
    import torch
    from transformers.trainer_utils import get_last_checkpoint
    from trl import SFTConfig, SFTTrainer

    model_path = prepare_model(recipe["model_name_or_path"], recipe.get("gguf_file"))
    tokenizer = load_tokenizer(model_path, recipe.get("chat_template", "model"))
    dataset = build_dataset(recipe, tokenizer)
    overflow = overflow_report(dataset, tokenizer, recipe.get("block_size", 1024))
    print(f"[sft] {overflow['rows_over']} of {overflow['rows']} rows exceed block_size "
          f"{overflow['block_size']} ({overflow['tokens_over']} tokens beyond it); packing "
          f"{recipe.get('packing_strategy', PACKING)!r}"
          + (" keeps them" if recipe.get("packing_strategy", PACKING) != "bfd" else
             " drops those tokens"), flush=True)
    out = recipe["output_dir"]
    masked = recipe.get("completion_only_loss", False) or recipe.get("mask_output_blocks", False)
    args = SFTConfig(
        output_dir=out, seed=recipe.get("seed", 42),
        num_train_epochs=recipe.get("num_train_epochs", 1), max_steps=recipe.get("max_steps", -1),
        learning_rate=recipe.get("learning_rate", 2e-5),
        lr_scheduler_type=recipe.get("lr_scheduler_type", "cosine"),
        warmup_steps=recipe.get("warmup_ratio", 0.0),  # a float below 1 is a ratio
        per_device_train_batch_size=recipe.get("per_device_train_batch_size", 4),
        gradient_accumulation_steps=recipe.get("gradient_accumulation_steps", 1),
        max_length=recipe.get("block_size", 1024), packing=recipe.get("packing", True),
        packing_strategy=recipe.get("packing_strategy", PACKING), completion_only_loss=masked,
        # TRL defaults to bf16 and gradient checkpointing: say what the recipe wants.
        bf16=recipe.get("bf16", False), gradient_checkpointing=recipe.get(
            "gradient_checkpointing", False),
        # torch warns on every checkpointed layer unless use_reentrant is said explicitly
        gradient_checkpointing_kwargs={"use_reentrant": False},
        model_init_kwargs={"dtype": getattr(torch, recipe.get("dtype", "float32"))},
        logging_steps=recipe.get("logging_steps", 10), save_strategy="steps",
        save_steps=recipe.get("save_steps", 500), save_total_limit=2,
        report_to=recipe.get("report_to", "none"), ddp_backend=recipe.get("ddp_backend"),
        use_cpu=not torch.cuda.is_available(), optim=recipe.get("optim", "adamw_torch"))
    trainer = SFTTrainer(model=model_path, args=args, train_dataset=dataset,
                         processing_class=tokenizer)
    last = get_last_checkpoint(out) if os.path.isdir(out) else None
    result = trainer.train(resume_from_checkpoint=last)
    trainer.save_model(out)  # rank 0 writes (ZeRO-3 gathers the shards first)
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(out)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    plugin = getattr(trainer.accelerator.state, "deepspeed_plugin", None)
    report = {"recipe": recipe, "train_loss": result.training_loss, "losses": losses,
              "steps": trainer.state.global_step, "resumed_from": last,
              "world_size": trainer.args.world_size, "overflow": overflow,
              "zero_stage": getattr(plugin, "zero_stage", None)}
    if trainer.is_world_process_zero():
        write_json(os.path.join(out, "train_report.json"), report)
    return report


def main() -> None:
    report = train(recipe_from_argv(__doc__))
    print(f"trained {report['steps']} steps, final loss {report['losses'][-1:]}, saved to "
          f"{report['recipe']['output_dir']}")


if __name__ == "__main__":
    main()
