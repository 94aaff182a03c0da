"""Read a checkpoint's weight files into the OS page cache in the background while the engine
starts (the AIMO 3 notebooks' start-up trick): the engine's loader then reads from memory
instead of from Kaggle's network-backed /kaggle/input, which is what most of a 60 GB model's
load time is. Nothing is kept in this process: the reads only leave the kernel's cache warm.

    warming = warm(model_dir)   # returns at once; warming.thread reads on
    engine = build(...)         # the loader finds the pages already cached
"""

from __future__ import annotations

import glob
import os
import threading
import time
from dataclasses import dataclass, field

__all__ = ["WEIGHT_PATTERNS", "Warming", "warm", "weight_files"]

WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.gguf", "*.pt", "*.pth")
_CHUNK = 16 << 20  # bytes per read: large sequential reads, one buffer reused


@dataclass
class Warming:
    """What a background warm-up read: its files, bytes and seconds (while or once done)."""

    files: list[str]
    bytes_read: int = 0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)
    thread: threading.Thread | None = None

    def wait(self, timeout: float | None = None) -> Warming:
        if self.thread is not None:
            self.thread.join(timeout)
        return self


def weight_files(path: str | None) -> list[str]:
    """The weight files of a checkpoint folder (or the file itself), largest first; none for a
    hub id, a served model's name or None."""
    if not path:
        return []
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        return []
    found = {f for pattern in WEIGHT_PATTERNS for f in glob.glob(os.path.join(path, pattern))}
    return sorted(found, key=lambda f: (-os.path.getsize(f), f))


def warm(path: str | None) -> Warming:
    """Start reading `path`'s weight files on a daemon thread (it never holds up an exit);
    an unreadable file is noted in `errors` and skipped."""
    warming = Warming(weight_files(path))
    if warming.files:
        warming.thread = threading.Thread(target=_read_all, args=(warming,), daemon=True,
                                          name="page-cache-warm")
        warming.thread.start()
    return warming


def _read_all(warming: Warming) -> None:
    start = time.monotonic()
    buffer = bytearray(_CHUNK)
    for path in warming.files:
        try:
            with open(path, "rb", buffering=0) as f:
                while n := f.readinto(buffer):
                    warming.bytes_read += n
        except OSError as exc:
            warming.errors.append(f"{path}: {exc}")
        warming.seconds = time.monotonic() - start
