"""EngineSpec: the one place an engine is chosen and built (the notebook, `aimo`, training).
Back-ends are imported when built, so importing this never needs torch or vLLM."""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field

from .. import page_cache
from ..fields import check_fields, setting
from ..records import log
from .base import Engine
from .hf import HFEngine
from .openai import OpenAIEngine
from .replica import ReplicaEngine
from .settings import VLLMSettings
from .vllm import VLLMEngine

ENGINE_KINDS = ("auto", "vllm", "vllm_server", "hf", "openai")


def _urls_problem(urls: tuple[str, ...]) -> str | None:
    bad = [u for u in urls if not u.startswith(("http://", "https://"))]
    return f"not a base URL: {bad[0]!r} (e.g. http://127.0.0.1:8000/v1)" if bad else None


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


@dataclass(frozen=True)
class EngineSpec:
    """Which engine to build: the one factory (the notebook, `aimo`, training); its fields are
    run settings (aimo_lib.config) under the names in their metadata."""

    kind: str = setting(
        "auto", "auto (vLLM wherever it is importable, GPU or CPU; transformers if vLLM is "
        "missing or fails to start) | vllm | vllm_server (vLLM's OpenAI-compatible server as a "
        "child process) | hf (transformers) | openai (a server already running: openai_url)",
        name="engine", choices=ENGINE_KINDS)
    model: str | None = setting(
        None, "a checkpoint folder, hub id or .gguf file; None: the embedded SmolLM2; "
        "openai: the served model's name (None: the first it lists)")
    openai_urls: tuple[str, ...] = setting(
        (), "base URL of a running OpenAI-compatible server (engine openai); repeat for "
        "replicas", name="openai_url", check=_urls_problem)
    max_concurrency: int = setting(64, "requests in flight per OpenAI-compatible server",
                                   ge=1, le=4096)
    async_mode: bool = setting(
        True, "vLLM: each sample continues on its own (the async pipeline)")
    warm_page_cache: bool = setting(
        True, "read the checkpoint's weight files into the OS page cache in the background "
        "while the engine starts (the AIMO 3 notebooks' start-up trick)")
    # vLLM's engine arguments (run settings of their own: MAX_MODEL_LEN, KV_CACHE_DTYPE, ...)
    vllm: VLLMSettings = field(default_factory=VLLMSettings)
    # kind "vllm" chosen for "auto" (aimo_lib.resolve): transformers if vLLM fails to start
    fallback_hf: bool = False

    @property
    def remote(self) -> bool:
        """The engine is a server this process did not start: it cannot be restarted, only
        waited for."""
        return self.kind == "openai"

    def _warm(self, path: str | None) -> str | None:
        """Start warming `path`'s weights into the page cache (if asked); `path`."""
        if self.warm_page_cache:
            warming = page_cache.warm(path)
            if warming.files:
                size = sum(os.path.getsize(f) for f in warming.files) / 2**30
                n = len(warming.files)
                log(f"reading {n} weight file{'s' * (n > 1)} ({size:.2f} GiB) into the page "
                    "cache while the engine starts")
        return path

    def __post_init__(self) -> None:
        if isinstance(self.openai_urls, str):
            object.__setattr__(self, "openai_urls", (self.openai_urls,))
        check_fields(self)
        if self.kind == "openai" and not self.openai_urls:
            raise ValueError("engine 'openai' needs the server's base URL (e.g. "
                             "http://127.0.0.1:8000/v1); repeat it for replicas")

    def build(self, **vllm_kwargs) -> Engine:
        """The engine (vllm_kwargs: VLLMEngine's, e.g. max_model_len=4096, over the vllm
        settings)."""
        vllm_kwargs = {**self.vllm.kwargs(), **vllm_kwargs}
        if self.kind == "openai":
            replicas = [OpenAIEngine(url, self.model, max_concurrency=self.max_concurrency)
                        for url in self.openai_urls]
            return replicas[0] if len(replicas) == 1 else ReplicaEngine(replicas)
        if self.kind == "vllm_server":
            from ..models import as_checkpoint
            from .server import ServedVLLM

            checkpoint = self._warm(as_checkpoint(self.model))
            return ServedVLLM(checkpoint, max_concurrency=self.max_concurrency, **vllm_kwargs)
        if self.kind == "hf" or (self.kind == "auto" and not vllm_available()):
            self._warm(self.model)
            return HFEngine(self.model)
        from ..models import as_checkpoint

        checkpoint = self._warm(as_checkpoint(self.model))  # vLLM reads no GGUF
        try:
            return VLLMEngine(checkpoint, async_mode=self.async_mode, **vllm_kwargs)
        except Exception as exc:  # noqa: BLE001 - "auto" falls back to transformers, loudly
            if self.kind == "vllm" and not self.fallback_hf:
                raise
            import logging

            logging.getLogger("aimo_lib").warning(
                "vLLM failed to start (%s: %s); falling back to transformers (HFEngine)",
                type(exc).__name__, exc)
            return HFEngine(self.model)
