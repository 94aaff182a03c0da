"""The resolution step: whatever was left on auto, and whatever the machine offers, the resolved
config holds no "auto" that a later step would have to decide, and resolving is done once."""

import dataclasses

from hypothesis import given, settings
from hypothesis import strategies as st

from aimo_lib.competitions import COMPETITIONS
from aimo_lib.config import RunConfig
from aimo_lib.presets import PRESETS, SolverConfig
from aimo_lib.resolve import Probe, resolve

# "auto"s that belong to the engine actually running: the model's own chat template (known once
# its tokenizer is loaded or its server asked), the pipeline (async where the engine object can
# submit; a caller may hand one over ready-made) and vLLM's own values, resolved by vLLM.
PASSED_THROUGH = {"prompt_template", "pipeline", "dtype", "kv_cache_dtype"}


def autos(obj, path=""):
    """Where "auto" still stands in a (nested) dataclass, by field path."""
    found = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        where = f"{path}{f.name}"
        if dataclasses.is_dataclass(value):
            found += autos(value, where + ".")
        elif value == "auto" and f.name not in PASSED_THROUGH:
            found.append(where)
    return found


choice = lambda *xs: st.sampled_from(xs)


@settings(max_examples=150, deadline=None, derandomize=True)
@given(competition=choice("auto", *COMPETITIONS), preset=choice("auto", *PRESETS),
       engine=choice("auto", "vllm", "hf", "vllm_server", "openai"),
       time_policy=choice("auto", "banked", "reserve"), pipeline=choice("auto", "async", "rounds"),
       model=choice("auto", None, "/models/x"),
       probe=st.builds(Probe, competition=choice(None, *COMPETITIONS),
                       model=choice(None, "/kaggle/input/m"), gpu=choice(None, (7, 5), (9, 0)),
                       vllm=st.booleans()))
def test_no_auto_is_left_in_a_resolved_config(competition, preset, engine, time_policy,
                                              pipeline, model, probe):
    values = dict(competition=competition, preset=preset, engine=engine,
                  time_policy=time_policy, pipeline=pipeline, model=model)
    if engine == "openai":
        values["openai_url"] = "http://127.0.0.1:8000/v1"
    config = RunConfig.load(env={}, values={k: v for k, v in values.items() if v is not None})
    if model is None:
        config = dataclasses.replace(config, engine=dataclasses.replace(config.engine, model=None))
    resolved = resolve(config, probe)
    assert autos(resolved) == []
    assert isinstance(resolved.resolved, SolverConfig) and resolved.solver_config().name == (
        resolved.preset)
    assert resolve(resolved, Probe(competition="aimo2", model="/elsewhere")) is resolved  # once
    if competition == "auto":  # the attached one, else the one the preset was made for
        assert resolved.competition == (probe.competition or PRESETS[resolved.preset].competition)
    assert resolved.solver_config().competition == resolved.competition
    if model == "auto":
        assert resolved.model == probe.model


def test_the_engine_follows_what_the_machine_offers():
    config = RunConfig.load(env={}, values={"model": "/m"})
    with_vllm = resolve(config, Probe(vllm=True))
    assert (with_vllm.engine.kind, with_vllm.engine.fallback_hf) == ("vllm", True)
    assert resolve(config, Probe(vllm=False)).engine.kind == "hf"
    chosen = resolve(config.with_settings(engine="vllm"), Probe(vllm=True))
    assert chosen.engine.fallback_hf is False  # a vLLM asked for by name fails loudly


def test_the_cli_needs_nothing_of_the_kaggle_side():
    import ast
    import inspect

    from aimo_lib import cli

    imported = [n.module or "" for n in ast.walk(ast.parse(inspect.getsource(cli)))
                if isinstance(n, ast.ImportFrom)]
    assert not [m for m in imported if m.startswith("kaggle")]
