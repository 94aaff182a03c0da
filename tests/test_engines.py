import math
import sys
import threading

import pytest
from fake_openai import FakeOpenAIServer  # tests/ is on sys.path (rootdir conftest)
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from aimo_lib import Solver, SolverConfig
from aimo_lib.engines import (
    Completion,
    Engine,
    EngineError,
    GenerationParams,
    OpenAIEngine,
    ReplicaEngine,
    ScriptedEngine,
    VLLMEngine,
    as_engine,
    chat_messages,
    render_chat,
)
from aimo_lib.prompts import TIR_INSTRUCTION, render_prompt

STOP = "```output\n"
TIR = GenerationParams(max_tokens=50, stop=(STOP,))


# ---------------------------------------------------------------- ScriptedEngine


def test_scripted_engine_contract():
    e = ScriptedEngine(lambda prompt, k: f"{prompt}-{k} ```python\nx\n```\n{STOP}after")
    a, b = e.generate(["p", "p"], TIR)
    assert (a.text, a.finish_reason) == ("p-0 ```python\nx\n```\n" + STOP, "stop")
    assert b.text.startswith("p-1")  # k counts earlier submissions of the same prompt
    c = e.generate(["p"], GenerationParams(stop=(STOP,), include_stop_str_in_output=False))[0]
    assert c.text.endswith("```\n") and c.finish_reason == "stop"
    d = e.generate(["q"], GenerationParams(max_tokens=2))[0]
    assert (d.text, d.finish_reason, d.num_tokens) == ("q-0 ```python", "length", 2)
    eos = ScriptedEngine(lambda p, k: "just words").generate(["x"], TIR)[0]
    assert (eos.finish_reason, eos.num_tokens) == ("eos", 2)
    with pytest.raises(ValueError):
        e.generate(["a", "b"], [TIR])


def test_scripted_engine_submit_and_abort():
    e = ScriptedEngine(lambda p, k: "done", delay_s=0.2)
    fast = e.submit("a", TIR)
    queued = [e.submit(str(i), TIR) for i in range(100)]  # more than the pool runs at once
    e.abort(queued[-1])
    assert fast.result().text == "done" and queued[-1].future.cancelled()
    assert queued[-1].cancelled.is_set() and not fast.cancelled.is_set()


def test_engine_capabilities_have_defaults_and_plain_objects_get_them():
    """The solver asks engines what they can do through attributes every Engine has; an object
    with only generate() is adapted with the defaults (what it declares is kept)."""
    class Plain:  # no base class, no capabilities: a batch engine that knows nothing more
        def generate(self, prompts, params):
            return [Completion("x", "eos", 1) for _ in prompts]

    class Knowing(Plain):
        max_model_len, names_stop_strings = 100, False

    e = as_engine(Plain())
    assert isinstance(e, Engine) and as_engine(e) is e
    assert (e.supports_async, e.supports_deadline, e.accepts_token_ids, e.supports_logprobs,
            e.names_stop_strings, e.max_model_len, e.count_tokens("a b")) == (
        False, False, False, False, True, None, None)
    assert e.generate(["p"], TIR, deadline=1.0)[0].text == "x"  # a deadline it ignores
    with pytest.raises(EngineError, match="no submit"):
        e.submit("p", TIR)
    k = as_engine(Knowing())
    assert (k.max_model_len, k.names_stop_strings) == (100, False)
    with pytest.raises(TypeError, match="not an engine"):
        as_engine(object())
    s = ScriptedEngine(lambda p, k: "y")
    assert (s.supports_async, s.supports_deadline, s.accepts_token_ids) == (True, True, False)


def test_replica_engine_spreads_requests_and_aborts_on_the_right_replica():
    """Each request goes to the least loaded replica; the Request says which, and abort()
    reaches that replica's request. Capabilities: the replicas' common ones."""
    gate = threading.Event()  # no request finishes before all four are placed: loads are exact
    a = ScriptedEngine(lambda p, k: gate.wait(60) and "A", delay_s=0.3, max_model_len=50)
    b = ScriptedEngine(lambda p, k: gate.wait(60) and "B", delay_s=0.3, max_model_len=40)
    with ReplicaEngine([a, b]) as r:
        assert r.max_model_len == 40 and r.supports_async
        requests = [r.submit(str(i), TIR) for i in range(4)]
        assert [q.replica for q in requests] == [0, 1, 0, 1]
        r.abort(requests[3])
        gate.set()
        texts = [q.result().text for q in requests[:3]]
        assert texts == ["A", "B", "A"] and requests[3].cancelled.is_set()
        assert requests[3].future.cancelled() or requests[3].result().text == ""
        assert [c.text for c in r.generate(["x", "y"], TIR)] == ["A", "B"]
    with pytest.raises(ValueError, match="one by one"):
        ReplicaEngine([as_engine(type("Batch", (), {"generate": lambda s, p, q: []})())])


