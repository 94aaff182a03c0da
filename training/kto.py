"""On-policy KTO (Numina's blog: "+ a few points"; no code was released).

    python -m training.kto --config training/recipes/deepseek-math-7b/kto.yaml
    python -m training.kto --config ... --step sample        # on the inference machine
    accelerate launch --config_file training/deepspeed_zero3.yaml -m training.kto \
        --config ... --step train                              # ZeRO-3, like SFT

The recipe's keys are KTOConfig and ModelConfig fields plus SamplingArguments and
ChatArguments below (`--help` lists them; an unknown key is an error); `run:` holds the
sampling run's settings under the names the notebook uses (aimo_lib.config).

1. sample (`--step sample`): `num_samples` TIR completions per problem of `problems` (a
   problems.jsonl from build_problems.py) from the SFT model through aimo_lib's run loop (real
   code execution; vLLM, transformers or an OpenAI-compatible server; an engine that dies is
   restarted), each labelled by answer correctness; the rows go to
   <output_dir>/kto_data.jsonl, and an interrupted run resumes where it stopped;
2. train (`--step train`): TRL's KTOTrainer on those rows (the reference model is the frozen
   starting point), with fp32 master weights (load in float32, bf16 autocast: a bf16 AdamW
   step at lr 5e-7 changes about 1% of the weights), checkpoints every `save_steps` and resume;
   the implicit chosen/rejected rewards go to kto_report.json.
`--step all` (the default) samples in a child process, so the sampling engine's GPU memory is
free before the policy and the reference model load, then trains.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field

from trl import KTOConfig, ModelConfig

from aimo_lib.competitions import get_competition
from aimo_lib.config import RunConfig
from aimo_lib.records import read_jsonl
from aimo_lib.resolve import machine_probe, resolve
from aimo_lib.run import Job, Runner

from .common import (
    ChatArguments,
    MachineDefaults,
    load_tokenizer,
    model_init_kwargs,
    module_env,
    parse_recipe,
    prepare_model,
    recipe_dict,
    write_json,
)


@dataclass
class TrainConfig(MachineDefaults, KTOConfig):
    """KTOConfig with this project's defaults."""

    logging_steps: float = 1


@dataclass
class SamplingArguments:
    """The sampling step (ours): where the problems come from and how the model solves them."""

    problems: str | None = field(default=None, metadata={
        "help": "problems.jsonl (id, problem, integer answer) from build_problems.py"})
    max_problems: int | None = None
    concurrency: int = field(default=8, metadata={"help": "problems in flight at once"})
    run: dict | str = field(default_factory=dict, metadata={
        "help": "run settings by name, as the notebook takes them (aimo_lib.config: engine, "
                "openai_url, preset, num_samples, temperature, ...; YAML mapping). Defaults: "
                "the recipe's model, 4 samples per problem, early stop off, aimo3 rules"})
    step: str = field(default="all", metadata={
        "help": "all: sample in a child process (its GPU memory freed), then train",
        "choices": ["all", "sample", "train"]})

    def __post_init__(self):
        if isinstance(self.run, str):  # from the command line
            import yaml

            self.run = yaml.safe_load(self.run) or {}


RECIPE = (TrainConfig, ModelConfig, ChatArguments, SamplingArguments)


def label(answer: int | None, reference: int, rules) -> bool | None:
    """A sample's KTO label: desirable only when it gave the reference answer; None when the
    reference itself is no valid answer under `rules` (skip the problem: nothing to match)."""
    truth = rules.apply(reference)
    if truth is None:
        return None
    return answer is not None and answer == truth


def sampling_config(sampling: SamplingArguments, model_path: str) -> RunConfig:
    """The sampling run's settings: every completion kept (no early stop), 4 per problem, the
    recipe's model (a served one by its name), then the recipe's `run` settings."""
    served = sampling.run.get("engine") == "openai"
    defaults = {"model": None if served else model_path, "preset": "default",
                "num_samples": 4, "early_stop": "off", "competition": "aimo3"}
    return resolve(RunConfig.load(values={**defaults, **sampling.run}), machine_probe())


