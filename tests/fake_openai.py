"""A real OpenAI-compatible HTTP server on localhost with a scripted model and injected faults
(refusals, 503s, latency): a peer for OpenAIEngine in the tests."""

import json
import math
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _JSONHandler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _send_bytes(self, code: int, data: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _send(self, code: int, obj) -> None:
        self._send_bytes(code, json.dumps(obj).encode())


class _LocalServer:
    """Serves `handler` on a free localhost port in a daemon thread until close()."""

    def _serve(self, handler) -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


class FakeOpenAIServer(_LocalServer):
    """A real OpenAI-compatible HTTP server on localhost, with a scripted model and faults."""

    def __init__(self, style="vllm", fail_first=0, delay_s=0.0, reject=None):
        # reject(body) -> (HTTP code, message) to refuse a request, or None to answer it
        self.style, self.fail_left, self.delay_s, self.reject = style, fail_first, delay_s, reject
        self.requests, self.paths, self.in_flight, self.max_in_flight = [], [], 0, 0
        self.lock = threading.Lock()
        server = self

        class Handler(_JSONHandler):
            def do_GET(self):
                self._send(200, {"data": [{"id": "scripted-model"}]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.requests.append((body, self.headers.get("Authorization")))
                    server.paths.append(self.path)
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                    fail = server.fail_left > 0
                    server.fail_left -= fail
                try:
                    code, reply = self._answer(body, fail)
                finally:
                    # counted out before the reply is written: once the client holds the reply it
                    # may send its next request, which must not find this one still counted
                    with server.lock:
                        server.in_flight -= 1
                self._send(code, reply)

            def _answer(self, body, fail):
                time.sleep(server.delay_s)
                if fail:
                    return 503, {"error": "overloaded"}
                refused = server.reject(body) if server.reject else None
                if refused:
                    return refused[0], {"error": {"message": refused[1]}}
                if body.get("max_tokens", 1) < 1:
                    return 400, {"error": "max_tokens must be >= 1"}
                return 200, server.complete(body)

        self._serve(Handler)

    def complete(self, body):
        # chat: a tool result arrives as the last (user) turn; a partial turn is continued
        prompt = body["prompt"] if "prompt" in body else "".join(
            m["content"] for m in body["messages"])
        if prompt.startswith("<|start|>system"):  # gpt-oss, harmony
            text = ("<|channel|>analysis to=python code<|message|>print(6 * 7)<|call|>"
                    "<|start|>python to=assistant<|channel|>analysis<|message|>HALLUCINATED"
                    if "<|start|>python" not in prompt else
                    "<|channel|>final<|message|>\\boxed{42}<|return|>")
        else:
            text = ("I'll compute.\n```python\nprint(6 * 7)\n```\n```output\nHALLUCINATED"
                    if "```output" not in prompt else "42}." if prompt.endswith("\\boxed{")
                    else "\nSo the answer is \\boxed{42}.")
        hit = next((s for s in body.get("stop") or [] if s in text), None)
        choice = {"index": 0, "finish_reason": "stop"}
        if hit:
            keep = self.style == "vllm" and body.get("include_stop_str_in_output")
            text = text[: text.index(hit) + (len(hit) if keep else 0)]
            if self.style == "vllm":
                choice["stop_reason"] = hit
        if "messages" in body:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        if body.get("logprobs") and self.style == "vllm":  # two equal choices per token
            pair = {"a": math.log(0.5), "b": math.log(0.5)}
            words = text.split()
            choice["logprobs"] = {"content": [{"token": w, "logprob": math.log(0.5),
                                               "top_logprobs": [{"token": t, "logprob": v}
                                                                for t, v in pair.items()]}
                                              for w in words]} if "messages" in body else {
                "tokens": words, "top_logprobs": [pair for _ in words]}
        return {"choices": [choice], "usage": {"completion_tokens": len(text.split())}}


class ForcingProxy(_LocalServer):
    """A real server's stand-in that overrides request fields before passing them on (e.g.
    skip_special_tokens=True: a server configured to strip special tokens whatever the
    request asks). Everything else goes through unchanged."""

    def __init__(self, upstream: str, force: dict):
        import urllib.request

        upstream = upstream.rstrip("/").removesuffix("/v1")

        class Handler(_JSONHandler):
            def _relay(self, data=None):
                req = urllib.request.Request(upstream + self.path, data=data,
                                             headers={"Content-Type": "application/json"})
                try:
                    with urllib.request.urlopen(req, timeout=600) as r:
                        code, out = r.status, r.read()
                except urllib.error.HTTPError as e:
                    code, out = e.code, e.read()
                self._send_bytes(code, out)

            def do_GET(self):
                self._relay()

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                self._relay(json.dumps({**body, **force}).encode())

        self._serve(Handler)
