"""Post-training loops (model/posttrain.py) on a tiny model and a tokenizer trained here: SFT
learns a fixed reply (held-out loss drops, greedy generation says it, the pretraining val loss is
reported), LoRA SFT trains only adapters and saves merged weights that load_model uses, DPO from
the SFT checkpoint starts at log 2 and learns the pairs, quarantine counts reconcile, resume
gives the same losses bitwise (SFT full, DPO LoRA), self-play pairs are deterministic."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from model.checkpoint import latest_checkpoint, save_checkpoint
from model.config import ModelConfig
from model.hf import tokenizer_folder
from model.llama import Llama
from model.posttrain import PosttrainConfig, held_out_split, main, reply, run_dpo, run_sft, self_play_pairs
from model.sampling import load_model
from model.tokenizer import load_tokenizer, save_tokenizer
from tasks.bpe import train_tokenizer
from tasks.token_shards import encode_part, write_manifest, write_shard
from warehouse.files import file_sha256

ANSWER = "The answer is always forty two."
SUBJECTS = ["cats", "rivers", "stars", "bread", "trains", "music", "paper", "stone", "rain", "clocks",
            "bees", "ships", "salt", "maps", "glass", "wool", "tea", "birds", "coins", "lamps"]
PASSAGE = ("The old harbour town woke slowly. Fishermen mended their nets while gulls argued over scraps, "
           "and the baker opened his shutters to the smell of rye. By noon the market was loud with "
           "traders from the hills, selling wool, honey and copper pots to anyone who would listen.")
UNSEEN = "Tell me something about cats and maps?"  # the data pairs subjects 3 and 10 apart, never 13
FAST = {"micro_batch": 8, "warmup_steps": 3, "eval_batches": 2, "sample_tokens": 32}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models on a busy 2-core machine: extra threads only spin
    yield
    torch.set_num_threads(threads)


def questions(offset: int = 0) -> list[str]:
    return [f"Tell me something about {s} and {SUBJECTS[(i + offset + 3) % len(SUBJECTS)]}?"
            for i, s in enumerate(SUBJECTS)]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    """A tokenizer, a pretraining manifest with real shards, and random-init base checkpoints
    (one naming the manifest, one with only a tokenizer folder)."""
    root = tmp_path_factory.mktemp("posttrain")
    corpus = [PASSAGE, ANSWER, "Yes, gladly. No way, never."] + questions() + questions(5)
    folder = save_tokenizer(train_tokenizer([corpus] * 4, vocab_size=400), root / "tokenizer")
    tokenizer = load_tokenizer(folder)
    shards = root / "shards"
    shards.mkdir()
    vocab = tokenizer.get_vocab_size()
    stream = encode_part(tokenizer, [PASSAGE] * 6 + questions(), eot_id=0)
    splits = {"train": [write_shard(shards / "train-00000.bin", stream, vocab)],
              "val": [write_shard(shards / "val-00000.bin", stream[::-1].copy(), vocab)]}
    manifest = write_manifest(shards, {"vocab_size": vocab, "tokenizer": str(folder / "tokenizer.json"),
                                       "tokenizer_sha256": file_sha256(folder / "tokenizer.json"), "splits": splits})
    torch.manual_seed(0)
    config = ModelConfig.from_preset("tiny", vocab_size=vocab, n_layers=1, max_seq_len=64)
    model = Llama(config)
    base = save_checkpoint(root / "base" / "step-000000", model, None,
                           {"step": 0, "config": config.to_dict(), "tokenizer": str(folder),
                            "train": {"manifest": str(manifest)}})
    bare = save_checkpoint(root / "bare" / "step-000000", model, None,
                           {"step": 0, "config": config.to_dict(), "tokenizer": str(folder)})
    sft_data = write_jsonl(root / "sft.jsonl", [{"prompt": q, "response": ANSWER} for q in questions() + questions(7)])
    return {"root": root, "tokenizer": tokenizer, "base": base, "bare": bare, "sft_data": sft_data,
            "manifest": manifest}


def run(fn, **values) -> tuple[list[dict], dict]:
    lines: list[dict] = []
    result = fn(PosttrainConfig.from_dict({**FAST, **values}), log=lines.append)
    return lines, result


def steps(lines: list[dict], key: str) -> list[dict]:
    return [m for m in lines if key in m and "step" in m and m["step"] > 0]


@pytest.fixture(scope="module")
def sft(world) -> dict:
    out = world["root"] / "sft"
    lines, last = run(run_sft, kind="sft", base=str(world["base"]), out=str(out), data=str(world["sft_data"]),
                      lr=1e-2, max_steps=40, eval_every=20, checkpoint_every=20,
                      sample_prompts=["Tell me something about volcanoes?"])
    return {"lines": lines, "last": last, "out": out}


def test_sft_learns_the_reply_and_reports_heldout_and_pretraining_val(world, sft):
    lines = sft["lines"]
    data = next(m for m in lines if m.get("event") == "data")
    assert data["rows"] == data["examples"] == 40 and data["quarantined"] == 0
    assert data["train"] + data["held_out"] == 40 and data["held_out"] >= 1
    before, last = lines[[m.get("step") for m in lines].index(0)], sft["last"]
    assert last["step"] == 40 and {"sft/loss", "sft/lr", "sft/grad_norm", "sft/tokens_per_s"} <= set(last)
    assert last["sft/eval_loss"] < 0.2 * before["sft/eval_loss"]          # held-out assistant tokens
    assert math.isfinite(last["val/loss"]) and last["val/ppl"] == pytest.approx(math.exp(last["val/loss"]))
    assert before["samples"] != [ANSWER] and last["samples"] == [ANSWER]  # before / after, greedy
    ckpt = latest_checkpoint(sft["out"])
    meta = json.loads((ckpt / "meta.json").read_text())
    assert meta["kind"] == "sft" and meta["posttrain"]["lr"] == 1e-2 and meta["lora"] is None
    assert meta["train"]["manifest"] == str(world["manifest"])
    assert tokenizer_folder(ckpt) == tokenizer_folder(world["base"])        # meta["tokenizer"]: absolute
    model, _ = load_model(ckpt)
    assert reply(model, world["tokenizer"], [UNSEEN], 32) == [ANSWER]


def test_lora_sft_trains_only_adapters_and_saves_merged_weights(world, tmp_path):
    lines, last = run(run_sft, kind="sft", base=str(world["base"]), out=str(tmp_path), data=str(world["sft_data"]),
                      lora_rank=8, lr=2e-2, max_steps=40, eval_every=40, checkpoint_every=40,
                      sample_prompts=["Tell me something about volcanoes?"])
    start = next(m for m in lines if m.get("event") == "start")
    assert 0 < start["trainable"] < start["params"] / 5 and start["lora"]["rank"] == 8
    assert last["samples"] == [ANSWER]
    ckpt = latest_checkpoint(tmp_path)
    saved, base = load_file(str(ckpt / "model.safetensors")), load_file(str(world["base"] / "model.safetensors"))
    assert set(saved) == set(base)                                         # plain Llama keys, merged
    changed = {k for k in base if not torch.equal(saved[k], base[k])}
    assert changed and all(k.split(".")[-2] in ("wq", "wk", "wv", "wo", "w1", "w2", "w3") for k in changed)
    assert any("lora_A" in k for k in load_file(str(ckpt / "lora.safetensors")))
    model, _ = load_model(ckpt)                                            # the tuned behaviour, no peft
    assert reply(model, world["tokenizer"], ["Tell me something about volcanoes?", UNSEEN], 32) == [ANSWER] * 2


def dpo_rows(count: int) -> list[dict]:
    return [{"prompt": q, "chosen": "Yes, gladly.", "rejected": "No way, never."} for q in questions(2)[:count]]


def test_dpo_from_the_sft_checkpoint_starts_at_log2_and_learns_the_pairs(world, sft, tmp_path):
    data = write_jsonl(tmp_path / "prefs.jsonl", dpo_rows(16))
    lines, last = run(run_dpo, kind="dpo", base=str(latest_checkpoint(sft["out"])), out=str(tmp_path / "dpo"),
                      data=str(data), lr=2e-3, max_steps=20, eval_every=10, checkpoint_every=20, sample_prompts=[])
    trained = steps(lines, "train/loss")
    assert trained[0]["train/loss"] == pytest.approx(math.log(2), abs=1e-6)   # policy == reference
    assert trained[0]["train/rewards/margins"] == pytest.approx(0.0, abs=1e-3)
    assert {"train/rewards/chosen", "train/rewards/rejected", "train/logps/chosen", "train/logps/rejected",
            "train/lr", "train/grad_norm"} <= set(last)
    assert np.mean([m["train/rewards/accuracies"] for m in trained[-5:]]) > 0.75
    assert last["train/loss"] < 0.5 * math.log(2) and last["eval/rewards/accuracies"] > 0.75
    assert last["eval/loss"] < math.log(2) and "val/loss" in last            # manifest inherited from SFT


def test_quarantine_counts_reconcile_and_val_is_skipped_without_a_manifest(world, tmp_path):
    good = [{"prompt": q, "response": ANSWER} for q in questions()[:6]]
    bad = ["{not json", json.dumps({"prompt": "hi"}), json.dumps({"messages": [{"role": "user", "content": "x"}]}),
           json.dumps({"prompt": "hi", "response": "   "}), json.dumps([1, 2]),
           json.dumps({"prompt": "cats " * 100, "response": ANSWER})]          # no assistant token fits in 64
    data = write_jsonl(tmp_path / "mixed.jsonl", good[:3] + bad + good[3:])
    lines, _ = run(run_sft, kind="sft", base=str(world["bare"]), out=str(tmp_path / "out"), data=str(data),
                   max_steps=1, sample_prompts=[])
    event = next(m for m in lines if m.get("event") == "data")
    assert event["rows"] == 12 and event["examples"] == 6 and event["quarantined"] == 6
    assert sum(event["reasons"].values()) == 6 and {"invalid-json", "missing-field", "no-assistant-turn",
                                                    "empty-content", "not-an-object", "too-long"} == set(event["reasons"])
    assert any(m.get("event") == "note" and "val/loss" in m["message"] for m in lines)
    assert not any("val/loss" in m for m in lines)


class Stop(Exception):
    pass


def interrupted(fn, at: int, **values) -> None:
    """Run until the metrics of step `at` are emitted, then stop (like a kill before its checkpoint)."""
    def log(m):
        if m.get("step") == at:
            raise Stop
    with pytest.raises(Stop):
        fn(PosttrainConfig.from_dict({**FAST, **values}), log=log)


@pytest.mark.parametrize("kind", ["sft", "dpo-lora"])
def test_resume_gives_the_same_losses_bitwise(world, tmp_path, kind):
    if kind == "sft":
        fn, key, values = run_sft, "sft/loss", {"kind": "sft", "data": str(world["sft_data"]), "lr": 3e-3}
    else:
        data = write_jsonl(tmp_path / "prefs.jsonl", dpo_rows(12))
        fn, key, values = run_dpo, "train/loss", {"kind": "dpo", "data": str(data), "lr": 5e-3, "lora_rank": 4}
    values.update(base=str(world["bare"]), max_steps=6, checkpoint_every=3, eval_every=3, sample_prompts=[])
    straight, _ = run(fn, out=str(tmp_path / "straight"), **values)
    interrupted(fn, 5, out=str(tmp_path / "resumed"), **values)
    assert latest_checkpoint(tmp_path / "resumed").name == "step-000003"
    resumed, _ = run(fn, out=str(tmp_path / "resumed"), **values)
    assert next(m for m in resumed if m.get("event") == "resumed")["step"] == 3
    assert [m["step"] for m in steps(resumed, key)] == [4, 5, 6]
    assert [m[key] for m in steps(resumed, key)] == [m[key] for m in steps(straight, key)[3:]]
    assert load_file(str(tmp_path / "resumed" / "step-000006" / "model.safetensors")).keys() == \
        load_file(str(tmp_path / "straight" / "step-000006" / "model.safetensors")).keys()


def test_self_play_pairs_are_deterministic_and_differ(world, sft):
    model, _ = load_model(latest_checkpoint(sft["out"]))
    texts = [PASSAGE, PASSAGE.replace("harbour", "mountain"), "too short", PASSAGE.replace("rye", "cinnamon")]
    pairs = self_play_pairs(model, world["tokenizer"], texts, n=3, prompt_chars=80, max_new_tokens=16, seed=1)
    again = self_play_pairs(model, world["tokenizer"], texts, n=3, prompt_chars=80, max_new_tokens=16, seed=1)
    assert pairs == again and len(pairs) == 3
    for pair in pairs:
        assert pair["prompt"].startswith("Continue this passage:\n") and pair["chosen"] != pair["rejected"]
        assert pair["chosen"] and pair["rejected"] and pair["prompt"].split("\n", 1)[1] in PASSAGE.replace(
            "harbour", "mountain").replace("rye", "cinnamon") + PASSAGE


def test_held_out_split_is_by_content_and_config_refuses_unknown_keys():
    keys = [f"row {i}" for i in range(50)]
    train, held = held_out_split(keys, keys, 0.2)
    assert 3 <= len(held) <= 20 and sorted(train + held) == sorted(keys)
    assert held_out_split(keys[::-1], keys[::-1], 0.2)[1] == held[::-1]   # order does not matter
    assert held_out_split(keys[:2], keys[:2], 0.1)[1]                      # at least one held out
    with pytest.raises(ValueError, match="unknown PosttrainConfig fields"):
        PosttrainConfig.from_dict({"kind": "sft", "base": "b", "out": "o", "data": "d", "learning_rate": 1})
    assert PosttrainConfig(kind="dpo", base="b", out="o", data="d", lora_rank=8).lr == 1e-4


def test_command_line_prints_json_metric_lines(world, tmp_path, capsys):
    argv = ["sft", "--base", str(world["bare"]), "--data", str(world["sft_data"]), "--out", str(tmp_path),
            "--max-steps", "2", "--config-json", json.dumps({"micro_batch": 4, "sample_prompts": []})]
    main(argv)
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[0]["event"] == "data" and lines[-1]["step"] == 2 and "sft/loss" in lines[-1]
    assert latest_checkpoint(tmp_path).name == "step-000002"
    with pytest.raises(SystemExit) as exit_info:
        main(argv[:-1] + ['{"lerning_rate": 1}'])
    assert exit_info.value.code == 2 and "unknown PosttrainConfig fields" in capsys.readouterr().err
