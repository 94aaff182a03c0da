"""On-policy KTO (Numina's blog: "+ a few points"; no code was released).

    python training/kto.py --recipe training/recipes/deepseek-math-7b/kto.yaml
    python training/kto.py --recipe ... --step sample        # on the inference machine
    accelerate launch --config_file training/deepspeed_zero3.yaml training/kto.py \
        --recipe ... --step train                              # ZeRO-3, like SFT

1. sample (`--step sample`): `samples_per_prompt` TIR completions per problem of `problems`
   (a problems.jsonl from build_problems.py) from the SFT model with aimo_lib's solver (real
   code execution; vLLM, transformers or an OpenAI-compatible server), each labelled by answer
   correctness; appended to <output_dir>/kto_data.jsonl, resumed if interrupted;
2. train (`--step train`): TRL's KTOTrainer on those rows (the reference model is the frozen
   starting point), with fp32 master weights (load in float32, bf16 autocast: a bf16 AdamW
   step at lr 5e-7 changes about 1% of the weights), checkpoints every `save_steps` and resume;
   the implicit chosen/rejected rewards go to kto_report.json.
`--step all` (the default) samples in a child process, so the sampling engine's GPU memory is
free before the policy and the reference model load, then trains.
"""

from __future__ import annotations

import os
import traceback

from common import in_flight, load_recipe, load_tokenizer, prepare_model, recipe_parser, write_json

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
    rules = RULES["aimo3"]
    invalid = {p.id for p in todo if label(None, p.answer, rules) is None}
    if invalid:  # a negative or out-of-range reference would make every miss "desirable"
        print(f"[kto] {len(invalid)} problems skipped: their reference answer is not valid "
              f"under the aimo3 rules ({', '.join(sorted(invalid)[:5])}...)", flush=True)
        todo = [p for p in todo if p.id not in invalid]
    if todo:  # no engine is built when there is nothing to sample
        kind = recipe.get("engine", "auto")
        served = kind == "openai"
        engine = engines.build_engine(
            kind, recipe.get("served_model") if served else model_path,
            openai_urls=[recipe["openai_url"]] if served else [])
        solver_cfg = dict(recipe.get("solver", {}))
        preset = solver_cfg.pop("preset", "default")
        solver_cfg.setdefault("num_samples", recipe.get("samples_per_prompt", 4))
        cfg = SolverConfig.preset(preset, early_stop=None, competition="aimo3", **solver_cfg)
        with Sandbox() as sandbox, engine:  # the engine is shut down before training starts
            def one(p):  # a solver per problem: concurrent solves share no state
                return (Solver(engine, sandbox, cfg).solve(p.problem),
                        render_prompt(cfg.prompt_template, p.problem, engine))

            for p, future in in_flight(todo, one, recipe.get("concurrency", 8), "kto sampling"):
                try:
                    result, prompt = future.result()
                except Exception:  # one problem's failure is not the run's: record it, go on
                    error = traceback.format_exc()
                    print(f"[kto] {p.id}: sampling failed:\n{error}", flush=True)
                    append_jsonl(out_path + ".errors.jsonl", {"id": p.id, "error": error})
                    continue
                for s in result.samples:
                    if s.text:
                        append_jsonl(out_path, {"id": p.id, "prompt": prompt,
                                                "completion": s.text,
                                                "label": label(s.answer, p.answer, rules)})
    return read_jsonl(out_path)


def train(recipe: dict, rows: list[dict], model_path: str) -> dict:
    import datasets
    import torch
    from transformers.trainer_utils import get_last_checkpoint
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
        gradient_checkpointing_kwargs={"use_reentrant": False},
        model_init_kwargs={"dtype": getattr(torch, recipe.get("dtype", "float32"))},
        logging_steps=recipe.get("logging_steps", 1), report_to=recipe.get("report_to", "none"),
        use_cpu=not torch.cuda.is_available(), ddp_backend=recipe.get("ddp_backend"),
        save_strategy="steps", save_steps=recipe.get("save_steps", 500), save_total_limit=2)
    trainer = KTOTrainer(model=model_path, ref_model=None, args=args, train_dataset=ds,
                         processing_class=tokenizer)
    out = recipe["output_dir"]
    last = get_last_checkpoint(out) if os.path.isdir(out) else None
    trainer.train(resume_from_checkpoint=last)
    trainer.save_model(recipe["output_dir"])
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(recipe["output_dir"])
    logs = [h for h in trainer.state.log_history if any(k.startswith("rewards/") for k in h)]
    rewards = {k: v for h in logs for k, v in h.items() if k.startswith(("rewards/", "logps/"))}
    report = {"examples": len(rows), "desirable": n_good, "steps": trainer.state.global_step,
              "last_logged_rewards": rewards, "log_history": trainer.state.log_history}
    write_json(os.path.join(recipe["output_dir"], "kto_report.json"), report)
    return report


def main() -> None:
    ap = recipe_parser(__doc__)
    ap.add_argument("--step", choices=["all", "sample", "train"], default="all",
                    help="all: sample in a child process (its GPU memory freed), then train")
    args = ap.parse_args()
    recipe = load_recipe(args.recipe, args.set)
    model_path = prepare_model(recipe["model_name_or_path"], recipe.get("gguf_file"))
    os.makedirs(recipe["output_dir"], exist_ok=True)
    data = os.path.join(recipe["output_dir"], "kto_data.jsonl")
    if args.step == "all":
        import subprocess
        import sys

        subprocess.run([sys.executable, os.path.abspath(__file__), "--recipe", args.recipe,
                        *(f"--set={x}" for x in args.set), "--step", "sample"], check=True)
    elif args.step == "sample":
        from aimo_lib.evaluation import load_eval_dataset

        problems, skipped = load_eval_dataset(recipe["problems"],
                                              limit=recipe.get("max_problems"))
        rows = sample_completions(recipe, model_path, problems, data)
        print(f"KTO sampling: {len(rows)} rows in {data} ({len(skipped)} problems without an "
              "integer answer skipped)")
        return
    report = train(recipe, read_jsonl(data), model_path)
    print(f"KTO: {report['examples']} examples ({report['desirable']} desirable), "
          f"{report['steps']} steps; implicit rewards {report['last_logged_rewards']}")


if __name__ == "__main__":
    main()
