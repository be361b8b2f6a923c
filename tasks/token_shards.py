"""Token shards: documents encoded into fixed-size binary files that training memory-maps.

    from tasks.token_shards import encode_part, assemble, ShardSet
    part = encode_part(tokenizer, texts, eot_id)          # uint32 ids, end-of-text after each text
    entries = assemble(part_paths, out_dir, "train", shard_tokens=1 << 20, vocab_size=8192)
    shards = ShardSet.open(out_dir / "manifest.json", tokenizer_path)   # validates everything
    tokens = shards.tokens("train")                        # list of np.memmap, one per shard

File layout (little-endian): a 32-byte header, then the tokens.
    magic  8 bytes  b"C2MTOKEN"
    version  u32    1
    itemsize u32    2 (uint16) or 4 (uint32: vocab > 65535)
    vocab    u32    vocabulary size the ids are below
    reserved u32    0
    tokens   u64    token count
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
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MAGIC = b"C2MTOKEN"
VERSION = 1
HEADER = struct.Struct("<8sIIIIQ")  # 32 bytes


class ShardError(ValueError):
    """A shard or manifest that cannot be read as it is (the message says why and where)."""


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


def read_header(path: Path) -> dict:
    """The header of a shard, checked: magic, version, a vocab its dtype can hold, the size."""
    with open(path, "rb") as f:
        raw = f.read(HEADER.size)
    if len(raw) < HEADER.size:
        raise ShardError(f"{path}: {len(raw)} bytes, shorter than the {HEADER.size}-byte header")
    magic, version, itemsize, vocab, _, count = HEADER.unpack(raw)
    if magic != MAGIC:
        raise ShardError(f"{path}: not a crawl2model token shard (magic {magic!r}, expected {MAGIC!r})")
    if version != VERSION:
        raise ShardError(f"{path}: shard format version {version}; this crawl2model reads version {VERSION}")
    if itemsize not in (2, 4):
        raise ShardError(f"{path}: token size {itemsize} bytes; expected 2 (uint16) or 4 (uint32)")
    if vocab > 1 << (8 * itemsize):
        raise ShardError(f"{path}: vocab size {vocab} does not fit uint{8 * itemsize} ids")
    expected = HEADER.size + count * itemsize
    size = path.stat().st_size
    if size != expected:
        raise ShardError(f"{path}: {size} bytes, but the header says {count} tokens ({expected} bytes)")
    return {"itemsize": itemsize, "vocab_size": vocab, "tokens": count}


def open_shard(path: Path) -> np.memmap:
    header = read_header(path)
    dtype = np.dtype("<u2") if header["itemsize"] == 2 else np.dtype("<u4")
    return np.memmap(path, dtype=dtype, mode="r", offset=HEADER.size, shape=(header["tokens"],))


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


@dataclass
class ShardSet:
    """A manifest and its shards, validated on open."""
    folder: Path
    manifest: dict

    @classmethod
    def open(cls, manifest_path: Path, tokenizer_path: Path | None = None) -> "ShardSet":
        from warehouse.files import file_sha256

        manifest_path = Path(manifest_path)
        if not manifest_path.exists():
            raise ShardError(f"no manifest at {manifest_path}: run `crawl2model tokenizer encode` first")
        try:
            manifest = json.loads(manifest_path.read_text())
        except json.JSONDecodeError as exc:
            raise ShardError(f"{manifest_path}: not valid JSON ({exc})") from None
        if tokenizer_path is not None:
            actual = file_sha256(Path(tokenizer_path))
            if actual != manifest.get("tokenizer_sha256"):
                raise ShardError(f"{manifest_path} was encoded with tokenizer {manifest.get('tokenizer_sha256', '?')[:12]}, "
                                 f"but {tokenizer_path} is {actual[:12]}: re-encode, or give the matching tokenizer")
        shard_set = cls(manifest_path.parent, manifest)
        for split, entries in manifest["splits"].items():
            for entry in entries:
                header = read_header(shard_set.folder / entry["file"])
                if header["tokens"] != entry["tokens"] or header["vocab_size"] != manifest["vocab_size"]:
                    raise ShardError(f"{entry['file']}: header ({header['tokens']} tokens, vocab {header['vocab_size']}) "
                                     f"disagrees with the manifest ({entry['tokens']}, {manifest['vocab_size']})")
        return shard_set

    def tokens(self, split: str) -> list[np.memmap]:
        return [open_shard(self.folder / e["file"]) for e in self.manifest["splits"].get(split, [])]
