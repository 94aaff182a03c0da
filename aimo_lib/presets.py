"""The decoder's configuration: `SolverConfig`, every knob of SC-TIR, and the named presets.

    SolverConfig.preset("numina_aimo1", num_samples=8)     # a preset with overrides
    config_for_run("auto", model_dir, temperature=0.5)     # the notebook's and aimo's choice

Presets: "numina_aimo1" reproduces the AIMO-1 winning notebook rule for rule (see
../shared/REFERENCE.md section 1); "default" is ours; "embedded_cpu" the embedded SmolLM2 on
a laptop; "aimo3_gpt_oss" gpt-oss as the AIMO 3 public notebooks ran it.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, fields, replace

from .answers import AnswerRules, EarlyStop
from .competitions import get_competition
from .dialects import get_dialect

__all__ = ["PRESETS", "VOTE_WEIGHTS", "SolverConfig", "config_for_run", "preset_for_model"]

VOTE_WEIGHTS = ("count", "mean_entropy", "tail_entropy")  # SolverConfig.vote_weights


def _real(x: object) -> bool:
    """A finite int or float (not a bool, not NaN, not +-inf)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


@dataclass(frozen=True)
class SolverConfig:
    """Every knob of the decoder. Build one with `SolverConfig.preset(name, **overrides)`."""

    name: str = "default"
    num_samples: int = 16  # N: width (samples voted over)
    max_rounds: int = 4  # M: generation steps per sample (at most M-1 code executions)
    temperature: float = 0.8  # sampling temperature
    top_p: float = 1.0  # nucleus sampling (1.0: off)
    max_new_tokens: int = 2048  # per step
    # how transcripts show code, output and answer: a name in aimo_lib.dialects.DIALECTS
    dialect: str = "tora"
    max_tool_calls: int | None = None  # per sample; past it a call is answered with a note
    sample_max_tokens: int | None = None  # per sample, all steps together (long reasoning)
    # "auto": the model's own chat template (a checkpoint is served in the format it was
    # trained on), else "chatml_tir"; see prompts.render_prompt
    prompt_template: str = "auto"
    code_timeout_s: float = 5.0  # wall-clock limit of one code block
    max_output_chars: int = 1000  # what the model sees of one execution
    restart_on_fail: bool = True  # a failed sample starts over from the prompt (else pruned)
    # the seed's: an answered sample stays in the batch, is generated again each later step,
    # and its answer is re-read after every step
    keep_answered: bool = False
    # Beyond the seed:

    stateful: bool = True  # one sandbox session per sample: earlier blocks' names persist
    stop_at_boxed: bool = True  # a sample ends at its first \boxed{...}
    # run a ```python block as soon as it closes, even when the model forgets to open the
    # ```output block (we write that fence for it)
    stop_at_code_end: bool = True
    answer_max_tokens: int = 32  # to close an answer's braces after stopping at "\boxed{"
    continue_from_ids: bool = True  # token-id prompts where the engine takes them
    pipeline: str = "auto"  # "async" where the engine can submit, else "rounds"
    early_stop: EarlyStop | None = EarlyStop()  # consensus: cancel stragglers once decided
    code_ok_weight: float = 1.0  # vote weight of samples whose code all ran cleanly
    # Confidence: > 0 asks the engine for every token's top-k logprobs and keeps each
    # sample's token entropies (Sample.mean_entropy, .tail_entropy; needs supports_logprobs)
    logprobs_top_k: int = 0
    # the final vote's weights: "count" (one per sample), "mean_entropy" or "tail_entropy"
    # (exp(-entropy_sharpness * H), H the mean token entropy of the whole sample, or of its
    # last entropy_tail_tokens: the reasoning that led to its answer); early stop still counts
    vote_weights: str = "count"
    entropy_tail_tokens: int = 2048  # tokens of a sample's tail entropy
    entropy_sharpness: float = 1.0  # the s of exp(-s * H)
    # Adaptive retry: when the first wave ends without consensus (its leading answer has less
    # than retry_below of the samples) and time is left (at least half of what the first wave
    # took), retry_samples more are prompted with the retry_candidates most voted answers to
    # check; both waves are voted together. 0: off
    retry_samples: int = 0
    retry_below: float = 0.5  # retry when the leader has less than this share of votes
    retry_candidates: int = 4  # answers the second wave is asked to check
    competition: str = "aimo1"  # answer rules: aimo1/aimo2 (mod 1000), aimo3 (0..99999)
    fallback: int | None = 0  # answer when no sample gives a valid one (flagged)
    seed: int = 42

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
        if self.num_samples < 1 or self.max_rounds < 1 or self.max_new_tokens < 1:
            raise ValueError("num_samples, max_rounds and max_new_tokens must be >= 1")
        if self.code_timeout_s <= 0:
            raise ValueError("code_timeout_s must be positive")
        if self.pipeline not in ("auto", "async", "rounds"):
            raise ValueError("pipeline must be 'auto', 'async' or 'rounds'")
        for name in ("max_tool_calls", "sample_max_tokens"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 (or None: no limit)")
        get_dialect(self.dialect)
        if self.vote_weights not in VOTE_WEIGHTS:
            raise ValueError(f"vote_weights must be one of {VOTE_WEIGHTS}, not "
                             f"{self.vote_weights!r}")
        if self.vote_weights != "count" and self.logprobs_top_k < 1:
            raise ValueError(f"vote_weights={self.vote_weights!r} needs the token entropies: "
                             "set logprobs_top_k (e.g. 20)")
        if self.retry_samples < 0 or not 0.0 <= self.retry_below <= 1.0 or (
                self.retry_candidates < 0):
            raise ValueError("retry_samples and retry_candidates must be >= 0 and retry_below "
                             "within [0, 1]")
        if self.entropy_tail_tokens < 1 or self.logprobs_top_k < 0:
            raise ValueError("entropy_tail_tokens must be >= 1 and logprobs_top_k >= 0")
        # Every vote weight must be a finite number >= 0, whatever the samples do: a NaN or an
        # overflow here once made the final vote raise (or name no winner).
        if not (_real(self.code_ok_weight) and 0 < self.code_ok_weight <= 1e6):
            raise ValueError(f"code_ok_weight must be a number in (0, 1e6], not "
                             f"{self.code_ok_weight!r}")
        if not (_real(self.entropy_sharpness) and 0 <= self.entropy_sharpness <= 1e3):
            raise ValueError(f"entropy_sharpness must be a number in [0, 1000] (the s of "
                             f"exp(-s * H)), not {self.entropy_sharpness!r}")
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
    # 3/10; the model's own arithmetic is rarely right, its code often is), and at most 256
    # tokens per sample, restarts included: in the demo of 2026-11-30 the samples that ran
    # past 256 tokens (up to 576, restarted twice) gave 2 answers of 80 samples, neither right,
    # and set each problem's time; the cap took the demo's notebook from 338 s to 193 s, 4/10
    # both times.
    "embedded_cpu": SolverConfig(
        name="embedded_cpu", num_samples=8, max_rounds=3, max_new_tokens=192, temperature=0.7,
        sample_max_tokens=256, prompt_template="chatml_tir_1shot", code_ok_weight=3.0),
    # gpt-oss in its harmony format, as the AIMO 3 public notebooks ran it on one H100 (41-42
    # of 50; ../shared/REFERENCE.md section 2): 8 attempts, each a persistent kernel and up to
    # 100 tool calls, temperature 1.0 (gpt-oss's recommended sampling), long reasoning (a
    # 48k-token budget per attempt, 16k per step), early stop at 4 of 8 agreeing, votes
    # weighted by tail entropy (the 2nd place's choice; the mild exp(-H), which cost nothing
    # where entropy does not separate right from wrong in bench/README.md's replay), and a
    # second wave of 8 with the candidates when the first has no consensus.
    # Not yet run on gpt-oss here (no GPU, no hub on the CPU machines).
    "aimo3_gpt_oss": SolverConfig(
        name="aimo3_gpt_oss", num_samples=8, max_rounds=101, temperature=1.0, top_p=1.0,
        max_new_tokens=16384, sample_max_tokens=49152, dialect="harmony", max_tool_calls=100,
        code_timeout_s=10.0, max_output_chars=2000, prompt_template="auto",
        early_stop=EarlyStop(table=((4, 8),)), competition="aimo3", logprobs_top_k=20,
        vote_weights="tail_entropy", entropy_tail_tokens=2048, retry_samples=8),
}


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
    if preset == "auto":
        preset = "default" if served and model is None else preset_for_model(model)
    return SolverConfig.preset(preset, **{k: v for k, v in settings.items() if v is not None})
