"""The resolution step: every "auto" of a run's settings made concrete, once, and checked.

    config = resolve(RunConfig.load(...), machine_probe())   # `aimo`, bench, training
    config = resolve(RunConfig.load(...), kaggle_probe())    # the notebook (aimo_lib.kaggle)

A `Probe` says what the machine offers; the Kaggle side supplies one that also reads the
attached competition data and model. `resolve` decides from the probe and the settings:

- competition: the attached one, else the preset's own (aimo3 for aimo3_gpt_oss, the
  competition it was made for), else aimo1;
- model: the attached checkpoint, else None (the embedded SmolLM2);
- problems: the competition's attached CSV, else "samples" (those shipped with aimo_lib);
- time_policy: reserve for aimo3, else banked;
- preset: chosen for the model (presets.preset_for_model), and the run's `SolverConfig` built
  from it and the solver settings, typed: `RunConfig.resolved`;
- engine: vllm where vLLM is importable (falling back to transformers, loudly, if it fails to
  start), else hf; on a GPU the preset's vLLM settings under the user's (ENGINE_DEFAULTS).

Everything after it (the Runner, the engines, config.json) reads concrete values. Three "auto"s
belong to the engine actually running and pass through: prompt_template "auto" (the model's own
chat template if its tokenizer has one, known once it is loaded or the server asked), pipeline
"auto" (async where the engine can submit requests one by one: a property of the engine object,
which a caller may also hand over ready-made), and vLLM's own "auto" values (dtype,
kv_cache_dtype), which vLLM resolves for the hardware.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from .competitions import get_competition
from .config import ConfigError, RunConfig, replace_engine
from .engines.factory import vllm_available
from .engines.settings import gpu_capability
from .models import ModelNotFoundError
from .presets import ENGINE_DEFAULTS, PRESETS, preset_name
from .records import log

__all__ = ["NoModelAttached", "Probe", "machine_probe", "resolve"]


@dataclass(frozen=True)
class Probe:
    """What the machine offers a run, found once by whoever knows where to look."""

    competition: str | None = None  # the competition whose data is attached
    model: str | None = None  # an attached checkpoint folder
    gpu: tuple[int, int] | None = None  # the GPU's compute capability; None: a CPU machine
    vllm: bool = False  # vLLM is importable
    inputs: str | None = None  # the folder of attached inputs (on Kaggle), None elsewhere
    rerun: bool = False  # Kaggle's scoring rerun: never stop, answer the fallback instead
    problems: Mapping[str, str] = field(default_factory=dict)  # competition -> attached CSV


class NoModelAttached(ModelNotFoundError):
    """On Kaggle, MODEL is auto and no model is attached."""


def machine_probe() -> Probe:
    """This machine, with nothing attached: its GPU and whether vLLM is importable."""
    return Probe(gpu=gpu_capability(), vllm=vllm_available())


def resolve(config: RunConfig, probe: Probe) -> RunConfig:
    """The config with nothing left on auto (see the module docstring); a resolved config
    comes back unchanged. ConfigError where the settings and the chosen preset disagree;
    NoModelAttached on Kaggle (not in a rerun) when no model is attached and none was set."""
    if config.resolved is not None:
        return config
    engine = config.engine
    if engine.model == "auto":
        if probe.model is None and probe.inputs is not None and engine.kind != "openai":
            message = (f"no model found under {probe.inputs}: attach your model to the "
                       "notebook (Add Input: a Kaggle Model, or a Dataset with the checkpoint "
                       "folder: config.json and the weights), or set MODEL to its folder")
            if not probe.rerun:
                raise NoModelAttached(message)
            log(f"!!! {message}; every problem gets the fallback answer")
        engine = replace(engine, model=probe.model)
    if engine.kind == "auto":
        engine = replace(engine, kind="vllm", fallback_hf=True) if probe.vllm else replace(
            engine, kind="hf")
    competition = config.competition
    if competition == "auto":  # the preset's own (aimo3 for aimo3_gpt_oss), else aimo1
        preset = preset_name(config.preset, engine.model, served=engine.kind == "openai")
        competition = probe.competition or (
            PRESETS[preset].competition if preset in PRESETS else "aimo1")
    get_competition(competition)
    time_policy = config.time_policy
    if time_policy == "auto":
        time_policy = "reserve" if competition == "aimo3" else "banked"
    problems = config.problems
    if problems == "auto":
        problems = probe.problems.get(competition, "samples")
    config = replace(config, competition=competition, time_policy=time_policy, engine=engine,
                     problems=problems)
    try:  # the solver settings with the preset now chosen: refused here, before any model loads
        solver = config.build_solver()
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{exc} (preset {config.preset}, model {config.model})") from None
    if solver.name in ENGINE_DEFAULTS and engine.kind in ("vllm", "vllm_server"):
        if probe.gpu is None:
            log(f"{solver.name}'s vLLM settings are one H100's; on this CPU machine vLLM-CPU's "
                "defaults are used")
        else:
            config = replace_engine(config, vllm=engine.vllm.over(ENGINE_DEFAULTS[solver.name]))
    return replace(config, preset=solver.name, resolved=solver)
