"""The decoder's configuration: `SolverConfig`, every knob of SC-TIR, and the named presets.

    SolverConfig.preset("numina_aimo1", num_samples=8)     # a preset with overrides
    config_for_run("auto", model_dir, temperature=0.5)     # the notebook's and aimo's choice

Presets: "numina_aimo1" reproduces the AIMO-1 winning notebook rule for rule (see
docs/reference.md section 1); "default" is ours; "embedded_cpu" the embedded SmolLM2 on
a laptop; "aimo3_gpt_oss" gpt-oss as the AIMO 3 public notebooks ran it.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields, replace

from .answers import AnswerRules
from .competitions import COMPETITIONS, get_competition
from .dialects import DIALECTS, REASONING_EFFORTS
from .engines.settings import VLLMSettings
from .fields import check_fields, setting
from .prompts import TEMPLATES
from .stopping import StopRule

__all__ = ["AUTO_PRESETS", "ENGINE_DEFAULTS", "PRESETS", "VOTE_WEIGHTS", "SolverConfig",
           "config_for_run", "preset_for_model"]

# SolverConfig.vote_weights: how the final vote weighs samples (solver.Solver.tally)
VOTE_WEIGHTS = ("count", "mean_entropy", "tail_entropy", "inverse_entropy",
                "share_tail_tiebreak")


def _template_problem(template: str) -> str | None:
    if template in (*TEMPLATES, "auto", "model", "chat", "harmony") or "{problem}" in template:
        return None
    return (f"it takes one of {', '.join(sorted(TEMPLATES))}, auto, model, chat or harmony, or "
            "a string containing {problem}")


@dataclass(frozen=True)
class SolverConfig:
    """Every knob of the decoder. Build one with `SolverConfig.preset(name, **overrides)`."""

    name: str = "default"
    num_samples: int = setting(16, "N: width (samples voted over)", ge=1, le=4096)
    max_rounds: int = setting(
        4, "M: generation steps per sample (at most M-1 code executions)", ge=1, le=100_000)
    temperature: float = setting(0.8, "sampling temperature", ge=0.0, le=10.0)
    top_p: float = setting(1.0, "nucleus sampling (1.0: off)", gt=0.0, le=1.0)
    max_new_tokens: int = setting(2048, "tokens per step", ge=1, le=1 << 20)
    dialect: str = setting("tora", "how transcripts show code, output and answer",
                           choices=lambda: tuple(DIALECTS))
    max_tool_calls: int | None = setting(
        None, "per sample; past it a call is answered with a note (None: no limit)",
        ge=0, le=100_000)
    sample_max_tokens: int | None = setting(
        None, "tokens per sample, all steps together (None: no limit)", ge=1, le=1 << 24)
    prompt_template: str = setting(
        "auto", "a name in aimo_lib.prompts.TEMPLATES, 'model', 'chat', a string with "
        "{problem}, or 'auto' (the model's own chat template, else chatml_tir)",
        check=_template_problem)
    code_timeout_s: float = setting(5.0, "wall-clock limit of one code block, seconds",
                                    gt=0.0, le=3600.0)
    max_output_chars: int = setting(1000, "what the model sees of one execution",
                                    ge=1, le=10_000_000)
    restart_on_fail: bool = setting(
        True, "a failed sample starts over from the prompt (else pruned)")
    keep_answered: bool = setting(
        False, "the seed's: an answered sample stays in the batch, is generated again each "
        "later step, and its answer is re-read after every step")
    # Beyond the seed:

    stateful: bool = setting(
        True, "one sandbox session per sample: earlier blocks' names persist")
    stop_at_boxed: bool = setting(True, "a sample ends at its first \\boxed{...}")
    stop_at_code_end: bool = setting(
        True, "run a ```python block as soon as it closes, even when the model forgets to open "
        "the ```output block (we write that fence for it)")
    answer_max_tokens: int = setting(
        32, "tokens to close an answer's braces after stopping at \\boxed{", ge=1, le=4096)
    continue_from_ids: bool = setting(True, "token-id prompts where the engine takes them")
    pipeline: str = setting("auto", "async | rounds | auto (async where the engine can submit)",
                            choices=("auto", "async", "rounds"))
    early_stop: StopRule | None = setting(
        StopRule(), "consensus: cancel stragglers once decided (aimo_lib.stopping): off | on "
        "(4/4,5/7,6/9) | table | share | beta | dirichlet | unbeatable | a table like 4/8 | a "
        "mapping of StopRule's fields, e.g. {rule: beta, threshold: 0.95}")
    code_ok_weight: float = setting(1.0, "vote weight of samples whose code all ran cleanly",
                                    gt=0.0, le=1e6)
    logprobs_top_k: int = setting(
        0, "> 0: ask the engine for every token's top-k logprobs and keep each sample's token "
        "entropies (vLLM serves at most 20)", ge=0, le=20)
    vote_weights: str = setting(
        "count", "the final vote's weights: count (one per sample), mean_entropy or "
        "tail_entropy (exp(-entropy_sharpness * H), H the mean token entropy of the sample, or "
        "of its last entropy_tail_tokens), inverse_entropy (1/H: the AIMO 3 1st place's), or "
        "share_tail_tiebreak (counts, ties to the lowest median tail entropy: the AIMO 3 2nd "
        "place's); early stop still counts", choices=VOTE_WEIGHTS)
    entropy_tail_tokens: int = setting(2048, "tokens of a sample's tail entropy",
                                       ge=1, le=1 << 24)
    entropy_sharpness: float = setting(1.0, "the s of exp(-s * H)", ge=0.0, le=1000.0)
    # Adaptive retry: when the first wave ends without consensus and time is left (at least
    # half of what the first wave took), a second wave is prompted with the candidates.
    retry_samples: int = setting(
        0, "samples of a second wave when the first has no consensus (0: off)", ge=0, le=4096)
    retry_below: float = setting(
        0.5, "retry when the leader has less than this share of votes", ge=0.0, le=1.0)
    retry_candidates: int = setting(4, "answers the second wave is asked to check",
                                    ge=0, le=1000)
    state_answer_rules: bool = setting(
        False, "the prompt states the competition's answer rules after the problem (AIMO 1/2: "
        "a non-negative integer modulo 1000; AIMO 3: an integer from 0 to 99999)")
    check_before_boxing: bool = setting(
        False, "the prompt lists what to check before boxing the answer (the AIMO 3 2nd "
        "place's prompt)")
    reasoning_effort: str = setting(
        "high", "harmony: the reasoning effort gpt-oss's system message states",
        choices=REASONING_EFFORTS)
    competition: str = setting("aimo1", "answer rules: aimo1/aimo2 (mod 1000), aimo3 (0..99999)",
                               choices=lambda: tuple(COMPETITIONS))
    fallback: int | None = setting(
        0, "the answer when no sample gives a valid one (flagged)", ge=0, le=99_999)
    seed: int = setting(42, "base seed of the samples' sampling", ge=0, le=2**63 - 1)

    @classmethod
    def preset(cls, name: str = "default", **overrides) -> SolverConfig:
        """A named preset with field overrides, e.g. preset("numina_aimo1", num_samples=8).
        Presets: "default", "numina_aimo1", "embedded_cpu", "aimo3_gpt_oss" (see PRESETS)."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
        unknown = set(overrides) - {f.name for f in fields(cls)}
        if unknown:
            raise TypeError(f"unknown SolverConfig fields: {sorted(unknown)}")
        return replace(PRESETS[name], **overrides)

    def __post_init__(self) -> None:
        check_fields(self)
        if self.dialect == "harmony" and self.prompt_template in TEMPLATES:
            raise ValueError(f"dialect='harmony' reads harmony transcripts, and prompt_template="
                             f"{self.prompt_template!r} is not one: set prompt_template to auto "
                             "(harmony's own prompt) or model (the model's chat template)")
        if self.prompt_template == "harmony" and self.dialect != "harmony":
            raise ValueError("prompt_template='harmony' needs dialect='harmony'")
        if self.vote_weights != "count" and self.logprobs_top_k < 1:
            raise ValueError(f"vote_weights={self.vote_weights!r} needs the token entropies: "
                             "set logprobs_top_k (e.g. 20)")
        self._check_fallback()

    def _check_fallback(self) -> None:
        """The fallback is submitted as an answer: it must be one the competition accepts."""
        if self.fallback is None:
            return
        low, high = get_competition(self.competition).answer_range
        if (not isinstance(self.fallback, int) or isinstance(self.fallback, bool)
                or not low <= self.fallback <= high):
            raise ValueError(f"fallback={self.fallback!r} is not a valid {self.competition} "
                             f"answer: give an integer from {low} to {high} (or None)")

    @property
    def rules(self) -> AnswerRules:
        return replace(get_competition(self.competition).rules, fallback=self.fallback)

    def to_dict(self) -> dict:
        return asdict(self)


