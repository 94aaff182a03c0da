"""On-policy KTO (Numina's blog: "+ a few points"; no code was released).

    python training/kto.py --recipe training/recipes/deepseek-math-7b/kto.yaml

1. sample `samples_per_prompt` TIR completions per problem from the SFT model with aimo_lib's
   solver (real code execution; vLLM, transformers or an OpenAI-compatible server);
2. label each by answer correctness (desirable / undesirable);
3. train with TRL's KTOTrainer (the reference model is the frozen starting point);
4. report the implicit chosen/rejected rewards, to kto_report.json.
Sampling appends to <output_dir>/kto_data.jsonl and resumes.
"""

from __future__ import annotations

import os
import traceback

from common import load_tokenizer, prepare_model, recipe_from_argv, write_json

from aimo_lib import Solver, SolverConfig
from aimo_lib.answers import RULES
from aimo_lib.gateway import append_jsonl, read_jsonl
from aimo_lib.prompts import render_prompt


def label(answer: int | None, reference: int, rules) -> bool | None:
    """A sample's KTO label: desirable only when it gave the reference answer; None when the
    reference itself is no valid answer under `rules` (skip the problem: nothing to match)."""
    truth = rules.apply(reference)
    if truth is None:
        return None
    return answer is not None and answer == truth


def sample_completions(recipe: dict, model_path: str, problems, out_path: str) -> list[dict]:
    """KTO rows {"prompt", "completion", "label"} from the model's own SC-TIR samples."""
    from aimo_lib import engines
    from aimo_lib.sandbox import Sandbox

    done = {row["id"] for row in read_jsonl(out_path)}
    todo = [p for p in problems if p.id not in done]
    if todo:
        kind = recipe.get("engine", "auto")
        served = kind == "openai"
        engine = engines.build_engine(
            kind, recipe.get("served_model") if served else model_path,
            openai_urls=[recipe["openai_url"]] if served else [])
        solver_cfg = dict(recipe.get("solver", {}))
        preset = solver_cfg.pop("preset", "default")
        solver_cfg.setdefault("num_samples", recipe.get("samples_per_prompt", 4))
        cfg = SolverConfig.preset(preset, early_stop=None, competition="aimo3", **solver_cfg)
        rules = RULES["aimo3"]
        invalid = [p.id for p in todo if label(None, p.answer, rules) is None]
        if invalid:  # a negative or out-of-range reference would make every miss "desirable"
            print(f"[kto] {len(invalid)} problems skipped: their reference answer is not valid "
                  f"under the aimo3 rules ({', '.join(invalid[:5])}...)", flush=True)
            todo = [p for p in todo if p.id not in set(invalid)]
        from tqdm.auto import tqdm

        with Sandbox() as sandbox, engine:  # the engine is shut down before training starts
            solver = Solver(engine, sandbox, cfg)
            for p in tqdm(todo, desc="kto sampling"):
                try:
                    result = solver.solve(p.problem)
                    prompt = render_prompt(cfg.prompt_template, p.problem, engine)
                except Exception:  # one problem's failure is not the run's: record it, go on
                    error = traceback.format_exc()
                    print(f"[kto] {p.id}: sampling failed:\n{error}", flush=True)
                    append_jsonl(out_path + ".errors.jsonl", {"id": p.id, "error": error})
                    continue
                for s in result.samples:
                    if not s.text:
                        continue
                    append_jsonl(out_path, {"id": p.id, "prompt": prompt, "completion": s.text,
                                            "label": label(s.answer, p.answer, rules)})
    return read_jsonl(out_path)


def train(recipe: dict, rows: list[dict], model_path: str) -> dict:
    import datasets
    import torch
    from trl import KTOConfig, KTOTrainer

    labels = [r["label"] for r in rows]
    if all(labels) or not any(labels):
        raise SystemExit(f"KTO needs both correct and wrong completions; got {sum(labels)} "
                         f"correct of {len(labels)}")
    ds = datasets.Dataset.from_list([{k: r[k] for k in ("prompt", "completion", "label")}
                                     for r in rows])
    tokenizer = load_tokenizer(model_path, recipe.get("chat_template", "model"))
    n_good = sum(labels)
    args = KTOConfig(
        output_dir=recipe["output_dir"], seed=recipe.get("seed", 42), beta=recipe.get("beta", 0.1),
        # Balance desirable and undesirable examples, as the KTO paper advises.
        desirable_weight=1.0, undesirable_weight=n_good / (len(labels) - n_good),
        learning_rate=recipe.get("learning_rate", 5e-7),
        num_train_epochs=recipe.get("num_train_epochs", 1), max_steps=recipe.get("max_steps", -1),
        per_device_train_batch_size=recipe.get("per_device_train_batch_size", 4),
        gradient_accumulation_steps=recipe.get("gradient_accumulation_steps", 1),
        max_length=recipe.get("max_length", 2048), bf16=recipe.get("bf16", False),
        gradient_checkpointing=recipe.get("gradient_checkpointing", False),
        model_init_kwargs={"dtype": getattr(torch, recipe.get("dtype", "float32"))},
        logging_steps=1, report_to="none", use_cpu=not torch.cuda.is_available(),
        save_strategy="no")
    trainer = KTOTrainer(model=model_path, ref_model=None, args=args, train_dataset=ds,
                         processing_class=tokenizer)
    trainer.train()
    trainer.save_model(recipe["output_dir"])
    tokenizer.save_pretrained(recipe["output_dir"])
    logs = [h for h in trainer.state.log_history if any(k.startswith("rewards/") for k in h)]
    rewards = {k: v for h in logs for k, v in h.items() if k.startswith(("rewards/", "logps/"))}
    report = {"examples": len(rows), "desirable": n_good, "steps": trainer.state.global_step,
              "last_logged_rewards": rewards, "log_history": trainer.state.log_history}
    write_json(os.path.join(recipe["output_dir"], "kto_report.json"), report)
    return report


def main() -> None:
    recipe = recipe_from_argv(__doc__)
    from aimo_lib.evaluation import load_eval_dataset

    problems, skipped = load_eval_dataset(recipe["problems"], limit=recipe.get("max_problems"))
    model_path = prepare_model(recipe["model_name_or_path"], recipe.get("gguf_file"))
    os.makedirs(recipe["output_dir"], exist_ok=True)
    rows = sample_completions(recipe, model_path,
                              problems, os.path.join(recipe["output_dir"], "kto_data.jsonl"))
    report = train(recipe, rows, model_path)
    print(f"KTO: {report['examples']} examples ({report['desirable']} desirable), "
          f"{report['steps']} steps; implicit rewards {report['last_logged_rewards']}")


if __name__ == "__main__":
    main()
