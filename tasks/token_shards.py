"""Token shards written: documents encoded into fixed-size binary files that training memory-maps
(the format and its reader: model/shards.py).

    from tasks.token_shards import encode_part, assemble, write_manifest
    part = encode_part(tokenizer, texts, eot_id)          # uint32 ids, end-of-text after each text
    entries = assemble(part_paths, out_dir, "train", shard_tokens=1 << 20, vocab_size=8192)
    write_manifest(out_dir, manifest)                     # last: the shards are complete

Documents are split train/val by a hash of their doc_id (`is_val`), each followed by the
end-of-text id; a split's stream is cut into shards of exactly `shard_tokens` (the last one
shorter), so a document may continue in the next shard. The manifest (`manifest.json`,
written last and atomically) lists the shards with token counts and sha256, and the tokenizer's
sha256; a reader refuses a manifest whose tokenizer hash is not the tokenizer's it is given.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from model.shards import HEADER, MAGIC, VERSION, ShardError


def is_val(doc_id: str, fraction: float) -> bool:
    """Whether a document belongs to the validation split: a stable hash of its id."""
    return int.from_bytes(hashlib.sha256(doc_id.encode()).digest()[:8], "little") < fraction * 2 ** 64


def dtype_for(vocab_size: int) -> np.dtype:
    return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<u4")


def encode_part(tokenizer, texts: list[str], eot_id: int) -> np.ndarray:
    """uint32 ids of the texts (encode_batch: Rust threads), end-of-text after each."""
    encoded = tokenizer.encode_batch(texts)
    pieces = []
    for e in encoded:
        pieces.append(np.asarray(e.ids, dtype=np.uint32))
        pieces.append(np.array([eot_id], dtype=np.uint32))
    return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.uint32)


def write_shard(path: Path, tokens: np.ndarray, vocab_size: int) -> dict:
    """One shard file (temporary name, then renamed): its manifest entry."""
    dtype = dtype_for(vocab_size)
    if len(tokens) and int(tokens.max()) >= vocab_size:
        raise ShardError(f"{path.name}: token id {int(tokens.max())} is not below the vocab size {vocab_size}")
    body = np.ascontiguousarray(tokens, dtype=dtype).tobytes()
    header = HEADER.pack(MAGIC, VERSION, dtype.itemsize, vocab_size, 0, len(tokens))
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(header)
        f.write(body)
    os.replace(tmp, path)
    return {"file": path.name, "tokens": int(len(tokens)), "sha256": hashlib.sha256(header + body).hexdigest()}


def assemble(parts: list[Path], out_dir: Path, split: str, shard_tokens: int, vocab_size: int) -> list[dict]:
    """Concatenate the parts (in order) and cut the stream into shards `<split>-NNNNN.bin`."""
    entries, buffer, filled = [], np.empty(shard_tokens, dtype=np.uint32), 0

    def flush(count: int) -> None:
        path = out_dir / f"{split}-{len(entries):05d}.bin"
        entries.append(write_shard(path, buffer[:count], vocab_size))

    for part in parts:
        ids = np.load(part, mmap_mode="r")
        start = 0
        while start < len(ids):
            take = min(shard_tokens - filled, len(ids) - start)
            buffer[filled:filled + take] = ids[start:start + take]
            filled, start = filled + take, start + take
            if filled == shard_tokens:
                flush(filled)
                filled = 0
    if filled:
        flush(filled)
    return entries


def write_manifest(out_dir: Path, manifest: dict) -> Path:
    path = out_dir / "manifest.json"
    tmp = path.with_name(f"manifest.json.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, path)
    return path
