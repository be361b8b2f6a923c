"""Token shards as training reads them: the file format, validated on open, and memory-mapped
(writing them is the pipeline's: tasks/token_shards.py).

    from model.shards import ShardSet
    shards = ShardSet.open(out_dir / "manifest.json", tokenizer_path)   # validates everything
    tokens = shards.tokens("train")                        # list of np.memmap, one per shard

File layout (little-endian): a 32-byte header, then the tokens.
    magic  8 bytes  b"C2MTOKEN"
    version  u32    1
    itemsize u32    2 (uint16) or 4 (uint32: vocab > 65535)
    vocab    u32    vocabulary size the ids are below
    reserved u32    0
    tokens   u64    token count
The manifest (`manifest.json`) lists the shards of each split with token counts and sha256, and
the tokenizer's sha256; a reader refuses a manifest whose tokenizer hash is not the tokenizer's it
is given.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MAGIC = b"C2MTOKEN"
VERSION = 1
HEADER = struct.Struct("<8sIIIIQ")  # 32 bytes


class ShardError(ValueError):
    """A shard or manifest that cannot be read as it is (the message says why and where)."""


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


def file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


@dataclass
class ShardSet:
    """A manifest and its shards, validated on open."""
    folder: Path
    manifest: dict

    @classmethod
    def open(cls, manifest_path: Path, tokenizer_path: Path | None = None) -> "ShardSet":
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
