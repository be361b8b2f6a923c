"""The BPE tokenizer and token shards: exact round trips, transformers agreeing on ids, shard
and manifest validation, token counts, and the tokenizer stage as a real flow (no-op re-run,
resume after losing work, a tokenizer hash that does not match)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from model.shards import HEADER, ShardError, ShardSet, read_header
from model.tokenizer import EOT, SPECIAL_TOKENS, load_tokenizer, plain_text_encoder, render_chat, save_tokenizer
from tasks.bpe import bytes_per_token, train_tokenizer
from tasks.token_shards import assemble, encode_part, is_val, write_manifest, write_shard
from tests.conftest import shared
from tests.test_dedup_flow import neardup_docs, write_pages  # at import time: it imports tests.conftest
from warehouse.files import file_sha256

ODD = ["naïve café — 東京 🙂 \t\r\n x", "  two  spaces\n\n\n", "<|not a special token|>", "\x00\x01 control",
       "", " ", "\u200b\ufeffzero width", "e\u0301 combining", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "a" * 5000]


@pytest.fixture(scope="module")
def articles() -> list[str]:
    ground_truth = json.loads(shared("html", "articles", "ground-truth.json").read_text())
    return [v["articleBody"] for v in ground_truth.values()]


@pytest.fixture(scope="module")
def tokenizer_dir(articles, tmp_path_factory):
    tokenizer = train_tokenizer([articles[i:i + 10] for i in range(0, len(articles), 10)], vocab_size=1000)
    return save_tokenizer(tokenizer, tmp_path_factory.mktemp("tok") / "tokenizer")


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir):
    return load_tokenizer(tokenizer_dir)


def test_special_tokens_come_first_and_the_vocab_is_what_was_asked(tokenizer):
    assert [tokenizer.token_to_id(t) for t in SPECIAL_TOKENS] == list(range(len(SPECIAL_TOKENS)))
    assert tokenizer.get_vocab_size() == 1000


def test_round_trip_on_real_and_odd_text(tokenizer, articles):
    for text in articles + ODD:
        assert tokenizer.decode(tokenizer.encode(text).ids, skip_special_tokens=False) == text


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=200))
def test_round_trip_on_any_unicode(tokenizer, text):
    assert tokenizer.decode(tokenizer.encode(text).ids, skip_special_tokens=False) == text


def test_transformers_loads_the_folder_and_agrees(tokenizer, tokenizer_dir, articles):
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    for text in articles[:20] + ODD:
        assert hf.encode(text, add_special_tokens=False) == tokenizer.encode(text).ids
    assert hf.eos_token == EOT and hf.eos_token_id == tokenizer.token_to_id(EOT)
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"},
            {"role": "assistant", "content": "Hello."}]
    for prompt in (True, False):
        assert hf.apply_chat_template(chat, tokenize=False, add_generation_prompt=prompt) == render_chat(chat, prompt)
    ids = tokenizer.encode(render_chat(chat, True)).ids
    assert ids.count(tokenizer.token_to_id("<|end_of_turn|>")) == 3 and ids[-1] == tokenizer.token_to_id("<|assistant|>")


def test_special_token_text_in_a_page_stays_text(tokenizer, articles):
    encoder = plain_text_encoder(tokenizer)
    page = "Models end documents with <|endoftext|> and turns with <|end_of_turn|>."
    ids = encoder.encode(page).ids
    assert not set(ids) & set(range(len(SPECIAL_TOKENS))) and encoder.decode(ids) == page
    assert tokenizer.token_to_id(EOT) in tokenizer.encode(page).ids  # the plain tokenizer would match it
    assert all(encoder.encode(t).ids == tokenizer.encode(t).ids for t in articles[:10] + ODD)


def test_a_larger_vocab_compresses_better(articles):
    small = train_tokenizer([articles], vocab_size=400)
    large = train_tokenizer([articles], vocab_size=4000)
    assert bytes_per_token(large, articles) > bytes_per_token(small, articles) > 1.0


def test_is_val_is_stable_and_near_the_fraction():
    ids = [f"doc-{i}" for i in range(20_000)]
    picked = [d for d in ids if is_val(d, 0.1)]
    assert 0.09 < len(picked) / len(ids) < 0.11
    assert picked == [d for d in ids if is_val(d, 0.1)] and not any(is_val(d, 0.0) for d in ids)


def test_parts_and_shards_count_every_token(tokenizer, articles, tmp_path):
    eot = tokenizer.token_to_id(EOT)
    halves = [articles[:30], articles[30:]]
    parts = []
    for i, texts in enumerate(halves):
        np.save(tmp_path / f"p{i}.npy", encode_part(tokenizer, texts, eot))
        parts.append(tmp_path / f"p{i}.npy")
    expected = sum(len(tokenizer.encode(t).ids) + 1 for t in articles)
    entries = assemble(parts, tmp_path, "train", shard_tokens=5000, vocab_size=tokenizer.get_vocab_size())
    assert sum(e["tokens"] for e in entries) == expected
    assert all(e["tokens"] == 5000 for e in entries[:-1]) and 0 < entries[-1]["tokens"] <= 5000
    stream = np.concatenate([np.fromfile(tmp_path / e["file"], dtype="<u2", offset=HEADER.size) for e in entries])
    assert (stream == eot).sum() == len(articles)
    first = stream[:int(np.argmax(stream == eot))]
    assert tokenizer.decode(first.tolist()) == articles[0]


def test_shards_use_uint32_above_65536_ids(tmp_path):
    entry = write_shard(tmp_path / "big.bin", np.array([1, 70_000, 3], dtype=np.uint32), vocab_size=100_000)
    assert read_header(tmp_path / "big.bin") == {"itemsize": 4, "vocab_size": 100_000, "tokens": 3}
    assert entry["tokens"] == 3
    with pytest.raises(ShardError, match="not below the vocab size"):
        write_shard(tmp_path / "bad.bin", np.array([5000]), vocab_size=1000)


def _corrupt(path, **fields):
    magic, version, itemsize, vocab, reserved, count = HEADER.unpack(path.read_bytes()[:HEADER.size])
    values = {"magic": magic, "version": version, "itemsize": itemsize, "vocab": vocab, "count": count, **fields}
    raw = HEADER.pack(values["magic"], values["version"], values["itemsize"], values["vocab"], reserved, values["count"])
    path.write_bytes(raw + path.read_bytes()[HEADER.size:])


@pytest.mark.parametrize("fields, message", [
    ({"magic": b"NOTTOKEN"}, "not a crawl2model token shard"),
    ({"version": 9}, "format version 9"),
    ({"vocab": 70_000}, "does not fit uint16"),
    ({"itemsize": 3}, "token size 3"),
    ({"count": 11}, "header says 11 tokens"),
])
def test_bad_shard_headers_are_refused_clearly(tmp_path, fields, message):
    path = tmp_path / "s.bin"
    write_shard(path, np.arange(10), vocab_size=1000)
    _corrupt(path, **fields)
    with pytest.raises(ShardError, match=message):
        read_header(path)


def test_manifest_refuses_another_tokenizer(tmp_path, tokenizer_dir, articles):
    entry = write_shard(tmp_path / "train-00000.bin", np.arange(10), vocab_size=1000)
    manifest = {"vocab_size": 1000, "tokenizer_sha256": file_sha256(tokenizer_dir / "tokenizer.json"),
                "splits": {"train": [entry]}}
    path = write_manifest(tmp_path, manifest)
    assert len(ShardSet.open(path, tokenizer_dir / "tokenizer.json").tokens("train")[0]) == 10
    other = save_tokenizer(train_tokenizer([articles[:5]], vocab_size=300), tmp_path / "other")
    with pytest.raises(ShardError, match="encoded with tokenizer"):
        ShardSet.open(path, other / "tokenizer.json")
    write_manifest(tmp_path, {**manifest, "splits": {"train": [{**entry, "tokens": 9}]}})
    with pytest.raises(ShardError, match="disagrees with the manifest"):
        ShardSet.open(path)
    with pytest.raises(ShardError, match="no manifest"):
        ShardSet.open(tmp_path / "missing" / "manifest.json")


# --- the tokenizer stage as a real flow ------------------------------------------------------------

@pytest.fixture
def corpus_pages(tmp_path):
    docs = [d for d in neardup_docs() if "-v" not in d["id"]]
    return write_pages(tmp_path / "pages", {f"nd-{d['id']}": d["text"] for d in docs})


@pytest.mark.slow
def test_tokenizer_stage_counts_resumes_and_is_a_no_op_again(corpus_pages, data_root, prefect_server):
    import duckdb
    from mlflow import MlflowClient

    from crawl2model.config import load_config
    from flows.pipeline import run_pipeline
    from crawl2model.layout import DataRoot
    from flows.tokenize_corpus import run_tokenizer

    cfg = load_config(overrides=["curate.workers=2", "tokenizer.vocab_size=1024", "tokenizer.shard_tokens=4096",
                                 "tokenizer.val_fraction=0.25"], data_root=data_root)
    result = run_pipeline([str(corpus_pages)], cfg, until="tokenizer", show_progress=False)
    summary = result.tokenizer
    assert summary.trained and summary.encoded and DataRoot(data_root).latest("shards") == summary.manifest.parent
    manifest = json.loads(summary.manifest.read_text())

    # every kept document, encoded, plus one end-of-text each, is in its split's shards
    tokenizer = load_tokenizer(summary.tokenizer_dir)
    con = duckdb.connect(str(data_root / "warehouse.duckdb"), read_only=True)
    kept = con.execute("select doc_id, text from kept_documents").fetchall()
    con.close()
    expected = {"train": 0, "val": 0}
    for doc_id, text in kept:
        expected["val" if is_val(doc_id, 0.25) else "train"] += len(tokenizer.encode(text).ids) + 1
    shard_set = ShardSet.open(summary.manifest, summary.tokenizer_dir / "tokenizer.json")
    for split in ("train", "val"):
        assert sum(len(t) for t in shard_set.tokens(split)) == expected[split] > 0
    assert len(manifest["splits"]["train"]) > 1 and all(e["tokens"] == 4096 for e in manifest["splits"]["train"][:-1])

    metrics = MlflowClient(f"sqlite:///{data_root / 'mlflow.db'}").get_run(summary.mlflow_run_id).data.metrics
    assert metrics["tokenizer/tokens_train"] == expected["train"] and metrics["tokenizer/bytes_per_token_val"] > 2
    assert 500 < metrics["tokenizer/vocab_used"] <= 1024

    # a re-run is a no-op; after losing the manifest, the shards and a part, the same shards come back
    again = run_tokenizer(cfg, show_progress=False)
    assert again.no_op and again.manifest == summary.manifest
    folder = summary.manifest.parent
    before = {e["file"]: e["sha256"] for entries in manifest["splits"].values() for e in entries}
    summary.manifest.unlink()
    for path in folder.glob("*.bin"):
        path.unlink()
    next((folder / "parts" / "train").glob("*.npy")).unlink()
    resumed = run_tokenizer(cfg, show_progress=False)
    assert not resumed.trained and resumed.encoded
    after = json.loads(resumed.manifest.read_text())
    assert {e["file"]: e["sha256"] for entries in after["splits"].values() for e in entries} == before
