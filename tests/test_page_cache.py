"""Warming a checkpoint's weights into the page cache while the engine starts: every weight
file is read in the background, nothing else is, a failure costs nothing, and the one engine
factory starts it before the engine's own load."""

import os

from aimo_lib import page_cache


def _checkpoint(tmp_path):
    d = tmp_path / "ckpt"
    d.mkdir()
    (d / "model-00001-of-00002.safetensors").write_bytes(os.urandom(3 << 20))
    (d / "model-00002-of-00002.safetensors").write_bytes(os.urandom(1 << 20))
    (d / "config.json").write_text("{}")
    (d / "tokenizer.json").write_text("{}")
    return d


def test_every_weight_file_is_read_and_nothing_else(tmp_path):
    d = _checkpoint(tmp_path)
    warming = page_cache.warm(str(d)).wait(timeout=60)
    assert [os.path.basename(f) for f in warming.files] == [
        "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]  # largest first
    assert warming.bytes_read == 4 << 20 and not warming.errors
    assert warming.thread is not None and warming.thread.daemon and not warming.thread.is_alive()


def test_nothing_to_warm_starts_nothing():
    for path in (None, "", "org/some-hub-id", "served-name"):
        warming = page_cache.warm(path)
        assert warming.files == [] and warming.thread is None and warming.wait() is warming


def test_an_unreadable_file_is_noted_and_the_rest_still_read(tmp_path):
    d = _checkpoint(tmp_path)
    gone = d / "model-00001-of-00002.safetensors"
    warming = page_cache.Warming([str(gone), str(d / "model-00002-of-00002.safetensors")])
    gone.unlink()
    page_cache._read_all(warming)
    assert warming.bytes_read == 1 << 20
    assert len(warming.errors) == 1 and "00001" in warming.errors[0]


def test_the_engine_factory_warms_before_the_engine_loads(monkeypatch, tmp_path):
    from aimo_lib import models
    from aimo_lib.engines import EngineSpec, factory

    order = []
    monkeypatch.setattr(page_cache, "warm", lambda p: order.append(("warm", p)) or
                        page_cache.Warming([]))
    monkeypatch.setattr(factory, "VLLMEngine", lambda m, **kw: order.append(("load", m)))
    monkeypatch.setattr(models, "as_checkpoint", lambda m: m)
    d = str(_checkpoint(tmp_path))
    EngineSpec("vllm", d).build()
    assert order == [("warm", d), ("load", d)]
    order.clear()
    EngineSpec("vllm", d, warm_page_cache=False).build()
    assert order == [("load", d)]
