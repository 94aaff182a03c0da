"""The sandbox worker's byte plumbing (internal): length-prefixed JSON frames over pipes, and a
capture that keeps the head and tail of a stream within a limit."""

from __future__ import annotations

import json
import os
import struct

from aimo_lib.sandbox import truncation_marker


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