PRESETS = {
    # The submitted AIMO-1 notebook (NuminaMath-7B-TIR, 29/50): N=48, M=4, T=0.8, 2048 tokens,
    # text prompts re-tokenised every step (token boundaries are part of what the model saw).
    "numina_aimo1": SolverConfig(
        name="numina_aimo1", num_samples=48, max_rounds=4, temperature=0.8, max_new_tokens=2048,
        prompt_template="numina", dialect="tora_seed", code_timeout_s=5.0, restart_on_fail=True,
        stateful=False, keep_answered=True,
        stop_at_boxed=False, stop_at_code_end=False, continue_from_ids=False, pipeline="rounds",
        early_stop=None),
    # Where it departs from the seed, by necessity: a request that fails fails its sample
    # (the seed's whole notebook died), and each step's max_tokens is capped to the context
    # left (vLLM refused the whole batch).
    # Ours: a stateful session per sample with real tracebacks and REPL display; answers read
    # anywhere under strict integer rules, pure-reasoning answers kept; a sample stops at its
    # first \boxed{}; consensus early stop; async where the engine allows; token-id prompts.
    "default": SolverConfig(),
    # The embedded SmolLM2-135M on CPU: a worked example in the prompt, short steps, and votes
    # of samples whose code ran cleanly weighted 3x (re-voting the demo's traces: 1/10 ->
    # 3/10; the model's own arithmetic is rarely right, its code often is), and at most 192
    # tokens per sample, restarts included: the samples that ran on set each problem's time
    # and answered nothing right (past 256 tokens, 2 answers of 80 samples in one demo; past
    # 192, 7 of 80 in another, none right), and on a 2-core AVX2 machine the demo must fit in 5
    # minutes with its install (bench/README.md).
    "embedded_cpu": SolverConfig(
        name="embedded_cpu", num_samples=8, max_rounds=3, max_new_tokens=192, temperature=0.7,
        sample_max_tokens=192, prompt_template="chatml_tir_1shot", code_ok_weight=3.0),
    # gpt-oss in its harmony format, as the AIMO 3 public notebooks ran it on one H100 (41-42
    # of 50; docs/reference.md section 2): 8 attempts, each a persistent kernel and up to
    # 100 tool calls, temperature 1.0 (gpt-oss's recommended sampling), long reasoning (a
    # 48k-token budget per attempt, 16k per step), early stop at 4 of 8 agreeing, the 2nd
    # place's selection (vote share first, ties to the lowest median entropy of the samples'
    # last 256 tokens: a confident minority never beats a majority), the answer range and a
    # check-before-boxing list in the prompt (the 2nd place's "highest-leverage change"), and
    # a second wave of 8 with the candidates when the first has no consensus; its engine:
    # ENGINE_DEFAULTS. On the harmony benchmark model (bench/README.md) its decoding answers
    # as `default` does; the notebooks' stream cut at the first \boxed{} (STOP_AT_BOXED) saved
    # tokens and lost no answer there, but that model boxes only in its final message, so the
    # cut stays off until a model that boxes while still checking is measured. Its prompt
    # options (answer rules, check-before-boxing) lost no answer on a harmony model trained on
    # both prompts (two builds: 19 vs 17 and 18 vs 10 of 24 against the plain prompt); they cost
    # the ToRA benchmark model, tuned on bare problems only, its unseen-template answers, so
    # they stay off in the presets for such models. Not yet run on gpt-oss here (no GPU, no
    # hub on the CPU machines).
    "aimo3_gpt_oss": SolverConfig(
        name="aimo3_gpt_oss", num_samples=8, max_rounds=101, temperature=1.0, top_p=1.0,
        max_new_tokens=16384, sample_max_tokens=49152, dialect="harmony", max_tool_calls=100,
        code_timeout_s=10.0, max_output_chars=2000, prompt_template="auto",
        early_stop=StopRule(table=((4, 8),)), competition="aimo3", logprobs_top_k=20,
        vote_weights="share_tail_tiebreak", entropy_tail_tokens=256, retry_samples=8,
        state_answer_rules=True, check_before_boxing=True, stop_at_boxed=False),
}


