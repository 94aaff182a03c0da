"""8-bit GPTQ for Kaggle's T4s, in the standard GPTQ checkpoint format (vLLM and transformers
load it), with gptqmodel (the maintained successor of the auto-gptq the seed used; auto-gptq
no longer imports with current transformers).

    python -m training.quantize --config training/recipes/deepseek-math-7b/quantize.yaml

Calibration: `calibration_samples` rows of the TIR training data, shuffled with `seed` first
(as Numina did), rendered through the chat template and tokenised without adding special
tokens (the rendered text already starts with the template's BOS). float16 throughout (T4
has no bfloat16). On 2 CPU cores set GPTQMODEL_CPU_WORKERS=2.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from .common import (
    ChatArguments,
    load_dataset_any,
    load_tokenizer,
    parse_recipe,
    prepare_model,
    recipe_dict,
    write_json,
)


@dataclass
class GPTQArguments:
    model_name_or_path: str = field(metadata={"help": "the checkpoint to quantise"})
    output_dir: str = field(metadata={"help": "where the GPTQ checkpoint is written"})
    calibration_dataset: str = field(default="AI-MO/NuminaMath-TIR", metadata={
        "help": "messages rows (hub name or .jsonl) rendered through the chat template"})
    calibration_samples: int = 256
    bits: int = field(default=8, metadata={"help": "8 for Kaggle's T4s; vLLM on CPU: 4 only"})
    group_size: int = 128
    desc_act: bool = field(default=False, metadata={
        "help": "dynamic act-order: vLLM refuses it with groups; see act_group_aware"})
    act_group_aware: bool = field(default=True, metadata={"help": "static act-order"})
    batch_size: int = 4
    seed: int = 42


RECIPE = (GPTQArguments, ChatArguments)


def calibration_rows(gptq: GPTQArguments, tokenizer) -> list[dict]:
    """Token ids (one BOS, the template's) of a seeded random sample of the training data."""
    ds = load_dataset_any(gptq.calibration_dataset, "train")
    ds = ds.shuffle(seed=gptq.seed)
    ds = ds.select(range(min(gptq.calibration_samples, len(ds))))
    texts = [tokenizer.apply_chat_template(row["messages"], tokenize=False) for row in ds]
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return [{"input_ids": row, "attention_mask": [1] * len(row)} for row in ids]


def quantize(gptq: GPTQArguments, chat: ChatArguments) -> str:
    import torch
    from gptqmodel import GPTQModel, QuantizeConfig

    model_path = prepare_model(gptq.model_name_or_path, chat.gguf_file)
    tokenizer = load_tokenizer(model_path, chat.chat_template)
    rows = calibration_rows(gptq, tokenizer)
    if gptq.desc_act and gptq.group_size != -1:
        raise SystemExit(
            "desc_act: true with grouped quantization (group_size != -1) writes a checkpoint that "
            "vLLM refuses to load ('GPTQ group activation ordering (desc_act=True) is no longer "
            "supported', vLLM 0.32/0.33). Use desc_act: false with act_group_aware: true (static "
            "activation ordering: the accuracy of act-order at no cost when serving).")
    config = QuantizeConfig(bits=gptq.bits, group_size=gptq.group_size, desc_act=gptq.desc_act,
                            act_group_aware=gptq.act_group_aware)
    model = GPTQModel.load(model_path, config, dtype=torch.float16)
    model.quantize(rows, batch_size=gptq.batch_size, tokenizer=tokenizer)
    out = gptq.output_dir
    model.save(out)
    tokenizer.save_pretrained(out)  # with the chat template the model was trained on
    write_json(os.path.join(out, "quantize_recipe.json"), recipe_dict(gptq, chat))
    return out


def main(argv: list[str] | dict | None = None) -> str:
    out = quantize(*parse_recipe(RECIPE, argv, __doc__))
    print(f"saved {out}")
    return out


if __name__ == "__main__":
    main()