# ---------------------------------------------------------------- OpenAIEngine


@pytest.fixture
def server(request):
    s = FakeOpenAIServer(**getattr(request, "param", {}))
    yield s
    s.close()


@pytest.mark.parametrize("server", [{"style": "vllm"}, {"style": "plain"}], indirect=True)
def test_openai_engine_solves_through_a_real_server(server, sandbox):
    vllm_like = server.style == "vllm"
    engine = OpenAIEngine(server.url, api_key="sk-test", max_concurrency=4,
                          names_stop_strings=vllm_like)
    assert engine.model == "scripted-model"  # discovered from /v1/models
    cfg = SolverConfig.preset("default", num_samples=6, max_rounds=3, early_stop=None)
    result = Solver(engine, sandbox, cfg).solve("What is 6*7?")
    assert result.answer == 42 and result.votes == {42: 6.0}
    end = "\\boxed{42}" if vllm_like else "\\boxed{42}."  # stopped at the answer if it can
    assert all(s.text.endswith(end) for s in result.samples)
    assert all(s.code_calls[0].output == "42" for s in result.samples)
    body, auth = server.requests[0]
    assert auth == "Bearer sk-test" and body["seed"] is not None
    assert body["stop"] == ([STOP, "\\boxed{", "\n```\n"] if vllm_like else [STOP])
    assert body["model"] == "scripted-model" and body["max_tokens"] == cfg.max_new_tokens


@pytest.mark.parametrize("server", [{"style": "vllm"}, {"style": "plain"}], indirect=True)
def test_openai_engine_speaks_harmony_at_the_text_level(server, sandbox):
    # gpt-oss behind /v1/completions: special tokens kept in the text (vLLM's
    # skip_special_tokens=False); a server that cuts <|call|> unseen still gets its call run.
    engine = OpenAIEngine(server.url, names_stop_strings=server.style == "vllm")
    cfg = SolverConfig.preset("default", num_samples=2, dialect="harmony", early_stop=None,
                              competition="aimo3")
    result = Solver(engine, sandbox, cfg).solve("What is 6*7?")
    assert result.answer == 42 and result.votes == {42: 2.0}
    assert all(s.code_calls[0].output == "42" for s in result.samples)
    assert all("HALLUCINATED" not in s.text for s in result.samples)
    body, _ = server.requests[0]
    assert body["skip_special_tokens"] is False and body["stop"] == ["<|call|>", "<|return|>"] + (
        ["\\boxed{"] if server.style == "vllm" else [])  # stop_at_boxed where stops are named
    assert body["prompt"].startswith("<|start|>system<|message|>")


@pytest.mark.parametrize("server", [{"style": "plain"}], indirect=True)
def test_openai_chat_engine_shows_tool_outputs_as_user_turns(server, sandbox):
    """A chat teacher (GPT-4o's API): messages in, the assistant's text out; each code
    block's real output goes back as a user turn; the answer is read as from a text model."""
    engine = OpenAIEngine(server.url, api="chat", names_stop_strings=False, max_concurrency=2)
    cfg = SolverConfig.preset("default", num_samples=2, max_rounds=3, early_stop=None,
                              prompt_template="chat", stop_at_boxed=False)
    result = Solver(engine, sandbox, cfg).solve("What is 6*7?")
    assert result.answer == 42 and result.votes == {42: 2.0}
    assert set(server.paths) == {"/v1/chat/completions"}
    bodies = [b for b, _ in server.requests]
    assert all("prompt" not in b and b["stop"] == [STOP] for b in bodies)
    first = next(b["messages"] for b in bodies if len(b["messages"]) == 1)
    assert first == [{"role": "user", "content": f"What is 6*7?\n\n{TIR_INSTRUCTION}"}]
    after = next(b["messages"] for b in bodies if len(b["messages"]) == 3)
    assert [m["role"] for m in after] == ["user", "assistant", "user"]
    assert after[1]["content"] == "I'll compute.\n```python\nprint(6 * 7)\n```\n"
    assert after[2]["content"].startswith("```output\n42\n")  # the sandbox's, not HALLUCINATED
    assert not any(b.get("continue_final_message") for b in bodies)
    partial = engine.apply_chat_template([{"role": "user", "content": "q"}]) + "Half a thought"
    engine.generate([partial], TIR)
    body = server.requests[-1][0]
    assert body["messages"][-1] == {"role": "assistant", "content": "Half a thought"}
    assert body["continue_final_message"] is True and body["add_generation_prompt"] is False
    with pytest.raises(EngineError, match="apply_chat_template"):
        engine.generate(["a text prompt"], TIR)
    with pytest.raises(EngineError, match="api='chat'"):
        OpenAIEngine(server.url).apply_chat_template([{"role": "user", "content": "q"}])


