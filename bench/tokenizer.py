"""Benchmark: the tokenizer stage's encoding to shards against raw `tokenizers` encode_batch on the
same texts and threads, and tokenizer training time for 8k and 32k vocabularies.

    .venv/bin/python bench/tokenizer.py            # the curated sample at 1x and 4x (see bench/dedup.py)

Texts: the bundled sample, curated (bench/out/dedup/sample.jsonl, ~3.4 MB), and 4x it with edited
copies (bench/out/dedup/docs-x4.jsonl). Encoding sides, same tokenizer (8k, trained on the
sample), same texts, same Rust thread pool (all cores):
  raw         tokenizer.encode_batch(texts) over batches of 1,000 texts, ids discarded
  pipeline    what `crawl2model tokenizer encode` does per warehouse shard: encode_part (ids +
              end-of-text into one uint32 array) and np.save of the part, then assemble (cut into
              shards of 1M tokens with headers and sha256) -- without the DuckDB reads
Prints tokens/s of each and the ratio (goal >= 0.9x), and training seconds per vocab and size.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.dedup import OUT, sample_documents, scaled_documents  # noqa: E402
from model.tokenizer import EOT  # noqa: E402
from tasks.bpe import train_tokenizer  # noqa: E402
from tasks.token_shards import assemble, encode_part  # noqa: E402

BATCH = 1000


def texts_of(path: Path) -> list[str]:
    return [json.loads(line)["text"] for line in path.open()]


def batches(texts: list[str]) -> list[list[str]]:
    return [texts[i:i + BATCH] for i in range(0, len(texts), BATCH)]


def raw_encode(tokenizer, texts: list[str]) -> tuple[int, float]:
    started = time.perf_counter()
    tokens = sum(len(e.ids) for batch in batches(texts) for e in tokenizer.encode_batch(batch))
    return tokens, time.perf_counter() - started


def pipeline_encode(tokenizer, texts: list[str], work: Path) -> tuple[int, float]:
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    eot = tokenizer.token_to_id(EOT)
    started = time.perf_counter()
    parts = []
    for i, batch in enumerate(batches(texts)):
        parts.append(work / f"part{i:05d}.npy")
        np.save(parts[-1], encode_part(tokenizer, batch, eot))
    entries = assemble(parts, work, "train", 1 << 20, tokenizer.get_vocab_size())
    seconds = time.perf_counter() - started
    return sum(e["tokens"] for e in entries) - len(texts), seconds  # without the end-of-text ids


def main() -> None:
    sample = texts_of(sample_documents())
    sizes = {"1x": sample, "4x": texts_of(scaled_documents(4))}
    print(f"texts: 1x {len(sample)} docs {sum(map(len, sample)) / 1e6:.1f} M chars; 4x {len(sizes['4x'])} docs; "
          f"cpus={os.cpu_count()}", flush=True)

    print("\ntraining (seconds):")
    trained = {}
    for size, texts in sizes.items():
        for vocab in (8192, 32768):
            started = time.perf_counter()
            trained[size, vocab] = train_tokenizer(batches(texts), vocab)
            print(f"  {size} vocab {vocab:6d}: {time.perf_counter() - started:6.1f} s "
                  f"(vocab reached: {trained[size, vocab].get_vocab_size()})", flush=True)

    tokenizer = trained["1x", 8192]
    print("\nencoding with the 8k tokenizer (best of 3):")
    for size, texts in sizes.items():
        raw = min((raw_encode(tokenizer, texts) for _ in range(3)), key=lambda r: r[1])
        piped = min((pipeline_encode(tokenizer, texts, OUT / "tokenize") for _ in range(3)), key=lambda r: r[1])
        assert raw[0] == piped[0], (raw, piped)
        print(f"  {size}: raw encode_batch {raw[0] / raw[1]:12,.0f} tokens/s   pipeline {piped[0] / piped[1]:12,.0f} "
              f"tokens/s   ratio {raw[1] / piped[1]:.2f}x   ({raw[0]:,} tokens)", flush=True)
    shutil.rmtree(OUT / "tokenize", ignore_errors=True)


if __name__ == "__main__":
    main()
