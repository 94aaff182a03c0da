"""Confidence from token logprobs: per-token entropies from every engine that gives them, kept
per sample, and the vote weights built on them (mean and tail-windowed entropy)."""

import math

import pytest
from fake_openai import FakeOpenAIServer  # tests/ is on sys.path (rootdir conftest)
from hypothesis import given
from hypothesis import strategies as st

from aimo_lib import Solver, SolverConfig
from aimo_lib.engines import GenerationParams, OpenAIEngine, ScriptedEngine, topk_entropy
from aimo_lib.results import Sample
from aimo_lib.voting import entropy_weight

logprob = st.floats(min_value=-50.0, max_value=0.0, allow_nan=False)


@given(st.lists(logprob, min_size=1, max_size=30), st.randoms())
def test_topk_entropy_is_bounded_and_order_free(lps, rnd):
    h = topk_entropy(lps)
    assert -1e-9 <= h <= math.log(len(lps)) + 1e-9
    shuffled = list(lps)
    rnd.shuffle(shuffled)
    assert topk_entropy(shuffled) == pytest.approx(h, abs=1e-9)


@given(st.lists(st.one_of(logprob, st.none(), st.just(float("-inf")), st.just(float("nan")))))
def test_topk_entropy_never_raises_on_what_a_server_sends(lps):
    assert topk_entropy(lps) >= 0.0  # None, -inf (a zero probability), NaN are left out


def test_topk_entropy_extremes():
    assert topk_entropy([0.0]) == 0.0 and topk_entropy([]) == 0.0
    assert topk_entropy([math.log(0.25)] * 4) == pytest.approx(math.log(4))
    assert topk_entropy([-0.001, -30.0]) < 0.01  # nearly certain


def _split_engine(high: float = 2.0, low: float = 0.1):
    """Five samples: three answer 5 unsure (entropy `high` per token), two answer 7 sure."""
    return ScriptedEngine(lambda p, k: f"so \\boxed{{{5 if k < 3 else 7}}}",
                          entropy=lambda text: high if "{5" in text else low)


@pytest.mark.parametrize("weights,answer", [("count", 5), ("mean_entropy", 7),
                                            ("tail_entropy", 7)])
def test_entropy_weights_can_overturn_a_count(sandbox, weights, answer):
    cfg = SolverConfig.preset("default", num_samples=5, early_stop=None, logprobs_top_k=20,
                              vote_weights=weights, stop_at_boxed=False)
    res = Solver(_split_engine(), sandbox, cfg).solve("q")
    assert res.answer == answer
    by_answer = {s.answer: s for s in res.samples}
    assert by_answer[5].mean_entropy == pytest.approx(2.0)
    assert by_answer[7].tail_entropy == pytest.approx(0.1)
    if weights == "count":
        assert res.votes == {5: 3.0, 7: 2.0}
    else:  # 3 * exp(-2) against 2 * exp(-0.1)
        assert res.votes[5] == pytest.approx(3 * math.exp(-2.0))
        assert res.votes[7] == pytest.approx(2 * math.exp(-0.1))
    record = res.to_dict()["samples"][0]
    assert "entropies" not in record and record["mean_entropy"] is not None


def test_without_logprobs_nothing_is_asked_and_weights_are_refused():
    asked = []

    class Recorder(ScriptedEngine):
        def _one(self, prompt, p, deadline=None, aborted=None):
            asked.append(p.logprobs)
            return super()._one(prompt, p, deadline, aborted)

    from aimo_lib.sandbox import Sandbox

    with Sandbox(timeout_s=2, workers=1) as sb:
        res = Solver(Recorder(lambda p, k: "\\boxed{3}"), sb,
                     SolverConfig.preset("default", num_samples=2)).solve("q")
    assert asked and set(asked) == {0} and all(s.mean_entropy is None for s in res.samples)
    with pytest.raises(ValueError, match="logprobs_top_k"):
        SolverConfig.preset("default", vote_weights="tail_entropy")
    with pytest.raises(ValueError, match="vote_weights"):
        SolverConfig.preset("default", vote_weights="loudest", logprobs_top_k=5)


def test_an_engine_without_logprobs_counts_every_sample_alike(sandbox, capsys):
    cfg = SolverConfig.preset("default", num_samples=5, early_stop=None, logprobs_top_k=20,
                              vote_weights="mean_entropy")
    engine = ScriptedEngine(lambda p, k: f"\\boxed{{{5 if k < 3 else 7}}}")  # no entropy
    res = Solver(engine, sandbox, cfg).solve("q")
    assert res.votes == {5: 3.0, 7: 2.0} and "gives no logprobs" in capsys.readouterr().err


def test_tail_entropy_reads_the_last_tokens_and_a_restart_forgets_the_dropped_attempt(sandbox):
    # Step 1 is a long, unsure preamble that ends in a tool call; step 2 answers surely. The
    # tail (4 tokens) sees only the sure end; the mean sees both.
    def fn(prompt, k):
        if "```output" not in prompt:
            return "hmm " * 12 + "```python\nprint(1)\n```\n"
        return "yes \\boxed{1}"

    engine = ScriptedEngine(fn, entropy=lambda text: 3.0 if "hmm" in text else 0.5)
    cfg = SolverConfig.preset("default", num_samples=1, early_stop=None, logprobs_top_k=5,
                              entropy_tail_tokens=2)
    s = Solver(engine, sandbox, cfg).solve("q").samples[0]
    assert s.answer == 1 and s.tail_entropy == pytest.approx(0.5)
    assert 0.5 < s.mean_entropy < 3.0
    # a restarted sample: the dropped attempt's tokens do not count
    texts = iter(["no code here", "\\boxed{2}"])
    engine = ScriptedEngine(lambda p, k: next(texts),
                            entropy=lambda text: 9.0 if "no code" in text else 0.25)
    s = Solver(engine, sandbox, SolverConfig.preset(
        "numina_aimo1", num_samples=1, logprobs_top_k=5, max_rounds=3)).solve("q").samples[0]
    assert s.restarts >= 1 and (s.mean_entropy is None or s.mean_entropy < 9.0)


def test_entropy_weight_is_one_without_entropies():
    assert entropy_weight(Sample(0), "mean_entropy") == 1.0
    assert entropy_weight(Sample(0, tail_entropy=0.0), "tail_entropy") == 1.0
    assert entropy_weight(Sample(0, mean_entropy=1.0), "mean_entropy", 2.0) == pytest.approx(
        math.exp(-2.0))


@pytest.mark.parametrize("api", ["completions", "chat"])
def test_openai_logprobs_become_entropies(api):
    server = FakeOpenAIServer("vllm")
    try:
        engine = OpenAIEngine(server.url, api=api)
        prompt = engine.apply_chat_template([{"role": "user", "content": "hi"}]) if (
            api == "chat") else "hi"
        out = engine.generate([prompt], GenerationParams(max_tokens=50, logprobs=2))[0]
        assert out.entropies and all(h == pytest.approx(math.log(2)) for h in out.entropies)
        body, _ = server.requests[-1]
        assert (body["logprobs"], body.get("top_logprobs")) == (
            (True, 2) if api == "chat" else (2, None))
        assert engine.generate([prompt], GenerationParams(max_tokens=50))[0].entropies is None
        assert "logprobs" not in server.requests[-1][0]
    finally:
        server.close()