def test_openai_engine_serving_a_local_folder_uses_its_chat_template(server, tmp_path):
    """vLLM serves a checkpoint under its path: the prompt is the checkpoint's own format."""
    pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"x": 0}, "x")),
                                  unk_token="x")
    tok.chat_template = "### Problem: {{ messages[0]['content'] }}\n### Solution: "
    tok.save_pretrained(tmp_path)
    engine = OpenAIEngine(server.url, model=str(tmp_path))
    assert render_prompt("auto", "P?", engine) == "### Problem: P?\n### Solution: "
    assert not OpenAIEngine(server.url, model="m").has_chat_template


_TEXT = st.text(st.characters(codec="utf-8"), max_size=30)


@settings(max_examples=200, deadline=None)
@given(problem=_TEXT, parts=st.lists(st.tuples(_TEXT, _TEXT), max_size=4), tail=_TEXT)
def test_chat_messages_partition_the_transcript(problem, parts, tail):
    """Whatever the model wrote: the messages hold the transcript exactly, turns alternate,
    and every output block is a user turn of its own."""
    assume("<|im_start|>" not in problem and "```" not in "".join(p + o for p, o in parts)
           and "```" not in tail)
    head = OpenAIEngine.apply_chat_template(_ChatOnly(), [{"role": "user", "content": problem}])
    transcript = "".join(f"{text}```output\n{out}\n```\n" for text, out in parts) + tail
    messages = chat_messages(head + transcript)
    assert messages[0] == {"role": "user", "content": problem}
    assert "".join(m["content"] for m in messages[1:]) == transcript
    roles = [m["role"] for m in messages[1:]]
    assert roles == ["assistant", "user"] * len(parts) + (["assistant"] if tail else [])


class _ChatOnly:
    api = "chat"


def test_prompt_auto_is_the_models_own_template_else_chatml_tir():
    class Chat:
        has_chat_template = True

        def apply_chat_template(self, messages):
            return f"<turn>{messages[0]['content']}</turn>"

    assert render_prompt("auto", "P?", Chat()) == "<turn>P?</turn>"  # the bare problem
    assert render_prompt("chat", "P?", Chat()) == f"<turn>P?\n\n{TIR_INSTRUCTION}</turn>"
    assert render_prompt("auto", "P?", ScriptedEngine(lambda p, k: "")) == render_prompt(
        "chatml_tir", "P?")
    assert SolverConfig().prompt_template == "auto"
    with pytest.raises(ValueError, match="chat template"):
        render_prompt("model", "P?", ScriptedEngine(lambda p, k: ""))


@pytest.mark.parametrize("adds_bos", [True, False])
def test_a_template_that_writes_the_bos_is_not_doubled(adds_bos):
    class Tok:
        bos_token, bos_token_id = "<s>", 1

        def apply_chat_template(self, messages, tokenize, add_generation_prompt):
            return f"<s>### Problem: {messages[0]['content']}\n### Solution: "

        def __call__(self, text):
            return {"input_ids": ([1] if adds_bos else []) + [7]}

    text = render_chat(Tok(), [{"role": "user", "content": "P"}])
    assert text == ("" if adds_bos else "<s>") + "### Problem: P\n### Solution: "


@pytest.mark.parametrize("server", [{"fail_first": 2}], indirect=True)
def test_openai_engine_retries_server_errors(server):
    engine = OpenAIEngine(server.url, model="m", backoff_s=0.01)
    assert engine.generate(["q"], TIR)[0].finish_reason == "stop"
    assert len(server.requests) == 3


