"""Post-training: supervised fine-tuning (SFT) of a pretrained checkpoint on chat data, then
Direct Preference Optimization (DPO) of the SFT checkpoint on preference pairs, full or LoRA.

    python -m model.posttrain sft --base CKPT --data sft.jsonl --out c2m-data/checkpoints/sft
    python -m model.posttrain dpo --base c2m-data/checkpoints/sft/step-000060 --data prefs.jsonl \\
        --out c2m-data/checkpoints/dpo --config-json '{"lora_rank": 8, "max_steps": 100}'

    from model.posttrain import PosttrainConfig, run_sft, run_dpo, self_play_pairs
    run_sft(PosttrainConfig(kind="sft", base=..., out=..., data=...), log=print)

Both loops share one skeleton (`_run`): load the base weights and the tokenizer the base was
trained with (model.hf.tokenizer_folder), read the data with quarantine (model.chat_data; one
{"event": "data"} line whose rows == examples + quarantined, with the first quarantine entries), hold out a deterministic fraction
of the examples by a hash of their content, optionally add LoRA adapters (model.lora), then
AdamW with warmup and cosine decay (model.train's make_optimizer and learning_rate). Every step
prints one JSON metric line; SFT names them "sft/loss", "sft/lr", "sft/grad_norm",
"sft/tokens_per_s", DPO uses TRL's names ("train/loss", "train/rewards/chosen", ...,
"train/logps/rejected", "train/lr", "train/grad_norm"). At step 0 (before any update), every
eval_every steps and at the end: the held-out metrics ("sft/eval_loss" on held-out assistant
tokens; "eval/loss", "eval/rewards/accuracies", ... for DPO, and "eval/ref_chosen_preferred": the
share of held-out pairs whose chosen side the reference already prefers, near 0.5 for pairs that
are not trivially separable), "val/loss" and "val/ppl" on the
pretraining val shards of the base's manifest (so one sees that tuning does not wreck the
language model; skipped with a note when the base has no manifest), and, at step 0 and at the
end, greedy replies to `sample_prompts` ("samples"), to compare before and after.

DPO's reference is the base model (the SFT checkpoint). Its completion log-probs are computed
once, before the first update (and before a resume loads trained weights), for every train and
held-out pair, and kept in memory: two floats per pair, so no second copy of the weights exists
during training. With LoRA they are computed inside `adapters_disabled` (the same weights).

Checkpoints are out/step-NNNNNN folders (model.checkpoint) whose meta.json holds the model
config, "kind", "base", "posttrain" (this config), "tokenizer" (absolute folder, so
model.hf.tokenizer_folder, model.sampling.load_model and the exporters work on them) and
"train": {"manifest": the base's} (val windows keep working down the chain). With LoRA,
model.safetensors holds the MERGED plain weights (exports and load_model need nothing else) and
lora.safetensors the adapters: a resume rebuilds base weights + adapters + optimizer state.
Batches come from (seed, step), so resume="auto" continues from the latest checkpoint with the
same losses, bitwise on CPU.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import os
import shutil
import sys
import time
import warnings
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer

from model.chat_data import (IGNORE, BadRow, _cut, chat_prompt_ids, encode_preference, encode_sft,
                             load_preferences, load_sft, reasons, sft_batches)
from model.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint, save_checkpoint, step_folder
from model.data import ShardBatches
from model.dpo import collate_pairs, dpo_batch_loss, precompute_reference
from model.generate import generate
from model.hf import tokenizer_folder
from model.llama import Llama
from model.lora import (adapters_disabled, add_lora, load_lora_state_dict, lora_settings,
                        lora_state_dict, merge_lora, trainable_parameters)
from model.sampling import load_model
from model.settings import PosttrainConfig
from model.tokenizer import END_OF_TURN
from model.train import evaluate, learning_rate, make_optimizer

PREVIEW_CHARS = 160
VAL_BATCH = 8  # windows per val batch, whatever micro_batch is: SFT and DPO score the same val windows
QUARANTINE_SHOWN = 200  # quarantine entries carried by the "data" event (all are counted in "reasons")


# ---------------------------------------------------------------- shared helpers

def held_out_split(items: list, keys: list[str], fraction: float) -> tuple[list, list]:
    """(train, held_out): an item is held out when the sha256 of its key falls below `fraction`,
    so the split does not depend on row order. With fraction > 0 and two items or more, each side
    gets at least one (the lowest hash is held out, the highest trains)."""
    scores = [int.from_bytes(hashlib.sha256(k.encode()).digest()[:8], "little") / 2 ** 64 for k in keys]
    held = [s < fraction for s in scores]
    if fraction > 0 and len(items) >= 2:
        held[int(np.argmin(scores))] = True
        held[int(np.argmax(scores))] = False
    return [x for x, h in zip(items, held) if not h], [x for x, h in zip(items, held) if h]


def reply(model: Llama, tokenizer: Tokenizer, prompts: list[str], max_new_tokens: int,
          temperature: float = 0.0, top_k: int | None = None, seed: int | None = None) -> list[str]:
    """The model's assistant replies to user prompts (stopping at <|end_of_turn|>), decoded."""
    ids = [chat_prompt_ids(tokenizer, p) for p in prompts]
    room = min(max_new_tokens, model.config.max_seq_len - max(len(i) for i in ids))
    new = generate(model, ids, max(room, 0), temperature=temperature, top_k=top_k,
                   eos_id=tokenizer.token_to_id(END_OF_TURN), seed=seed)
    return [tokenizer.decode(n) for n in new]  # special tokens (the end of turn) are skipped


