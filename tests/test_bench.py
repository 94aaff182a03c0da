"""The benchmark model's builder, its held-out set, and the benchmarks that use it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench import _stats
from bench import model as bench_model
from bench import stopping as bench_stopping

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # bench runs from here


def test_the_shipped_heldout_set_is_what_the_builder_writes(tmp_path):
    path = bench_model.write_heldout(str(tmp_path / "heldout.jsonl"))
    with open(path) as a, open(bench_model.HELDOUT) as b:
        assert a.read() == b.read(), "bench/data/toy_heldout.jsonl is stale: python " \
                                     "-m bench.model --heldout"
    problems = bench_model.load_heldout()
    kinds = bench_model.template_of()
    assert len(problems) >= 48 and len({p.problem for p in problems}) == len(problems)
    assert sum(k == "seen" for k in kinds.values()) == sum(k == "unseen" for k in kinds.values())
    # none is a training problem: the model never saw these texts
    from training import toy

    train = {p.problem for p, _ in toy.instances(120, seed=bench_model.TRAIN_SEED)}
    assert not train & {p.problem for p in problems}
    quick = bench_model.load_heldout(limit=4)
    assert [kinds[p.id] for p in quick] == ["seen", "seen", "unseen", "unseen"]


def test_an_unbuilt_model_says_how_to_build_it(tmp_path, monkeypatch):
    monkeypatch.setenv("AIMO_CACHE", str(tmp_path))
    with pytest.raises(bench_model.ModelNotBuiltError, match="python -m bench.model"):
        bench_model.benchmark_model()
    assert bench_model.model_path().startswith(str(tmp_path / "models"))


def test_wilson_and_bootstrap_intervals():
    lo, hi = _stats.wilson(48, 48)
    assert hi == pytest.approx(1.0) and 0.92 < lo < 0.93  # 48 of 48 still allows ~7.4% wrong
    lo, hi = _stats.wilson(0, 10)
    assert lo == 0.0 and 0.27 < hi < 0.28
    assert _stats.mean_ci([1.0] * 10) == (1.0, 1.0)
    lo, hi = _stats.ratio_ci([2.0, 4.0, 6.0], [1.0, 2.0, 3.0])
    assert lo == hi == pytest.approx(2.0)  # a constant ratio has no spread


def test_the_bench_plots_draw(tmp_path):
    pytest.importorskip("matplotlib")
    from bench.plots import plot_presets, plot_stopping

    assert plot_stopping([{"label": "table", "tokens_saved": 30.0, "agreement": 99.5,
                           "agreement_ci": (98.0, 99.9), "group": "parallel"}],
                         str(tmp_path / "s.png"), "stopping")
    assert plot_presets([{"label": "default", "accuracy": 75.0, "tokens": 312,
                          "accuracy_ci": (60.0, 85.0), "seconds": 1.2}],
                        str(tmp_path / "p.png"), "presets")
    assert os.path.getsize(tmp_path / "s.png") > 0 and os.path.getsize(tmp_path / "p.png") > 0


def synthetic_row(pid: str, answers: list, truth: int, entropy: float = 0.2) -> dict:
    return {"id": pid, "seed": 0, "truth": truth, "answer": None,
            "samples": [{"answer": a, "tokens": 40 + 3 * i, "wave": 0, "status": "answered",
                         "code_ok": True, "entropies": [entropy + 0.01 * i] * (40 + 3 * i)}
                        for i, a in enumerate(answers)]}


def test_the_stopping_replay_scores_rules_on_recorded_streams():
    rows = [synthetic_row("easy", [5] * 8, 5), synthetic_row("split", [1, 2, 1, 2, 3, 1, 2, 1],
                                                              1, entropy=1.0)]
    rule = lambda kind: lambda k, order: (bench_stopping.StopRule(kind), None)  # noqa: E731
    table = bench_stopping.score(rows, rule("table"), 8, None)
    unbeatable = bench_stopping.score(rows, rule("unbeatable"), 8, None)
    assert unbeatable["agreement"] == 100.0  # stopping only when nothing can change
    assert 0 < table["tokens_saved"] < 100 and table["full_accuracy"] == 100.0
    one = bench_stopping.score(rows, rule("beta"), 8, 1)
    assert one["samples_saved"] > 0  # on the easy problem it stops after 4 of 8
    assert bench_stopping.auroc([0.1, 0.2], [0.5, 0.6]) == 1.0
    assert bench_stopping.auroc([0.5], [0.5]) == 0.5
    assert bench_stopping.max_window_entropy([0.0, 1.0, 1.0, 0.0], 2) == 1.0


def test_the_stopping_bench_replays_a_recorded_folder(tmp_path):
    rows = [synthetic_row(f"p{i}", [i % 3] * 6 + [9, 9], i % 3) for i in range(6)]
    with open(tmp_path / "streams.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    r = subprocess.run([sys.executable, "-m", "bench.stopping", "--replay-only", "--out",
                        str(tmp_path)], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "## stopping rules" in r.stdout and "table 4/4, 5/7, 6/9" in r.stdout
    assert (tmp_path / "stopping.json").exists()


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A benchmark model built with 2 steps per stage on 16 problems (minutes, not 20)."""
    cache = tmp_path_factory.mktemp("cache")
    env = {**os.environ, "AIMO_CACHE": str(cache)}
    r = subprocess.run([sys.executable, "-m", "bench.model", "--train", "16", "--max-steps", "2"],
                       capture_output=True, text=True, timeout=1200, env=env, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout.strip().splitlines()[-1], env


# The build is bounded (16 problems, 2 steps a stage): 220 s at load 4, past 300 s at load 6,
# so these two get the time that bounded work needs on a busy machine.
@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_the_benchmark_model_builds_and_is_cached(tiny_model):
    path, env = tiny_model
    manifest = json.load(open(os.path.join(path, "build.json")))
    assert manifest["stage1"]["steps"] == manifest["stage2"]["steps"] == 2
    assert manifest["tir_data"]["kept"] > 0 and manifest["sft_seed"] == 42
    assert {"cot.jsonl", "tir.jsonl", "model.safetensors"} <= set(manifest["sha256"])
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        assert os.path.exists(os.path.join(path, name)), name
    # a second call finds it in the cache: nothing is trained again
    r = subprocess.run([sys.executable, "-m", "bench.model", "--train", "16", "--max-steps", "2"],
                       capture_output=True, text=True, timeout=120, env=env, cwd=REPO)
    assert r.returncode == 0 and r.stdout.strip().splitlines()[-1] == path
    assert "[sft]" not in r.stdout + r.stderr


@pytest.mark.slow
@pytest.mark.vllm
@pytest.mark.timeout(1200)
def test_presets_bench_quick_runs_on_one_engine(tiny_model, tmp_path):
    pytest.importorskip("vllm")
    path, env = tiny_model
    out = tmp_path / "presets"
    r = subprocess.run([sys.executable, "-m", "bench.presets", "--quick",
                        "--problems", "2", "--num-samples", "2", "--max-new-tokens", "32",
                        "--model", path, "--out", str(out)], capture_output=True, text=True,
                       timeout=1200, env=env, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    last = r.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"speedup \d+\.\d\dx at accuracy \d+\.\d% vs \d+\.\d%", last), last
    result = json.load(open(out / "presets.json"))
    arms = ["numina_aimo1", "default", "aimo3_style", "two_waves"]
    assert [row["arm"] for row in result["table"]] == arms
    for arm in arms:  # each arm an aimo eval folder
        assert (out / arm / "summary.json").exists() and (out / arm / "config.json").exists()


def test_the_harmony_arms_differ_in_decoding_only():
    """bench.presets --model harmony: every arm sends a prompt the harmony model was trained
    on, at the N and tokens given, under AIMO 3's rules: the decoding arms the AIMO 3 preset's
    prompt (so they compare decoding, not prompts), the plain-prompt arm the preset without its
    two prompt options and nothing else changed (the recipe trains on that prompt too); the
    stop_at_boxed arm is the AIMO 3 preset with the stream cut alone."""
    from dataclasses import replace

    from aimo_lib.dialects import get_dialect
    from aimo_lib.solver import first_prompt
    from bench import harmony_model, presets

    arms = presets.harmony_arm_configs(8, 96, presets.HARMONY_ARMS + presets.HARMONY_EXTRA_ARMS)
    assert list(arms) == [*presets.HARMONY_ARMS, "aimo3_plain_prompt"]
    trained_on = harmony_model.cpu_config()
    expected = first_prompt(trained_on, get_dialect("harmony", "low"), "What is 6 * 7?", None)
    plain = replace(trained_on, state_answer_rules=False, check_before_boxing=False)
    expected_plain = first_prompt(plain, get_dialect("harmony", "low"), "What is 6 * 7?", None)
    assert expected_plain != expected
    for arm, cfg in arms.items():
        assert (cfg.num_samples, cfg.max_new_tokens, cfg.competition) == (8, 96, "aimo3")
        prompt = first_prompt(cfg, get_dialect(cfg.dialect, cfg.reasoning_effort),
                              "What is 6 * 7?", None)
        assert prompt == (expected_plain if arm == "aimo3_plain_prompt" else expected), arm
    assert arms["aimo3_plain_prompt"] == replace(arms["aimo3_gpt_oss"], state_answer_rules=False,
                                                 check_before_boxing=False)
    assert arms["aimo3_stop_at_boxed"] == replace(arms["aimo3_gpt_oss"], stop_at_boxed=True)
    assert arms["default"].vote_weights != arms["aimo3_gpt_oss"].vote_weights


def test_the_plain_prompt_arm_runs_on_the_build_trained_on_both_prompts(monkeypatch):
    """The shipped harmony model was trained on the preset's prompt alone: an arm that changes
    the prompt is served the build trained on both (plain_prompt_share 0.5), every arm of that
    run alike; a run of decoding arms gets the shipped build."""
    from bench import harmony_model, presets

    asked = []
    monkeypatch.setattr(harmony_model, "build", lambda **kw: asked.append(kw) or "folder")
    presets.resolve_model("harmony", presets.HARMONY_ARMS)
    presets.resolve_model("harmony", ("aimo3_gpt_oss", "aimo3_plain_prompt"))
    assert asked == [{"plain_prompt_share": None},
                     {"plain_prompt_share": harmony_model.BOTH_PROMPTS}]
    # the shipped recipe trains on the preset's prompt alone; saying so names the same build
    assert harmony_model._recipe() == harmony_model._recipe(plain_prompt_share=0.0)
    both = harmony_model._recipe(plain_prompt_share=harmony_model.BOTH_PROMPTS)
    assert harmony_model.model_path(both) != harmony_model.model_path()


@pytest.mark.parametrize("share", ["1.5", "-0.1", "nan"])
def test_a_hostile_plain_prompt_share_is_refused_before_any_build_work(share, capsys,
                                                                       monkeypatch, tmp_path):
    from bench import harmony_model

    monkeypatch.setenv("AIMO_CACHE", str(tmp_path))
    monkeypatch.setattr(harmony_model, "build", lambda *a, **k: pytest.fail("build started"))
    with pytest.raises(SystemExit):
        harmony_model.main(["--plain-prompt-share", share])
    assert "--plain-prompt-share" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_the_harmony_model_trains_exactly_what_it_saves():
    """The harmony model is trained over the data's tokens plus one "other" row (Compact) and
    with the shared system prompt computed once a step: the saved full-vocabulary model's
    softmax is the trained one, and the shared prefix changes no loss."""
    torch = pytest.importorskip("torch")
    from transformers import GptOssConfig, GptOssForCausalLM

    from bench import harmony_model as hm

    examples = [([5, 9, 2, 7, hm.PAD], [False, False, True, True, True]), ([5, 9, 3], [0, 0, 1])]
    compact = hm.Compact(examples, full_vocab=200_000)
    weight = torch.randn(compact.other + 1, 8, dtype=torch.float64)
    hidden = torch.randn(4, 8, dtype=torch.float64)
    trained = torch.log_softmax(hidden @ weight.T + torch.nn.functional.pad(
        torch.zeros(compact.other, dtype=torch.float64), (0, 1), value=compact.other_bias), -1)
    full = torch.log_softmax(hidden @ compact.expand(weight).T, -1)
    assert torch.allclose(full[:, compact.ids], trained[:, :-1], atol=1e-9)
    unused = torch.ones(200_000, dtype=torch.bool)
    unused[compact.ids] = False
    assert torch.allclose(full[:, unused].logsumexp(-1), trained[:, -1], atol=1e-9)

    torch.manual_seed(0)
    model = GptOssForCausalLM(GptOssConfig(
        vocab_size=40, hidden_size=16, intermediate_size=16, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=8, num_local_experts=2,
        num_experts_per_tok=1, sliding_window=4,
        layer_types=["sliding_attention", "full_attention"], pad_token_id=0)).eval()
    model.other_bias = 3.0
    rows = [([1] * 7 + [int(x) for x in torch.randint(2, 39, (n,))], [False] * 7 + [True] * n)
            for n in (3, 6, 5)]
    n = hm._prefix_len(rows)
    assert n == 7
    with torch.no_grad():
        whole = hm._loss(model, *hm._batch(rows, pad=0))
        shared = hm._loss(model, *hm._batch(rows, pad=0, skip=n), prefix=torch.tensor([[1] * n]))
    assert torch.allclose(whole, shared, atol=1e-5)


def test_a_share_of_the_harmony_solutions_is_trained_under_the_plain_prompt(tmp_path):
    """The recipe's plain_prompt_share of the solutions is trained under the AIMO 3 prompt
    without its answer rules and check-before-boxing list, drawn per solution from the seed;
    the problem and the trained-on tokens (the model's messages) are the same either way."""
    import json

    from aimo_lib.competitions import get_competition
    from aimo_lib.prompts import CHECK_BEFORE_BOXING
    from bench import harmony_model as hm

    class Chars:  # a tokenizer of one token a character: the prompts stay readable
        def encode(self, text, add_special_tokens=False):
            return [ord(c) for c in text]

    path = tmp_path / "tir.jsonl"
    tool = "<|start|>python to=assistant<|channel|>analysis<|message|>4<|end|><|start|>assistant"
    with open(path, "w") as f:
        for i in range(200):
            text = f"<|channel|>analysis<|message|>go<|call|>{tool}<|message|>\\boxed{{{i}}}"
            f.write(json.dumps({"id": f"toy-{i}", "messages": [
                {"role": "user", "content": f"What is {i} + 0?"},
                {"role": "assistant", "content": text}]}) + "\n")
    cfg = hm.cpu_config()
    rules = get_competition(cfg.competition).answer_instruction

    def prompts(share, seed=0):
        out = []
        for ids, mask in hm._examples(str(path), Chars(), cfg, share, seed):
            text = "".join(map(chr, ids))
            own = "".join(chr(t) for t, m in zip(ids, mask, strict=True) if m)
            out.append((rules in text, CHECK_BEFORE_BOXING in text, own))
        return out

    assert all(r and c for r, c, _ in prompts(0.0)) and not any(r or c for r, c, _ in prompts(1.0))
    half = prompts(0.5)
    assert 70 <= sum(r for r, _, _ in half) <= 130 and all(r == c for r, c, _ in half)
    assert [o for *_, o in half] == [o for *_, o in prompts(0.0)]  # the same trained-on tokens
    assert half == prompts(0.5) and half != prompts(0.5, seed=1)


_HOSTILE = [None, "x", [], {}, -1, float("nan"), True]


@given(st.data())
@settings(max_examples=60, deadline=None)
def test_a_hostile_harmony_recipe_stops_at_load_naming_the_key(tmp_path_factory, data):
    """Any key of the harmony model's recipe set to a value no key accepts, misspelled or
    missing: the recipe is refused when read, naming the key, before any build work."""
    import yaml

    from bench import harmony_model as hm

    recipe = hm._recipe(plain_prompt_share=0.5)  # the optional key drawn too
    section = data.draw(st.sampled_from(["", "induction."]))
    values = recipe if not section else recipe["induction"]
    key = data.draw(st.sampled_from(sorted(values)))
    fault = data.draw(st.sampled_from(["hostile", "misspelled"] +
                                      ([] if key in hm._OPTIONAL else ["missing"])))
    if fault == "hostile":
        values[key] = data.draw(st.sampled_from(_HOSTILE))
    else:
        value = values.pop(key)
        if fault == "misspelled":
            values[key + "s"] = value
    path = tmp_path_factory.mktemp("recipe") / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    with pytest.raises(ValueError, match=re.escape(f"{section}{key}")):
        hm._recipe(str(path))


def test_the_shipped_harmony_recipe_loads_and_an_unknown_model_key_does_not(tmp_path):
    import yaml

    from bench import harmony_model as hm

    recipe = hm._recipe()
    recipe["model"]["hiden_size"] = 64
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    with pytest.raises(ValueError, match="model.hiden_size"):
        hm._recipe(str(path))


def test_a_changed_harmony_recipe_is_a_new_build_folder():
    """The cache folder is named by the recipe's content: a build of an older recipe is never
    served as the current one (the name alone, size and seed, does not say what was trained)."""
    from bench import harmony_model as hm

    recipe = hm._recipe()
    assert hm.model_path(recipe) == hm.model_path(hm._recipe())
    for change in ({"steps": recipe["steps"] + 1}, {"learning_rate": 1e-3},
                   {"induction": {**recipe["induction"], "length": 12}}):
        assert hm.model_path({**recipe, **change}) != hm.model_path(recipe), change


@given(length=st.integers(2, 12).map(lambda n: 2 * n), max_gap=st.integers(0, 20),
       seed=st.integers(0, 2**16))
@settings(max_examples=40, deadline=None)
def test_induction_rows_train_only_what_the_first_copy_determines(length, max_gap, seed):
    """Each trained-on token of an induction row is determined by the first copy: the token
    two before it (the one before its space) occurs there, followed two later by it. Padding
    is never attended or trained on."""
    import torch

    from bench import harmony_model as hm

    gen = torch.Generator().manual_seed(seed)
    ids, att, own = hm._induction(50, 0, 6, length, max_gap, gen)
    assert ids.shape == (6, 2 * length + max_gap)
    for row, a, o in zip(ids.tolist(), att.tolist(), own.tolist(), strict=True):
        n = sum(a)
        assert a == [1] * n + [0] * (len(a) - n) and not any(o[n:])
        first = row[:length]
        for t in (i for i, trained in enumerate(o) if trained):
            assert t >= n - length + 2 and row[t] == first[t - (n - length)]


@pytest.mark.parametrize("argv,says", [
    (["--arms", "default,answr_rules"], "unknown arm(s)"),
    (["--model", "harmony", "--arms", "default,answer_rules"], "unknown arm(s)"),
    (["--model", "harmony", "--arms", "aimo3_gpt_oss,aimo3_plain_prompt"], "missing: default")])
def test_an_unknown_presets_arm_is_refused_before_any_model_is_loaded(argv, says, capsys,
                                                                      monkeypatch):
    from bench import presets

    monkeypatch.setattr(presets, "resolve_model", lambda *a, **k: pytest.fail("model resolved"))
    with pytest.raises(SystemExit):
        presets.main(argv)
    assert says in capsys.readouterr().err
