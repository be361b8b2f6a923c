"""The tokenizer stage: train a byte-level BPE tokenizer on the warehouse corpus and encode the
corpus into token shards with a manifest (the trainer's input).

    crawl2model tokenizer train | encode | show "some text"
    crawl2model run --until tokenizer
    from flows.tokenize_corpus import run_tokenizer     # environment prepared first
    summary = run_tokenizer(cfg)                        # the newest snapshot's corpus

The corpus of a snapshot: the kept (deduplicated, scrubbed) documents of it and of every
earlier snapshot (warehouse.corpus_queries), split train/val by doc_id hash. Training streams
the train split in batches. Encoding goes warehouse shard by warehouse shard: each one's ids
are saved as a part file (parts/<split>/<shard>.npy, atomic), then the parts are cut into
shards of `tokenizer.shard_tokens` and the manifest is written last. Everything is keyed by what
it depends on (tokenizer config and corpus; then tokenizer file and shard config), so a re-run
is a no-op, a kill resumes from the parts done, and a new snapshot encodes only its new shards.
`tokenizer/latest` and `shards/latest` name the newest results.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from prefect import flow, get_run_logger
from prefect.context import get_run_context

from crawl2model.config import Config, stable_hash
from crawl2model.layout import DataRoot
from flows.progress import progress_bar
from flows.tracking import Tracking, flatten
from model.shards import ShardSet, open_shard
from model.tokenizer import EOT, load_tokenizer, plain_text_encoder, save_tokenizer
from tasks.bpe import bytes_per_token, longest_merges, train_tokenizer
from tasks.token_shards import assemble, encode_part, is_val, write_manifest
from warehouse import Warehouse
from warehouse.corpus_queries import corpus_shards, corpus_stamp, shard_texts
from warehouse.files import file_sha256

SPLITS = ("train", "val")


@dataclass
class TokenizerSummary:
    snapshot: str
    tokenizer_dir: Path
    manifest: Path
    trained: bool
    encoded: bool
    metrics: dict
    mlflow_run_id: str | None = None

    @property
    def no_op(self) -> bool:
        return not (self.trained or self.encoded)


def _train_batches(wh: Warehouse, snapshot: str, shards: list[str], cfg: Config):
    for shard in shards:
        texts = [text for doc_id, text in shard_texts(wh.con, snapshot, shard)
                 if not is_val(doc_id, cfg.tokenizer.val_fraction)]
        for start in range(0, len(texts), cfg.tokenizer.batch_docs):
            yield texts[start:start + cfg.tokenizer.batch_docs]


def _encode_parts(wh: Warehouse, snapshot: str, shards: list[str], tokenizer, out_dir: Path, cfg: Config,
                  show_progress: bool) -> dict[str, int]:
    """parts/<split>/<shard>.npy for every corpus shard (those done before are kept)."""
    eot = tokenizer.token_to_id(EOT)
    encoder = plain_text_encoder(tokenizer)  # special-token text in a page stays text
    counts = {"documents_train": 0, "documents_val": 0, "encode_seconds": 0.0, "parts_encoded": 0}
    with progress_bar("encode", total=len(shards), enabled=show_progress) as advance:
        for shard in shards:
            paths = {split: out_dir / "parts" / split / f"{shard}.npy" for split in SPLITS}
            rows = shard_texts(wh.con, snapshot, shard)
            by_split = {split: [t for d, t in rows if is_val(d, cfg.tokenizer.val_fraction) == (split == "val")]
                        for split in SPLITS}
            for split in SPLITS:
                counts[f"documents_{split}"] += len(by_split[split])
                if paths[split].exists():
                    continue
                started = time.perf_counter()
                ids = encode_part(encoder, by_split[split], eot)
                counts["encode_seconds"] += time.perf_counter() - started
                counts["parts_encoded"] += 1
                paths[split].parent.mkdir(parents=True, exist_ok=True)
                tmp = paths[split].with_name(f"{shard}.tmp.npy")
                np.save(tmp, ids)
                tmp.replace(paths[split])
            advance()
    return counts


def vocab_used(shard_paths: list[Path], vocab_size: int) -> int:
    """How many distinct ids the shards hold."""
    seen = np.zeros(vocab_size, dtype=bool)
    for path in shard_paths:
        seen[np.unique(open_shard(path))] = True
    return int(seen.sum())


@flow(name="tokenizer", log_prints=False)
def tokenizer_flow(cfg: Config, snapshot: str | None = None, parent_run_id: str | None = None,
                   show_progress: bool = True, encode: bool = True) -> TokenizerSummary:
    logger = get_run_logger()
    root, tcfg = DataRoot(cfg.data_root), cfg.tokenizer
    with Warehouse.open(cfg.data_root, read_only=True) as wh:
        snapshot = wh.resolve_snapshot(snapshot)
        wh.require_complete(snapshot)
        stamp = corpus_stamp(wh.con, snapshot)
        shards = corpus_shards(wh.con, snapshot)
        tok_dir = root.folder("tokenizer", stable_hash([stamp, tcfg.train_fingerprint()])[:12])
        must_train = not (tok_dir / "tokenizer.json").exists()
        out_dir = None if must_train else _shard_dir(root, tok_dir, stamp, tcfg)
        must_encode = encode and (must_train or not (out_dir / "manifest.json").exists())
        if not (must_train or must_encode):
            logger.info("tokenizer of %s: nothing new (%s, %s)", snapshot, tok_dir, out_dir)
            root.point_latest("tokenizer", tok_dir)
            if encode:
                root.point_latest("shards", out_dir)
            manifest = json.loads((out_dir / "manifest.json").read_text()) if encode else {}
            return TokenizerSummary(snapshot, tok_dir, out_dir / "manifest.json" if out_dir else None, False, False,
                                    manifest.get("metrics", {}))
        tracking = Tracking(cfg.data_root, cfg.experiment)
        with tracking.run("tokenizer", parent_run_id, tags={
                "prefect.flow_run_id": str(get_run_context().flow_run.id), "snapshot": snapshot, "stage": "tokenizer"}
                ) as run_id:
            tracking.log_params(run_id, {**flatten(tcfg.model_dump(mode="json"), "tokenizer."),
                                         "tokenizer.vocab": tcfg.vocab, "snapshot": snapshot})
            metrics: dict[str, float] = {}
            if must_train:
                started = time.perf_counter()
                tokenizer = train_tokenizer(_train_batches(wh, snapshot, shards, cfg), tcfg.vocab, tcfg.min_frequency)
                metrics["tokenizer/train_seconds"] = time.perf_counter() - started
                save_tokenizer(tokenizer, tok_dir, tcfg.model_max_length)
                logger.info("tokenizer trained in %.1f s: %s", metrics["tokenizer/train_seconds"], tok_dir)
            tokenizer = load_tokenizer(tok_dir)
            root.point_latest("tokenizer", tok_dir)
            tracking.log_files(run_id, sorted(tok_dir.glob("*.json")), "tokenizer")
            tracking.log_text(run_id, _merges_markdown(longest_merges(tokenizer)), "tokenizer/longest_merges.md")
            manifest_path = None
            if encode:
                out_dir = _shard_dir(root, tok_dir, stamp, tcfg)
                manifest_path = _encode(wh, snapshot, shards, tokenizer, tok_dir, out_dir, stamp, cfg, show_progress)
                root.point_latest("shards", out_dir)
                metrics.update(json.loads(manifest_path.read_text())["metrics"])
            tracking.log_metrics(run_id, metrics)
    return TokenizerSummary(snapshot, tok_dir, manifest_path, must_train, must_encode, metrics, run_id)


def _shard_dir(root: DataRoot, tok_dir: Path, stamp: list, tcfg) -> Path:
    return root.folder("shards", stable_hash([file_sha256(tok_dir / "tokenizer.json"), stamp, tcfg.shard_fingerprint()])[:12])


def _encode(wh, snapshot, shards, tokenizer, tok_dir, out_dir, stamp, cfg, show_progress) -> Path:
    tcfg = cfg.tokenizer
    counts = _encode_parts(wh, snapshot, shards, tokenizer, out_dir, cfg, show_progress)
    splits = {split: assemble([out_dir / "parts" / split / f"{s}.npy" for s in shards], out_dir, split,
                              tcfg.shard_tokens, tokenizer.get_vocab_size()) for split in SPLITS}
    tokens = {split: sum(e["tokens"] for e in entries) for split, entries in splits.items()}
    val_texts = [t for s in shards[:4] for d, t in shard_texts(wh.con, snapshot, s) if is_val(d, tcfg.val_fraction)]
    manifest = {
        "format": "crawl2model token shards", "version": 1,
        "snapshot": snapshot, "corpus": stamp, "config_hash": tcfg.shard_fingerprint(),
        "tokenizer": str(tok_dir / "tokenizer.json"), "tokenizer_sha256": file_sha256(tok_dir / "tokenizer.json"),
        "vocab_size": tokenizer.get_vocab_size(), "eot_id": tokenizer.token_to_id(EOT),
        "dtype": "uint16" if tokenizer.get_vocab_size() <= 1 << 16 else "uint32",
        "shard_tokens": tcfg.shard_tokens, "splits": splits,
        "metrics": {
            "tokenizer/tokens_train": tokens["train"], "tokenizer/tokens_val": tokens["val"],
            "tokenizer/documents_train": counts["documents_train"], "tokenizer/documents_val": counts["documents_val"],
            "tokenizer/bytes_per_token_val": bytes_per_token(tokenizer, val_texts) if val_texts else 0.0,
            "tokenizer/encode_tokens_per_s": (tokens["train"] + tokens["val"]) / max(counts["encode_seconds"], 1e-9)
            if counts["parts_encoded"] else 0.0,
        },
    }
    manifest["metrics"]["tokenizer/vocab_used"] = vocab_used(
        [out_dir / e["file"] for entries in splits.values() for e in entries], manifest["vocab_size"])
    path = write_manifest(out_dir, manifest)  # last: its presence says the shards are complete
    ShardSet.open(path, tok_dir / "tokenizer.json")  # read back: headers, counts, tokenizer hash
    return path


def _merges_markdown(rows: list[dict]) -> str:
    lines = ["| rank | id | token | chars |", "|---:|---:|---|---:|"]
    lines += [f"| {r['rank']} | {r['id']} | `{r['text']!r}` | {r['chars']} |" for r in rows]
    return "\n".join(lines) + "\n"


def run_tokenizer(cfg: Config, snapshot: str | None = None, parent_run_id: str | None = None,
                  show_progress: bool = True, encode: bool = True) -> TokenizerSummary:
    return tokenizer_flow(cfg, snapshot, parent_run_id, show_progress, encode)