@pytest.mark.parametrize("server", [{"fail_first": 100}], indirect=True)
def test_openai_engine_gives_up_with_a_clear_error(server):
    engine = OpenAIEngine(server.url, model="m", max_retries=2, backoff_s=0.01)
    with pytest.raises(EngineError, match="failed after 3 attempts: HTTP 503"):
        engine.generate(["q"], TIR)
    server.fail_left = 0
    with pytest.raises(EngineError, match="HTTP 400"):  # client errors are not retried
        engine.generate(["q"], GenerationParams(max_tokens=0))


@pytest.mark.parametrize("server", [{"delay_s": 0.1}], indirect=True)
def test_openai_engine_bounds_concurrency_and_times_out(server):
    engine = OpenAIEngine(server.url, model="m", max_concurrency=3)
    assert len(engine.generate([f"q{i}" for i in range(12)], TIR)) == 12
    assert server.max_in_flight == 3
    slow = OpenAIEngine(server.url, model="m", timeout_s=0.02, max_retries=1, backoff_s=0.01)
    with pytest.raises(EngineError, match="timed out|TimeoutError"):
        slow.generate(["q"], TIR)


def test_openai_engine_unreachable_server():
    with pytest.raises(EngineError, match="failed after"):
        OpenAIEngine("http://127.0.0.1:9/v1", model="m", max_retries=1, backoff_s=0.01
                     ).generate(["q"], TIR)


# ---------------------------------------------------------------- VLLMEngine on 2xT4 (stand-in)
# Real vLLM is tested in test_vllm.py. What a CPU cannot show is how the engine is configured
# on Kaggle's two T4s (tensor parallel over both, fp16 as T4s lack bf16): checked here against a
# stand-in module that records the constructor's arguments, and on a GPU by scripts/gpu_smoke.py.


@pytest.fixture
def fake_vllm(monkeypatch):
    pytest.importorskip("torch")  # real vLLM always brings torch; VLLMEngine uses it
    import fake_vllm

    fake_vllm.calls.clear()
    monkeypatch.setitem(sys.modules, "vllm", fake_vllm)
    return fake_vllm


def test_vllm_engine_configuration_on_2xT4(fake_vllm, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)  # a T4
    engine = VLLMEngine("/kaggle/input/model", attention_backend="TRITON_ATTN",
                        disable_custom_all_reduce=True, max_model_len=4096, seed=7)
    (name, kwargs), = [c for c in fake_vllm.calls if c[0] == "LLM"]
    assert kwargs == dict(model="/kaggle/input/model", tensor_parallel_size=2, dtype="float16",
                          quantization=None, gpu_memory_utilization=0.9, max_model_len=4096,
                          enable_prefix_caching=True, seed=7, disable_custom_all_reduce=True,
                          attention_backend="TRITON_ATTN")
    assert engine.max_model_len == 4096 and engine.supports_deadline
    engine.close()
    with VLLMEngine("m", async_mode=True) as engine:  # its event loop's thread ends with it
        (name, kwargs), = [c for c in fake_vllm.calls
                           if c[0] == "AsyncLLMEngine.from_engine_args"]
        assert kwargs["tensor_parallel_size"] == 2 and kwargs["dtype"] == "float16"
        thread = engine._thread
    assert not thread.is_alive()


def test_engine_spec_prefers_vllm_and_falls_back_to_transformers(monkeypatch):
    """The one factory: auto = vLLM wherever importable (the embedded model as a cached
    checkpoint), transformers when vLLM is missing or fails to start; vllm asked for by name
    fails loudly instead."""
    from aimo_lib import engines, models
    from aimo_lib.engines import factory

    built = []

    class FakeHF:
        def __init__(self, model=None):
            built.append(("hf", model))

    def fake_vllm_engine(model, **kwargs):
        built.append(("vllm", model))
        if model == "/broken":
            raise RuntimeError("Engine core initialization failed")
        return "a vllm engine"

    monkeypatch.setattr(factory, "HFEngine", FakeHF)
    monkeypatch.setattr(factory, "VLLMEngine", fake_vllm_engine)
    monkeypatch.setattr(models, "as_checkpoint", lambda m: m or "/cache/SmolLM2")
    monkeypatch.setattr(factory, "vllm_available", lambda: True)
    assert engines.EngineSpec("auto").build() == "a vllm engine"
    assert built == [("vllm", "/cache/SmolLM2")]
    assert isinstance(engines.EngineSpec("auto", "/broken").build(), FakeHF)
    assert built[-2:] == [("vllm", "/broken"), ("hf", "/broken")]
    with pytest.raises(RuntimeError, match="initialization failed"):
        engines.EngineSpec("vllm", "/broken").build()
    monkeypatch.setattr(factory, "vllm_available", lambda: False)
    built.clear()
    assert isinstance(engines.EngineSpec("auto").build(), FakeHF) and built == [("hf", None)]
    with pytest.raises(ValueError, match="engine=.tgi. is not allowed: it takes one of auto"):
        engines.EngineSpec("tgi")
    with pytest.raises(ValueError, match="base URL"):
        engines.EngineSpec("openai")


