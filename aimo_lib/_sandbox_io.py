"""The sandbox's plumbing (internal): length-prefixed JSON frames over pipes (the worker's end,
and `Worker`, the parent's handle on one worker process), and a capture that keeps the head and
tail of a stream within a limit."""

from __future__ import annotations

import json
import os
import select
import shutil
import struct
import subprocess
import time


def send(fd: int, obj: dict) -> None:
    data = json.dumps(obj).encode()
    view = memoryview(struct.pack(">I", len(data)) + data)
    while view:
        view = view[os.write(fd, view):]


def _read_exact(fd: int, n: int) -> bytes | None:
    buf = b""
    while len(buf) < n:
        chunk = os.read(fd, n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


def recv(fd: int) -> dict | None:
    """Blocking read of one frame; None at end of file."""
    head = _read_exact(fd, 4)
    if head is None:
        return None
    body = _read_exact(fd, struct.unpack(">I", head)[0])
    return None if body is None else json.loads(body)


class Frames:
    """Frames arriving on a non-blocking pipe, parsed as bytes come in."""

    def __init__(self) -> None:
        self.buf = b""

    def feed(self, data: bytes) -> list[dict]:
        self.buf += data
        out = []
        while len(self.buf) >= 4:
            n = struct.unpack(">I", self.buf[:4])[0]
            if len(self.buf) < 4 + n:
                break
            out.append(json.loads(self.buf[4 : 4 + n]))
            self.buf = self.buf[4 + n :]
        return out


class Capture:
    """Keeps the head and the tail of a stream, never more than 2 x limit bytes."""

    def __init__(self, limit: int):
        self.limit, self.total = limit, 0
        self.head, self.tail = bytearray(), bytearray()

    def add(self, data: bytes) -> None:
        self.total += len(data)
        room = self.limit - len(self.head)
        if room > 0:
            self.head += data[:room]
            data = data[room:]
        if data:
            self.tail += data
            del self.tail[: -self.limit]

    def text(self) -> tuple[str, bool]:
        if self.total <= self.limit:
            return (self.head + self.tail).decode("utf-8", "replace"), False
        half = self.limit // 2
        kept = self.head + self.tail
        head, tail = kept[:half], kept[-half:]
        cut = self.total - len(head) - len(tail)
        return (head.decode("utf-8", "replace") + truncation_marker(cut)
                + tail.decode("utf-8", "replace")), True


def read_some(fd: int) -> bytes | None:
    """Non-blocking read: bytes, b"" if nothing now, None at end of file."""
    try:
        return os.read(fd, 1 << 16) or None
    except BlockingIOError:
        return b""


def truncation_marker(cut: int) -> str:
    """What stands in for the `cut` characters taken out of the middle of a long output."""
    return f"\n... [{cut} characters truncated] ...\n"


class SandboxError(RuntimeError):
    """The sandbox could not be started or used (not an error in the executed code)."""


class WorkerDied(Exception):
    pass


class Worker:
    """A warm fork-server process and the pipe pair we talk to it over."""

    def __init__(self, cfg: dict, python: str, env: dict):
        self.proc = subprocess.Popen(
            [python, "-m", "aimo_lib._sandbox_worker", json.dumps(cfg)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, close_fds=True,
            start_new_session=True,  # a Ctrl-C in the caller's terminal is not theirs
        )
        self.ready: dict | None = None

    def wait_ready(self, timeout: float) -> dict:
        try:
            msg = self._recv(time.monotonic() + timeout)
        except WorkerDied as exc:
            raise SandboxError(f"sandbox worker failed to start: {exc}") from None
        if not msg.get("ready"):
            self.kill()
            raise SandboxError(f"sandbox worker failed to start: {msg.get('error')}")
        self.ready = msg
        return msg

    def request(self, msg: dict, wait_s: float) -> dict:
        try:
            data = json.dumps(msg).encode()
            self.proc.stdin.write(struct.pack(">I", len(data)) + data)
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError) as exc:
            raise WorkerDied(f"cannot write to worker: {exc}") from None
        reply = self._recv(time.monotonic() + wait_s)
        if "error" in reply:
            raise SandboxError(f"sandbox worker error: {reply['error']}")
        return reply

    def _recv(self, deadline: float) -> dict:
        head = self._read(4, deadline)
        return json.loads(self._read(struct.unpack(">I", head)[0], deadline))

    def _read(self, n: int, deadline: float) -> bytes:
        fd, buf = self.proc.stdout.fileno(), b""
        while len(buf) < n:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                self.kill()
                raise WorkerDied("worker stopped responding")
            chunk = os.read(fd, n - len(buf))
            if not chunk:
                self.kill()
                raise WorkerDied(f"worker exited (code {self.proc.wait()})")
            buf += chunk
        return buf

    def close(self) -> None:
        try:
            data = json.dumps({"op": "exit"}).encode()
            self.proc.stdin.write(struct.pack(">I", len(data)) + data)
            self.proc.stdin.close()
            self.proc.wait(timeout=5)
        except (OSError, ValueError, subprocess.TimeoutExpired):
            pass
        self.kill()

    def kill(self) -> None:
        # Killing the worker kills every holder and child (parent-death signals, namespaces).
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass
        if self.ready:
            shutil.rmtree(self.ready["scratch"], ignore_errors=True)


def shutdown_workers(workers: list) -> None:
    for w in workers:
        if w is not None:
            w.close()