def _chunks(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def _draw(count: int, batch_size: int, seed: int, index: int) -> list[int]:
    """Example indices of batch `index`: drawn with replacement from (seed, index), like sft_batches."""
    return np.random.Generator(np.random.PCG64([seed, index])).integers(0, count, size=batch_size).tolist()


def data_files(data: str | list) -> list[str]:
    return [str(p) for p in ([data] if isinstance(data, (str, Path)) else data)]


def _load(task, data: str | list) -> tuple[list, list[str], list[dict], int]:
    """(encoded examples, their split keys, quarantine, how many were truncated) of every file: the
    rows the task's reader refuses, and the examples its encoder refuses (e.g. "too-long"), are quarantined."""
    examples, quarantine = [], []
    for path in data_files(data):
        rows, bad = task.read(path)
        examples += [(path, row) for row in rows]
        quarantine += bad
    encoded, keys, truncated = [], [], 0
    for path, example in examples:
        try:
            item, cut = task.encode(example)
        except BadRow as e:
            preview = json.dumps(example, ensure_ascii=False)[:PREVIEW_CHARS]
            quarantine.append({"source": str(path), "line": None, "reason": e.reason, "preview": preview})
            continue
        encoded.append(item)
        keys.append(json.dumps(example, sort_keys=True))  # messages, or (prompt messages, chosen, rejected)
        truncated += cut
    return encoded, keys, quarantine, truncated


# ---------------------------------------------------------------- the two objectives

class _SFT:
    """Next-token loss on assistant tokens (encode_sft's mask)."""
    prefix = "sft/"
    read = staticmethod(load_sft)  # -> (examples, quarantine)

    def __init__(self, cfg: PosttrainConfig, tokenizer: Tokenizer, seq_len: int, device, autocast):
        self.cfg, self.tokenizer, self.seq_len, self.device, self.autocast = cfg, tokenizer, seq_len, device, autocast

    def encode(self, messages: list[dict]) -> tuple[object, bool]:
        item = encode_sft(messages, self.tokenizer, max_len=self.seq_len + 1)
        return item, item.truncated

    def prepare(self, model, train: list, held: list) -> None:
        self.train, self.held = train, held

    def loss(self, model, index: int) -> tuple[torch.Tensor, dict, int]:
        x, y, _ = sft_batches(self.train, self.cfg.micro_batch, self.seq_len, self.cfg.pack, self.cfg.seed, index)
        with self.autocast():
            _, loss = model(x.to(self.device), y.to(self.device))
        return loss, {"loss": loss.item()}, x.numel()

    @torch.no_grad()
    def evaluate(self, model) -> dict:
        """Mean loss over the held-out assistant tokens, each example once (up to eval_batches batches)."""
        total, count = 0.0, 0
        for chunk in _chunks(self.held, self.cfg.micro_batch)[:self.cfg.eval_batches]:
            rows = [sft_batches([example], 1, self.seq_len, False, 0, 0) for example in chunk]  # one padded row each
            width = max(len(ids) for ids, _ in chunk) - 1
            x, y = (torch.cat([r[k] for r in rows])[:, :width].to(self.device) for k in (0, 1))
            with self.autocast():
                logits, _ = model(x)
            total += F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), ignore_index=IGNORE,
                                     reduction="sum").item()
            count += int((y != IGNORE).sum())
        return {"sft/eval_loss": total / max(count, 1)}