def test_hf_engine_threads_apply_to_its_own_generation_only():
    torch = pytest.importorskip("torch")
    from aimo_lib.engines.hf import _cpu_threads

    before = torch.get_num_threads()
    with _cpu_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with _cpu_threads(None):
        assert torch.get_num_threads() == before


def test_vllm_engine_without_vllm_says_what_to_do(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)
    with pytest.raises(EngineError, match="HFEngine or OpenAIEngine"):
        VLLMEngine("m")


# ---------------------------------------------------------------- HFEngine (real model)


@pytest.mark.slow
def test_hf_engine_generates_with_stop_strings(smollm):
    params = [GenerationParams(max_tokens=40, temperature=0.7, stop=("```output\n",), seed=i)
              for i in range(3)]
    prompt = ("<|im_start|>user\nWrite a python code block that prints 2+2, then stop."
              "<|im_end|>\n<|im_start|>assistant\n```python\nprint(2 + 2)\n```\n")
    outs = smollm.generate([prompt] * 3, params)
    assert len(outs) == 3 and all(o.finish_reason in ("stop", "eos", "length") for o in outs)
    assert all(o.num_tokens > 0 for o in outs)
    for o in outs:
        assert ("```output\n" in o.text) == (o.finish_reason == "stop")
        if o.finish_reason == "stop":
            assert o.text.endswith("```output\n")
    short = smollm.generate(["Count: 1, 2, 3,"], GenerationParams(max_tokens=3, seed=0))[0]
    assert short.finish_reason == "length" and short.num_tokens == 3
    # top-5 logprobs: one entropy per generated token, within [0, log 5]
    lp = smollm.generate(["Count: 1, 2, 3,"], GenerationParams(max_tokens=6, seed=0,
                                                                logprobs=5))[0]
    assert lp.entropies is not None and len(lp.entropies) == lp.num_tokens == 6
    assert all(0.0 <= h <= math.log(5) + 1e-6 for h in lp.entropies)
    assert short.entropies is None


@pytest.mark.slow
def test_smollm2_end_to_end_with_real_code_execution(smollm, sandbox):
    cfg = SolverConfig.preset("default", num_samples=4, max_rounds=2, max_new_tokens=96,
                              prompt_template="chatml_tir_1shot", temperature=0.7)
    solver = Solver(smollm, sandbox, cfg)
    results = [solver.solve(p) for p in ("What is 17 * 23?", "How many positive divisors does "
                                         "36 have?")]
    samples = [s for r in results for s in r.samples]
    assert all(r.tokens_generated > 0 and r.elapsed_s > 0 for r in results)
    assert all(s.status in ("answered", "exhausted", "pruned") for s in samples)
    calls = [c for s in samples for c in s.code_calls]
    assert calls, "SmolLM2 wrote no code block at all with the 1-shot prompt"
    assert all(c.status in ("ok", "error", "timeout", "crashed") for c in calls)
    assert all(r.answer is not None for r in results)


def test_vllm_cpu_settings_give_a_small_machine_every_core_and_keep_the_users(monkeypatch):
    from aimo_lib.engines import cpu

    monkeypatch.setattr(cpu, "usable_cores", lambda: [0, 1])
    assert cpu.vllm_cpu_env({}) == {"VLLM_CPU_OMP_THREADS_BIND": "0,1",
                                    "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}
    # a user's explicit setting is never changed
    assert cpu.vllm_cpu_env({"VLLM_CPU_OMP_THREADS_BIND": "0"}) == {
        "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}
    # a big machine keeps vLLM's own binding (one core of many reserved)
    monkeypatch.setattr(cpu, "usable_cores", lambda: list(range(32)))
    assert cpu.vllm_cpu_env({}) == {}
    assert "cores, AVX-512 " in cpu.cpu_summary()
