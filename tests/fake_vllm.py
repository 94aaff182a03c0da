"""A stand-in for the `vllm` package that records how VLLMEngine configures it, for what a CPU
cannot show (tensor parallel over 2xT4, fp16). Everything else is tested against real vLLM in
test_vllm.py."""

calls: list[tuple[str, object]] = []


class LLM:
    def __init__(self, **kwargs):
        calls.append(("LLM", kwargs))


class AsyncEngineArgs:
    def __init__(self, **kwargs):
        self.kwargs = kwargs


class AsyncLLMEngine:
    @classmethod
    def from_engine_args(cls, args):
        calls.append(("AsyncLLMEngine.from_engine_args", args.kwargs))
        return cls()