class _DPO:
    """The DPO (or IPO) loss against the base model's precomputed completion log-probs."""
    prefix = "train/"
    read = staticmethod(load_preferences)  # -> (examples, quarantine)

    def __init__(self, cfg: PosttrainConfig, tokenizer: Tokenizer, seq_len: int, device, autocast):
        self.cfg, self.tokenizer, self.seq_len, self.device, self.autocast = cfg, tokenizer, seq_len, device, autocast
        self.average = cfg.loss_type == "ipo"  # TRL scores IPO with length-averaged log-probs

    def encode(self, pair) -> tuple[object, bool]:
        item = encode_preference(pair, self.tokenizer, max_len=self.seq_len + 1)
        return item, item["truncated"]

    def _reference(self, model, pairs: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
        batches = [collate_pairs(c) for c in _chunks(pairs, self.cfg.micro_batch)]
        batches = [{k: v.to(self.device) for k, v in b.items()} for b in batches]
        with self.autocast():
            refs = precompute_reference(model, batches, average=self.average)
        if not refs:
            return None, None
        return torch.cat([r[0] for r in refs]).float(), torch.cat([r[1] for r in refs]).float()

    def prepare(self, model, train: list, held: list) -> None:
        """Reference log-probs of every pair, from the model as it is now (the base)."""
        self.train, self.held = train, held
        with adapters_disabled(model) if self.cfg.lora_rank else nullcontext():
            self.ref_train, self.ref_held = self._reference(model, train), self._reference(model, held)

    def _loss(self, model, pairs: list[dict], ref: tuple, picks: list[int]) -> tuple[torch.Tensor, dict]:
        batch = {k: v.to(self.device) for k, v in collate_pairs([pairs[i] for i in picks]).items()}
        with self.autocast():
            return dpo_batch_loss(model, batch, ref[0][picks], ref[1][picks], beta=self.cfg.beta,
                                  loss_type=self.cfg.loss_type, label_smoothing=self.cfg.label_smoothing,
                                  average=self.average)

    def loss(self, model, index: int) -> tuple[torch.Tensor, dict, int]:
        picks = _draw(len(self.train), self.cfg.micro_batch, self.cfg.seed, index)
        loss, metrics = self._loss(model, self.train, self.ref_train, picks)
        tokens = sum(len(self.train[i]["prompt_ids"]) * 2 + len(self.train[i]["chosen_ids"])
                     + len(self.train[i]["rejected_ids"]) for i in picks)
        return loss, {"loss": loss.item(), **metrics}, tokens

    @torch.no_grad()
    def evaluate(self, model) -> dict:
        """Held-out pairs, each once (up to eval_batches batches); metrics weighted by pairs."""
        sums: dict[str, float] = {}
        indices = list(range(len(self.held)))[:self.cfg.eval_batches * self.cfg.micro_batch]
        for chunk in _chunks(indices, self.cfg.micro_batch):
            loss, metrics = self._loss(model, self.held, self.ref_held, chunk)
            for key, value in {"loss": loss.item(), **metrics}.items():
                sums[key] = sums.get(key, 0.0) + value * len(chunk)
        result = {f"eval/{k}": v / len(indices) for k, v in sums.items()}
        if self.ref_held[0] is not None:
            # the reference's own preference, fixed through training: near 0.5 when the pairs are not
            # trivially separable to the model being tuned (at step 0 every reward is 0: a tie)
            chosen, rejected = (side[:len(indices)] for side in self.ref_held)
            result["eval/ref_chosen_preferred"] = float((chosen > rejected).float().mean())
        return result


# ---------------------------------------------------------------- the loop

def _device(cfg: PosttrainConfig) -> torch.device:
    if cfg.device == "cpu" or (cfg.device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    return torch.device("cuda")


def _val_shards(base_meta: dict, seq_len: int, batch_size: int, emit) -> tuple[ShardBatches | None, str | None]:
    manifest = base_meta.get("train", {}).get("manifest")
    if not manifest:
        emit({"event": "note", "message": "the base checkpoint names no pretraining manifest: val/loss is skipped"})
        return None, None
    try:
        return ShardBatches(manifest, "val", seq_len, batch_size), manifest
    except (OSError, ValueError) as exc:
        emit({"event": "note", "message": f"pretraining val shards unusable, val/loss is skipped: {exc}"})
        return None, manifest


def _save(path: Path, model, optimizer, meta: dict, lora: bool) -> None:
    """With LoRA: model.safetensors gets merged weights (of a copy) and lora.safetensors the
    adapters, written in a staging folder that is renamed whole (a step-* folder is complete)."""
    if not lora:
        save_checkpoint(path, model, optimizer, meta)
        return
    staging = path.with_name(f"partial-{path.name}")
    save_checkpoint(staging, merge_lora(copy.deepcopy(model)), optimizer, meta)
    save_file(lora_state_dict(model), str(staging / "lora.safetensors"))
    shutil.rmtree(path, ignore_errors=True)
    os.rename(staging, path)


def _resume(found: Path, model, optimizer, lora: bool, device) -> dict:
    if not lora:
        return load_checkpoint(found, model, optimizer, expect_config=model.config.to_dict())
    # model.safetensors holds merged weights, which must not be trained on again: the base weights
    # are already in `model`; take only the optimizer state and RNG (the weights land on a meta shell).
    with torch.device("meta"):
        shell = Llama(model.config)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "copying ... to a meta parameter is a no-op"
        meta = load_checkpoint(found, shell, optimizer, expect_config=model.config.to_dict())
    load_lora_state_dict(model, load_file(str(found / "lora.safetensors"), device=str(device)))
    return meta


def _run(cfg: PosttrainConfig, task_class, log=None) -> dict:
    emit = log or (lambda m: print(json.dumps(m), flush=True))
    device = _device(cfg)
    use_bf16 = cfg.bf16 if cfg.bf16 is not None else device.type == "cuda"
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if use_bf16 else nullcontext

    model, base_meta = load_model(cfg.base)
    tokenizer_dir = tokenizer_folder(Path(cfg.base)).resolve()
    tokenizer = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    seq_len = cfg.seq_len or model.config.max_seq_len
    if seq_len > model.config.max_seq_len:
        raise ValueError(f"seq_len {seq_len} exceeds the base model's max_seq_len {model.config.max_seq_len}")

    task = task_class(cfg, tokenizer, seq_len, device, autocast)
    encoded, keys, quarantine, truncated = _load(task, cfg.data)
    train, held = held_out_split(encoded, keys, cfg.held_out_fraction)
    emit({"event": "data", "kind": cfg.kind, "source": ", ".join(data_files(cfg.data)), "rows": len(encoded) + len(quarantine),
          "examples": len(encoded), "quarantined": len(quarantine), "reasons": dict(reasons(quarantine)),
          "truncated": truncated, "train": len(train), "held_out": len(held), "quarantine": quarantine[:QUARANTINE_SHOWN]})
    if not train:
        raise ValueError(f"{cfg.data}: no usable {cfg.kind} example to train on ({len(quarantine)} quarantined)")

    torch.manual_seed(cfg.seed)  # LoRA's A init (and its dropout) come from torch's RNG
    if cfg.lora_rank:
        add_lora(model, cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_targets)
    model.to(device).train()
    task.prepare(model, train, held)
    optimizer = make_optimizer(model, cfg, fused=device.type == "cuda")
    val, manifest = _val_shards(base_meta, seq_len, VAL_BATCH, emit)

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    start, metrics = 0, {}
    found = latest_checkpoint(out) if cfg.resume == "auto" else None
    if found is not None:
        meta = _resume(found, model, optimizer, bool(cfg.lora_rank), device)
        if meta.get("kind") != cfg.kind or meta.get("lora") != (lora_settings(model) if cfg.lora_rank else None):
            raise CheckpointError(f"{found} is a {meta.get('kind')} checkpoint with LoRA {meta.get('lora')}; "
                                  f"this run is {cfg.kind} with lora_rank {cfg.lora_rank}: use another --out")
        start, metrics = meta["step"], meta.get("metrics", {})
        emit({"event": "resumed", "step": start, "checkpoint": str(found)})
    trainable, total = trainable_parameters(model)
    emit({"event": "start", "kind": cfg.kind, "base": str(cfg.base), "params": total, "trainable": trainable,
          "lora": lora_settings(model) if cfg.lora_rank else None, "seq_len": seq_len, "lr": cfg.lr,
          "device": str(device)})

    def evaluation(samples: bool) -> dict:
        model.eval()  # no (LoRA) dropout while measuring
        try:
            result = task.evaluate(model) if held else {}
        finally:
            model.train()
        if val is not None:
            result["val/loss"] = evaluate(model, val, cfg.eval_batches, device, autocast)
            result["val/ppl"] = math.exp(min(result["val/loss"], 50))
        if samples and cfg.sample_prompts:
            result["samples"] = reply(model, tokenizer, list(cfg.sample_prompts), cfg.sample_tokens)
        return result

    if start == 0:
        emit({"step": 0, **evaluation(samples=True)})  # before any update: the "before" of before/after
    saved_meta = {"config": model.config.to_dict(), "kind": cfg.kind, "base": str(Path(cfg.base).resolve()),
                  "posttrain": asdict(cfg), "tokenizer": str(tokenizer_dir),
                  "lora": lora_settings(model) if cfg.lora_rank else None}
    if manifest:
        saved_meta["train"] = {"manifest": manifest}
    prefix, accumulation = task.prefix, cfg.grad_accumulation
    for step in range(start, cfg.max_steps):
        started = time.perf_counter()
        lr = learning_rate(cfg, step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        sums, tokens = {}, 0
        for micro in range(accumulation):
            loss, values, count = task.loss(model, step * accumulation + micro)
            (loss / accumulation).backward()
            tokens += count
            for key, value in values.items():
                sums[key] = sums.get(key, 0.0) + value / accumulation
        grad_norm = torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        done = step + 1
        seconds = time.perf_counter() - started
        metrics = {"step": done, **{prefix + k: v for k, v in sums.items()}, prefix + "lr": lr,
                   prefix + "grad_norm": float(grad_norm), prefix + "tokens_per_s": tokens / seconds}
        if done % cfg.eval_every == 0 or done == cfg.max_steps:
            metrics.update(evaluation(samples=done == cfg.max_steps))
        emit(metrics)
        if done % cfg.checkpoint_every == 0 or done == cfg.max_steps:
            _save(step_folder(out, done), model, optimizer,
                  {"step": done, **saved_meta, "data": {"seed": cfg.seed, "train": len(train), "held_out": len(held),
                                                        "next_batch": done * accumulation}, "metrics": metrics},
                  bool(cfg.lora_rank))
    return metrics


def run_sft(cfg: PosttrainConfig, log=None) -> dict:
    """Supervised fine-tuning (assistant-token loss); returns the last metrics."""
    if cfg.kind != "sft":
        raise ValueError(f"run_sft needs kind='sft', got {cfg.kind!r}")
    return _run(cfg, _SFT, log)


def run_dpo(cfg: PosttrainConfig, log=None) -> dict:
    """Direct Preference Optimization against the base model; returns the last metrics."""
    if cfg.kind != "dpo":
        raise ValueError(f"run_dpo needs kind='dpo', got {cfg.kind!r}")
    return _run(cfg, _DPO, log)


# ---------------------------------------------------------------- pairs when the user gives none

def self_play_pairs(model: Llama, tokenizer: Tokenizer, texts: list[str], n: int, prompt_chars: int = 400,
                    max_new_tokens: int = 48, seed: int = 0, temperature: float = 0.8, top_k: int | None = 50,
                    batch_size: int = 16) -> list[dict]:
    """Up to n DPO rows {"prompt", "chosen", "rejected"} from (held-out) documents: the prompt is
    "Continue this passage:\\n<start>" (the start cut near prompt_chars at a paragraph, sentence or
    word break), chosen is the document's real continuation trimmed to about the length of
    rejected, the model's own sampled reply. Pairs whose two sides are equal, or whose reply is
    empty, are skipped. Deterministic: documents are taken in an order hashed from (seed, text)
    and each batch samples from seed + its number (same device, same pairs).

    What such pairs teach: prefer the corpus's real text over the model's own drift (repetition,
    incoherence). Not helpfulness or safety; use real preference data for those."""
    order = sorted(range(len(texts)), key=lambda i: hashlib.sha256(f"{seed}\0{texts[i]}".encode()).digest())
    candidates = []
    for i in order:
        text = texts[i].strip() if isinstance(texts[i], str) else ""
        cut = _cut(text, prompt_chars)
        head, rest = text[:cut].strip(), text[cut:].strip()
        while head and len(chat_prompt_ids(tokenizer, f"Continue this passage:\n{head}")) + max_new_tokens \
                > model.config.max_seq_len:
            head = head[:_cut(head, len(head) * 3 // 4)].strip()  # shrink the start until it fits
        if head and len(rest) >= 20:
            candidates.append((f"Continue this passage:\n{head}", rest))
    pairs: list[dict] = []
    for number, batch in enumerate(_chunks(candidates, batch_size)):
        replies = reply(model, tokenizer, [p for p, _ in batch], max_new_tokens, temperature, top_k, seed + number)
        for (prompt, rest), rejected in zip(batch, replies):
            rejected = rejected.strip()
            chosen = rest[:_cut(rest, max(len(rejected), 20))].strip()
            if rejected and chosen != rejected:
                pairs.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
                if len(pairs) == n:
                    return pairs
    return pairs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("kind", choices=("sft", "dpo"))
    parser.add_argument("--base", required=True, help="checkpoint folder to start from")
    parser.add_argument("--data", required=True, help="JSONL, JSONL.gz or Parquet chat/preference rows")
    parser.add_argument("--out", required=True, help="checkpoint folder (resumed from when it holds checkpoints)")
    parser.add_argument("--config-json", default="{}", help="more PosttrainConfig fields as a JSON object")
    parser.add_argument("--max-steps", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--lora-rank", type=int)
    args = parser.parse_args(argv)
    values = {**json.loads(args.config_json), "kind": args.kind, "base": args.base, "data": args.data, "out": args.out}
    values.update({k: v for k, v in (("max_steps", args.max_steps), ("lr", args.lr), ("lora_rank", args.lora_rank))
                   if v is not None})
    try:
        cfg = PosttrainConfig.from_dict(values)
        (run_sft if cfg.kind == "sft" else run_dpo)(cfg)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