def sample_completions(sampling: SamplingArguments, model_path: str, problems, out_path: str
                       ) -> list[dict]:
    """KTO rows {"prompt", "completion", "label"} from the model's own SC-TIR samples: each
    problem's SolveResult is recorded in <out_path>.samples.jsonl (a rerun resumes there),
    and the rows are written from those records."""
    config = sampling_config(sampling, model_path)
    rules = get_competition(config.competition).rules
    invalid = {p.id for p in problems if label(None, p.answer, rules) is None}
    if invalid:  # a negative or out-of-range reference would make every miss "desirable"
        print(f"[kto] {len(invalid)} problems skipped: their reference answer is not valid "
              f"under the {config.competition} rules ({', '.join(sorted(invalid)[:5])}...)",
              flush=True)
    jobs = [Job(p.problem, p.id, record={"truth": p.answer}) for p in problems
            if p.id not in invalid]
    samples = out_path + ".samples.jsonl"
    with Runner(config, records=samples) as runner:  # shut down before training starts
        for job, outcome in runner.map(jobs, sampling.concurrency, desc="kto sampling"):
            if outcome.failed:  # recorded as failed: redone by the next run
                print(f"[kto] {job.id}: sampling failed:\n{outcome.error}", flush=True)
    latest = {r["id"]: r for r in read_jsonl(samples) if not r.get("failed")}
    rows = [{"id": r["id"], "prompt": r["result"]["prompt"], "completion": s["text"],
             "label": label(s["answer"], r["truth"], rules)}
            for r in latest.values() for s in r["result"]["samples"] if s["text"]]
    with open(out_path + ".tmp", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
    os.replace(out_path + ".tmp", out_path)
    return rows


def train(config: TrainConfig, model: ModelConfig, chat: ChatArguments, rows: list[dict],
          model_path: str) -> dict:
    import datasets
    from transformers.trainer_utils import get_last_checkpoint
    from trl import KTOTrainer

    labels = [r["label"] for r in rows]
    if all(labels) or not any(labels):
        raise SystemExit(f"KTO needs both correct and wrong completions; got {sum(labels)} "
                         f"correct of {len(labels)}")
    ds = datasets.Dataset.from_list([{k: r[k] for k in ("prompt", "completion", "label")}
                                     for r in rows])
    tokenizer = load_tokenizer(model_path, chat.chat_template)
    n_good = sum(labels)
    # Balance desirable and undesirable examples, as the KTO paper advises.
    config.desirable_weight, config.undesirable_weight = 1.0, n_good / (len(labels) - n_good)
    config.model_init_kwargs = model_init_kwargs(model)
    trainer = KTOTrainer(model=model_path, ref_model=None, args=config, train_dataset=ds,
                         processing_class=tokenizer)
    out = config.output_dir
    last = get_last_checkpoint(out) if os.path.isdir(out) else None
    trainer.train(resume_from_checkpoint=last)
    trainer.save_model(out)
    if trainer.is_world_process_zero():  # with the chat template it was trained on
        tokenizer.save_pretrained(out)
    logs = [h for h in trainer.state.log_history if any(k.startswith("rewards/") for k in h)]
    rewards = {k: v for h in logs for k, v in h.items() if k.startswith(("rewards/", "logps/"))}
    report = {"examples": len(rows), "desirable": n_good, "steps": trainer.state.global_step,
              "last_logged_rewards": rewards, "log_history": trainer.state.log_history,
              "recipe": recipe_dict(config, model, chat), "output_dir": out}
    if trainer.is_world_process_zero():
        write_json(os.path.join(out, "kto_report.json"), report)
    return report


def main(argv: list[str] | dict | None = None) -> dict | None:
    config, model, chat, sampling = parse_recipe(RECIPE, argv, __doc__)
    model_path = prepare_model(model.model_name_or_path, chat.gguf_file)
    os.makedirs(config.output_dir, exist_ok=True)
    data = os.path.join(config.output_dir, "kto_data.jsonl")
    if sampling.step == "all":  # argparse takes the last --step
        import subprocess

        args = sys.argv[1:] if argv is None else argv
        if isinstance(args, dict):
            raise SystemExit("--step all runs from the command line; call main() per step")
        subprocess.run([sys.executable, "-m", "training.kto", *args, "--step", "sample"],
                       check=True, env=module_env())
    elif sampling.step == "sample":
        from aimo_lib.evaluation import load_eval_dataset

        if not sampling.problems:
            raise SystemExit("the recipe names no problems file (build_problems.py writes one)")
        problems, skipped = load_eval_dataset(sampling.problems, limit=sampling.max_problems)
        rows = sample_completions(sampling, model_path, problems, data)
        print(f"KTO sampling: {len(rows)} rows in {data} ({len(skipped)} problems without an "
              "integer answer skipped)")
        return None
    report = train(config, model, chat, read_jsonl(data), model_path)
    print(f"KTO: {report['examples']} examples ({report['desirable']} desirable), "
          f"{report['steps']} steps; implicit rewards {report['last_logged_rewards']}")
    return report


if __name__ == "__main__":
    main()
