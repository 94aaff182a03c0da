"""Every setting is checked once, at load: a hostile value from any source (notebook globals,
AIMO_* variables, command-line flags, YAML) is refused with the setting's name before any model
loads, or the run it configures answers a problem with the model."""

import argparse
import math
import os
import tempfile
from dataclasses import replace

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aimo_lib.config import SETTINGS, ConfigError, RunConfig, add_arguments
from aimo_lib.engines import ScriptedEngine
from aimo_lib.kaggle import serve as kg

HOSTILE = [math.nan, math.inf, -math.inf, -1, 0, -0.0, 10**30, 1e308, 2**63, "", " ", "abc",
           "nan", "inf", "-1", "0", "1e400", "0x10", " 3 ", "3.5", "true", True, False, None,
           [], {}, ["4/4", "x"], "4/4,5/x", "5/4", {"table": "45"}, {"table": [["a", "b"]]},
           {"table": []}, {"rule": "magic"}, {"colour": 1}, "localhost:8000", "http://h/v1",
           "harmony", "aimo3", "vllm", "../../etc", "4/8", 1, 0.5, 3, 4097, 100_001]


def _answer(prompt: str, k: int) -> str:
    """One 'token' (a word): the answer in the dialect the prompt is written in."""
    if "<|start|>" in prompt:
        return "<|channel|>final<|message|>\\boxed{5}<|return|>"
    return "\\boxed{5}"


def _load(source: str, name: str, value) -> RunConfig:
    """kg.load_config as the notebook runs it, with `value` for `name` from one source."""
    if source == "notebook":
        return kg.kaggle_resolve(RunConfig.load(env={}, notebook={name.upper(): value}))
    if source == "env":
        return kg.kaggle_resolve(RunConfig.load(env={f"AIMO_{name.upper()}": str(value)}))
    if source == "cli":
        parser = argparse.ArgumentParser()
        add_arguments(parser)
        flag = f"--{name.replace('_', '-')}"
        values = value if isinstance(value, list) else [value]
        try:
            args = parser.parse_args([x for v in values for x in (flag, str(v))])
        except SystemExit:  # argparse refused it: refused at load
            raise ConfigError(f"argparse refused {flag}") from None
        return kg.kaggle_resolve(RunConfig.load(env={}, cli=vars(args)))
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump({name: value}, f)
    try:
        return kg.kaggle_resolve(RunConfig.load(env={}, values={"config": f.name}))
    finally:
        os.unlink(f.name)


# derandomize: the same 400 draws on every machine, so the suite's work is fixed and known to
# take seconds. The thread method: Runner.solve contains every exception, pytest-timeout's
# signal included, so only a stack dump and exit can end a draw that hangs.
@pytest.mark.timeout(300, method="thread")
@settings(max_examples=400, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(sorted(SETTINGS)),
       value=st.one_of(st.sampled_from(HOSTILE), st.floats(), st.text(max_size=12),
                       st.integers(min_value=-2**70, max_value=2**70)),
       source=st.sampled_from(["notebook", "env", "cli", "yaml"]))
def test_a_hostile_setting_is_refused_at_load_or_the_model_answers(name, value, source,
                                                                   sandbox, tmp_path):
    try:
        config = _load(source, name, value)
    except ConfigError as exc:
        assert name in str(exc).lower() or name.upper() in str(exc) or "argparse" in str(exc)
        return
    # accepted: the run it configures answers a problem with the model
    out = tempfile.mkdtemp(dir=tmp_path)  # tmp_path is shared by every draw: no resume
    config = replace(config, out_dir=out, problems="samples", limit=None)
    engine = ScriptedEngine(_answer)
    with kg.make_runner(config, engine=engine, sandbox=sandbox) as runner:
        outcome = runner.solve("What is 2 + 3?", "p0")
    assert outcome.error is None and outcome.answer == 5, (name, value, source, outcome)
    assert any(s.answer == 5 for s in outcome.result.samples), (name, value, source)


@pytest.mark.parametrize(("given", "says"), [
    ({"NUM_SAMPLES": 0}, r"num_samples=0 is not allowed: it takes an integer in \[1, 4096\]"),
    ({"FALLBACK": 100000}, r"fallback=100000 .* \[0, 99999\]"),
    ({"DIALECT": "chatml"}, "dialect='chatml' .* tora, tora_seed, harmony"),
    ({"TEMPERATURE": math.nan}, "temperature=nan .* finite"),
    ({"TOP_P": 1.5}, r"top_p=1.5 .* \(0, 1\]"),
    ({"TOTAL_HOURS": -1}, "total_hours=-1"),
    ({"CODE_TIMEOUT_S": math.inf}, "code_timeout_s=inf"),
    ({"MAX_CONCURRENCY": 0}, "max_concurrency=0"),
    ({"LIMIT": -1}, "limit=-1"),
    ({"LOGPROBS_TOP_K": 50}, r"logprobs_top_k=50 .* \[0, 20\]"),
    ({"EARLY_STOP": {"table": ["4/4", "x"]}}, "early_stop.*'x'"),
    ({"EARLY_STOP": {"table": "45"}}, "early_stop.*'45'"),
    ({"VOTE_WEIGHTS": "tail_entropy"}, "vote_weights='tail_entropy' needs .* logprobs_top_k"),
])
def test_with_model_on_auto_a_bad_value_is_refused_at_load(given, says):
    """MODEL and PRESET on auto (the notebook's defaults): the values round 3 found loading
    fine and failing every problem are refused, naming the setting and what it takes."""
    with pytest.raises(ConfigError, match=says):
        kg.kaggle_resolve(RunConfig.load(env={}, notebook={"MODEL": None, **given}))


def test_a_yaml_early_stop_table_of_strings_is_read_as_pairs(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("early_stop:\n  table: ['4/4', '5/7']\n")
    config = RunConfig.load(env={}, values={"config": str(path)})
    assert config.solver["early_stop"].table == ((4, 4), (5, 7))


def test_every_setting_declares_its_help_and_type():
    for s in SETTINGS.values():
        assert s.help, f"{s.name} has no help"
        assert "help" in s.meta, f"{s.name} is not declared with fields.setting"
