"""8-bit GPTQ for Kaggle's T4s, in the standard GPTQ checkpoint format (vLLM and transformers
load it), with gptqmodel (the maintained successor of the auto-gptq the seed used; auto-gptq
no longer imports with current transformers).

    python training/quantize.py --recipe training/recipes/deepseek-math-7b/quantize.yaml

Calibration: `calibration_samples` rows of the TIR training data, shuffled with `seed` first
(as Numina did), rendered through the chat template and tokenised without adding special
tokens (the rendered text already starts with the template's BOS). float16 throughout (T4
has no bfloat16). On 2 CPU cores set GPTQMODEL_CPU_WORKERS=2.
"""

from __future__ import annotations

import os

from common import load_dataset_any, load_tokenizer, prepare_model, recipe_from_argv, write_json


def calibration_rows(recipe: dict, tokenizer) -> list[dict]:
    """Token ids (one BOS, the template's) of a seeded random sample of the training data."""
    ds = load_dataset_any(recipe["calibration_dataset"], "train")
    ds = ds.shuffle(seed=recipe.get("seed", 42))
    ds = ds.select(range(min(recipe.get("calibration_samples", 256), len(ds))))
    texts = [tokenizer.apply_chat_template(row["messages"], tokenize=False) for row in ds]
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return [{"input_ids": row, "attention_mask": [1] * len(row)} for row in ids]


def quantize(recipe: dict) -> str:
    import torch
    from gptqmodel import GPTQModel, QuantizeConfig

    model_path = prepare_model(recipe["model_name_or_path"], recipe.get("gguf_file"))
    tokenizer = load_tokenizer(model_path, recipe.get("chat_template", "model"))
    rows = calibration_rows(recipe, tokenizer)
    group_size, desc_act = recipe.get("group_size", 128), recipe.get("desc_act", False)
    if desc_act and group_size != -1:
        raise SystemExit(
            "desc_act: true with grouped quantization (group_size != -1) writes a checkpoint that "
            "vLLM refuses to load ('GPTQ group activation ordering (desc_act=True) is no longer "
            "supported', vLLM 0.32/0.33). Use desc_act: false with act_group_aware: true (static "
            "activation ordering: the accuracy of act-order at no cost when serving).")
    config = QuantizeConfig(bits=recipe.get("bits", 8), group_size=group_size, desc_act=desc_act,
                            act_group_aware=recipe.get("act_group_aware", True))
    model = GPTQModel.load(model_path, config, dtype=torch.float16)
    model.quantize(rows, batch_size=recipe.get("batch_size", 4), tokenizer=tokenizer)
    out = recipe["output_dir"]
    model.save(out)
    tokenizer.save_pretrained(out)
    write_json(os.path.join(out, "quantize_recipe.json"), recipe)
    return out


def main() -> None:
    print(f"saved {quantize(recipe_from_argv(__doc__))}")


if __name__ == "__main__":
    main()
