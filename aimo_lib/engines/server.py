"""vLLM's OpenAI-compatible server as a child process: for scale-out on one machine, the
real-server tests and bench/engines.py.

    with VLLMServer(checkpoint) as server:          # waits until /v1/models answers
        engine = OpenAIEngine(server.url)
    with ServedVLLM(checkpoint) as engine:          # both in one (EngineSpec "vllm_server")
        ...

The server and its engine processes never outlive this process (aimo_lib.reaper). The `vllm`
console script of the CPU build fails (it looks up a distribution named `vllm`), so the
server runs as `python -m vllm.entrypoints.openai.api_server`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

from ..reaper import Reaper, descendants
from .base import EngineError
from .cpu import cpu_dtype, cpu_kv_cache_bytes, vllm_cpu_env
from .openai import OpenAIEngine
from .settings import engine_flags, gpu_capability, kv_cache_dtype_for
from .vllm import check_cpu_quantization

__all__ = ["ServedVLLM", "VLLMServer", "free_port"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class VLLMServer:
    """`python -m vllm.entrypoints.openai.api_server` for `model`, started and waited for.

    gpu_memory_utilization: vLLM's default on GPUs; on CPU the share of RAM kept for the KV
    cache (default: a 2 GiB KV cache), the weights float32 where the CPU has no bf16, and the
    model runs eagerly (pass "--no-enforce-eager" in extra_args to compile it). extra_args:
    more server flags. The server's output goes to `log_path`
    (default: a temporary file, named in errors).
    """

    def __init__(self, model: str, *, port: int | None = None, host: str = "127.0.0.1",
                 max_model_len: int | None = None, gpu_memory_utilization: float | None = None,
                 seed: int = 0, extra_args: tuple[str, ...] = (), log_path: str | None = None,
                 startup_timeout_s: float = 600.0, **engine_args):
        self.model, self.port = model, port or free_port()
        self.url = f"http://{host}:{self.port}/v1"
        on_gpu = gpu_capability() is not None
        if not on_gpu:
            check_cpu_quantization(model)  # before a server starts that would die loading it
            kv = cpu_kv_cache_bytes(gpu_memory_utilization, {
                "kv_cache_memory_bytes": engine_args.get("kv_cache_memory_bytes") or (
                    "--kv-cache-memory-bytes" in extra_args or None)})
            if gpu_memory_utilization is None:
                gpu_memory_utilization = 0.3
        cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model,
               "--host", host, "--port", str(self.port), "--seed", str(seed)]
        if not on_gpu and "--dtype" not in extra_args and not engine_args.get("dtype"):
            cmd += ["--dtype", cpu_dtype()]  # as VLLMEngine: float32 where bf16 is emulated
        if not on_gpu and kv:
            cmd += ["--kv-cache-memory-bytes", str(kv)]
        if max_model_len:
            cmd += ["--max-model-len", str(max_model_len)]
        if gpu_memory_utilization is not None:
            cmd += ["--gpu-memory-utilization", str(gpu_memory_utilization)]
        if not on_gpu and "--no-enforce-eager" not in extra_args:
            engine_args.setdefault("enforce_eager", True)  # as VLLMEngine: no ~50 s compile
        kv_dtype, note = kv_cache_dtype_for(engine_args.get("kv_cache_dtype"),
                                            gpu_capability())
        if note:
            logging.getLogger("aimo_lib").warning(note)
            engine_args["kv_cache_dtype"] = kv_dtype
        cmd += engine_flags(engine_args)
        cmd += [a for a in extra_args if a != "--no-enforce-eager"]
        self.command = cmd
        if log_path is None:
            fd, log_path = tempfile.mkstemp(prefix="vllm-server-", suffix=".log")
            os.close(fd)
        self.log_path = log_path
        env = {**os.environ, **({} if on_gpu else vllm_cpu_env())}
        # the log file keeps vLLM's INFO lines (its config line is read back from it), whatever
        # the console's level
        if env.get("VLLM_LOGGING_LEVEL", "INFO").upper() != "DEBUG":
            env["VLLM_LOGGING_LEVEL"] = "INFO"
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        self._reaper = Reaper([self.proc.pid])
        try:
            self._wait_ready(startup_timeout_s)
        except BaseException:
            self.close()
            raise
        # Now its engine processes exist: watch them too, so that they die with us even when
        # the server itself was killed first (they would outlive it, re-parented).
        started = Reaper([self.proc.pid, *descendants(self.proc.pid)])
        self._reaper.release()
        self._reaper = started
        self.settings = self._read_back()

    def _read_back(self) -> dict:
        """The settings the server's engine runs with, from the config line it logs."""
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            line = next((x for x in f if "with config:" in x), "")
        out = {}
        for name, key in (("max_model_len", "max_seq_len"), ("dtype", "dtype"),
                          ("kv_cache_dtype", "kv_cache_dtype"), ("quantization", "quantization"),
                          ("tensor_parallel_size", "tensor_parallel_size"),
                          ("enforce_eager", "enforce_eager"),
                          ("enable_prefix_caching", "enable_prefix_caching")):
            m = re.search(rf"\b{key}=([^,]+)", line)
            if m:
                value = m.group(1).strip()
                out[name] = (int(value) if value.isdigit() else value == "True"
                             if value in ("True", "False") else None if value == "None"
                             else value)
        return out

    def _wait_ready(self, timeout_s: float) -> None:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise EngineError(f"the vLLM server exited with code {self.proc.returncode} "
                                  f"before it was ready:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/models", timeout=2) as r:
                    if json.load(r).get("data"):
                        return
            except OSError:
                pass
            time.sleep(0.5)
        raise EngineError(f"the vLLM server was not ready after {timeout_s:.0f} s (log: "
                          f"{self.log_path}):\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return "".join(f.readlines()[-lines:])

    def close(self) -> None:
        """Stop the server and its engine processes (SIGTERM, then SIGKILL after 10 s)."""
        self._reaper.stop(grace_s=10.0)
        self.proc.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class ServedVLLM(OpenAIEngine):
    """An OpenAIEngine over a VLLMServer it started and owns: close() stops both, so a run
    can restart the whole server when it dies (EngineSpec kind "vllm_server")."""

    def __init__(self, model: str, *, max_concurrency: int = 64, **server_kwargs):
        self.server = VLLMServer(model, **server_kwargs)
        self.settings = self.server.settings
        try:
            super().__init__(self.server.url, model, max_concurrency=max_concurrency)
        except BaseException:
            self.server.close()
            raise

    def _request(self, method: str, path: str, body, retries=None) -> dict:
        # a server process that has exited will not answer: say so now, not after retries
        if self.server.proc.poll() is not None:
            raise EngineError(f"the vLLM server exited (code {self.server.proc.returncode}):\n"
                              f"{self.server.log_tail(10)}")
        return super()._request(method, path, body, retries)

    def close(self) -> None:
        super().close()
        self.server.close()
