"""ReplicaEngine: several engines serving one model, each request to the least loaded."""

from __future__ import annotations

import threading
from collections.abc import Sequence

from .base import Completion, Engine, GenerationParams, Request, as_engine, per_prompt


class ReplicaEngine(Engine):
    """Several engines serving the same model (e.g. one OpenAIEngine per vLLM replica): each
    request goes to the replica with the fewest requests in flight."""

    supports_async = True

    def __init__(self, replicas: Sequence):
        if not replicas:
            raise ValueError("ReplicaEngine needs at least one replica")
        self.replicas = [as_engine(r) for r in replicas]
        if not all(r.supports_async for r in self.replicas):
            raise ValueError("ReplicaEngine needs replicas that submit requests one by one "
                             "(supports_async)")
        self.names_stop_strings = all(r.names_stop_strings for r in self.replicas)
        self.supports_logprobs = all(r.supports_logprobs for r in self.replicas)
        lengths = [r.max_model_len for r in self.replicas]
        self.max_model_len = min(lengths) if all(lengths) else None
        # the same model on every replica: the first one's template and token counts
        self.has_chat_template = self.replicas[0].has_chat_template
        self.apply_chat_template = self.replicas[0].apply_chat_template
        self.count_tokens = self.replicas[0].count_tokens
        self._load = [0] * len(self.replicas)
        self._lock = threading.Lock()

    def close(self) -> None:
        for r in self.replicas:
            r.close()

    def submit(self, prompt, params: GenerationParams) -> Request:
        with self._lock:
            i = min(range(len(self.replicas)), key=self._load.__getitem__)
            self._load[i] += 1
        try:
            request = self.replicas[i].submit(prompt, params)
        except BaseException:
            self._done(i)
            raise
        request.replica = i
        request.future.add_done_callback(lambda _: self._done(i))
        return request

    def _done(self, i: int) -> None:
        with self._lock:
            self._load[i] -= 1

    def abort(self, request: Request) -> None:
        self.replicas[request.replica].abort(request)

    def generate(self, prompts, params, deadline=None) -> list[Completion]:
        requests = [self.submit(p, q) for p, q in zip(prompts, per_prompt(prompts, params),
                                                      strict=True)]
        return [r.result() for r in requests]
