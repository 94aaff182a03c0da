"""What the cached bench models share: a file's sha256, and publishing a built folder."""

from __future__ import annotations

import hashlib
import json
import os
import shutil


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def publish(tmp: str, out: str, manifest: dict) -> str:
    """Write build.json into the finished folder `tmp` and put it at `out`, replacing an old
    build: a folder with build.json is a complete build, so an interrupted one never looks
    done."""
    with open(os.path.join(tmp, "build.json"), "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2)
    if os.path.exists(out):
        shutil.rmtree(out)
    os.rename(tmp, out)
    return out