# The vLLM engine each preset's model family runs best with, where that differs from vLLM's
# defaults. Applied on a GPU under the user's own engine settings (aimo_lib.resolve); a CPU keeps
# aimo_lib's CPU defaults (30% of RAM for the KV cache, eager), as these sizes are an H100's.
ENGINE_DEFAULTS = {
    # The AIMO 3 reference notebook (gpt-oss-120b on one H100, 41.5/50 private; the teams at
    # 44 started from it): fp8 KV cache ("necessary for long-context concurrency"; auto/BF16
    # KV went with lower public scores), a 64k context, 256 sequences, 96% of the GPU, async
    # scheduling and prefix caching (a sample's earlier tool turns). A GPU without fp8 (T4,
    # A100) gets the KV cache in the model's dtype (engines.settings.kv_cache_dtype_for).
    "aimo3_gpt_oss": VLLMSettings(
        kv_cache_dtype="fp8_e4m3", max_model_len=65536, max_num_seqs=256,
        gpu_memory_utilization=0.96, async_scheduling=True, enable_prefix_caching=True),
}

# The presets "auto" may choose (preset_for_model, config_for_run).
AUTO_PRESETS = ("embedded_cpu", "default", "aimo3_gpt_oss")


def preset_for_model(model: str | None) -> str:
    """The preset for a model: "embedded_cpu" for the embedded SmolLM2 (None), the AIMO 3
    preset for gpt-oss (its config.json says model_type "gpt_oss"), else "default"."""
    if model is None:
        return "embedded_cpu"
    try:
        with open(os.path.join(model, "config.json"), encoding="utf-8") as f:
            family = json.load(f).get("model_type", "")
    except (OSError, ValueError, AttributeError):
        family = ""  # a hub id, a GGUF file, a served name: nothing to read
    return "aimo3_gpt_oss" if family == "gpt_oss" else "default"


def config_for_run(preset: str, model: str | None, *, served: bool = False,
                   **settings) -> SolverConfig:
    """A run's solver config (the notebook's and `aimo`'s): the preset, "auto" choosing one
    for the model (a served model with no name given is not the embedded one: "default"),
    then the settings the user gave; a setting of None was not given and keeps the preset's."""
    return SolverConfig.preset(preset_name(preset, model, served=served),
                               **{k: v for k, v in settings.items() if v is not None})


def preset_name(preset: str, model: str | None, *, served: bool = False) -> str:
    """The preset a run uses: `preset`, or for "auto" the one for the model (a served model
    with no name given is not the embedded one: "default")."""
    if preset != "auto":
        return preset
    return "default" if served and model is None else preset_for_model(model)
