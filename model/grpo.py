"""GRPO (group relative policy optimization, DeepSeekMath; TRL's GRPOTrainer) on problems whose
final answer a program checks (model.verifiable): sample a group of replies per prompt, reward
the right answers, push up the replies that beat their group's mean.

    python -m model.grpo --base c2m-data/checkpoints/sft/step-000060 --out c2m-data/checkpoints/rl \\
        --config-json '{"max_steps": 30, "group_size": 8}'

    from model.grpo import RlConfig, run_rl
    run_rl(RlConfig(base=..., out=..., families=["arithmetic"]), log=print)

Each step takes the next `prompts_per_step` train problems (from (seed, step)), samples
`group_size` replies to each with the KV cache in one batch (model.generate, seeded from (seed,
step)), scores them with model.verifiable.reward (1 right + format_reward well-formed), and
normalizes the rewards within each group (group_advantages). The loss is the per-token clipped
surrogate with an optional k3 KL penalty to the frozen base (grpo_loss), averaged over each
reply's tokens, then over replies; `iterations` > 1 reuses one batch of replies for several
updates (then the ratio to the sampling policy moves and clipping acts; with 1 it is exactly 1).

Like model.posttrain's loops, every line goes through `log`: {"event": "data"} (train and
held-out counts), {"event": "start"}, then one line per step with "rl/reward_mean",
"rl/reward_std" (within a group, averaged over groups), "rl/kl" (only with kl_beta > 0: no
reference is held otherwise), "rl/completion_length" (tokens, end-of-turn included),
"rl/clip_ratio", "rl/loss", "rl/lr", "rl/grad_norm", "rl/format_rate". Step 0 (before any
update), every eval_every steps and the last step add "rl/accuracy_heldout" (greedy, on
`heldout_problems` held-out problems); step 0 and the last add "samples" (greedy replies to
sample_prompts). Checkpoints out/step-NNNNNN (model.posttrain._save) carry meta "kind": "rl",
"base", "tokenizer", "rl" (this config), "train": {"manifest": the base's}; resume="auto" goes on
from the latest one with the same rollouts and losses (bitwise on CPU).

Measured on the `small` preset (2 shared CPU cores; SFT model at 31% greedy accuracy on 64
held-out two-digit problems): a step of 8 prompts x 8 replies takes about 2 s uncontended.
30 steps at lr 1e-5 and temperature 0.6 (the defaults) left held-out accuracy at 30-31%;
lr 3e-5 to 5e-5 first dropped it to 19-20%, then back to 25-28% as the rate decayed. The loop
does learn: on a pool of 14 train prompts seen again and again the mean reward went from 0.23
to 0.5-0.6 in 24 steps. From an SFT model just past its digit-copying phase change (23.4% on
1,024 held-out problems), 60 steps of 16 prompts x 16 replies, lr 1e-4 cosine to 1e-5 (~4 min),
reached 34.4-36.0% (+11 to +12.6 points, three seeds) at temperature 0.5, 29-31% at 1.0 (README).
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer

from model.chat_data import BadRow, chat_prompt_ids, encode_sft, load_sft, reasons, sft_batches
from model.checkpoint import CheckpointError, latest_checkpoint, step_folder
from model.generate import generate
from model.hf import tokenizer_folder
from model.posttrain import _device, _resume, _save, held_out_split, reply
from model.sampling import load_model
from model.settings import RlConfig
from model.tokenizer import END_OF_TURN
from model.train import learning_rate, make_optimizer
from model.verifiable import Problem, accuracy, final_answer, load_problems, problems, reward


# ---------------------------------------------------------------- the loss

def group_advantages(rewards: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """rewards (P, G), G replies to each of P prompts -> (r - group mean) / (group std + eps), the
    std with Bessel's correction as TRL computes it; a group of equal rewards gets zeros."""
    if rewards.dim() != 2 or rewards.shape[1] < 2:
        raise ValueError(f"rewards must be (prompts, group of >= 2), got {tuple(rewards.shape)}")
    advantages = (rewards - rewards.mean(1, keepdim=True)) / (rewards.std(1, keepdim=True) + eps)
    # exactly 0, not the mean's rounding error over eps (a group of 0.1s gave -7e-5 each)
    return advantages.masked_fill((rewards == rewards[:, :1]).all(1, keepdim=True), 0.0)


def grpo_loss(logps: torch.Tensor, old_logps: torch.Tensor, ref_logps: torch.Tensor | None,
              advantages: torch.Tensor, mask: torch.Tensor, clip_eps: float = 0.2,
              kl_beta: float = 0.0) -> tuple[torch.Tensor, dict]:
    """GRPO's loss (DeepSeekMath eq. 3; TRL's loss_type="grpo") and its metrics.

    logps, old_logps, ref_logps: (B, T) log-probs of the sampled tokens under the policy being
    trained, the policy that sampled them, and the reference (None when kl_beta is 0); advantages
    (B,); mask (B, T) marks reply tokens. Per token, with ratio = exp(logps - old_logps):
        -min(ratio * A, clip(ratio, 1 - clip_eps, 1 + clip_eps) * A) + kl_beta * k3
    where k3 = exp(ref - logps) - (ref - logps) - 1 (Schulman's unbiased, positive KL estimator);
    averaged over each reply's tokens, then over replies. Metrics (floats): "kl" (mean k3 over
    reply tokens; only with a reference) and "clip_ratio" (reply tokens whose objective was
    clipped: ratio below 1 - clip_eps with A < 0, or above 1 + clip_eps with A > 0)."""
    mask = mask.to(logps.dtype)
    ratio = torch.exp(logps - old_logps)
    adv = advantages.to(logps.dtype).unsqueeze(1)
    per_token = -torch.min(ratio * adv, torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps) * adv)
    tokens = mask.sum().clamp(min=1)
    metrics = {}
    if ref_logps is not None:
        delta = ref_logps - logps
        k3 = torch.exp(delta) - delta - 1
        per_token = per_token + kl_beta * k3
        metrics["kl"] = float((k3.detach() * mask).sum() / tokens)
    clipped = ((ratio < 1 - clip_eps) & (adv < 0)) | ((ratio > 1 + clip_eps) & (adv > 0))
    metrics["clip_ratio"] = float((clipped.to(mask.dtype) * mask).sum() / tokens)
    loss = ((per_token * mask).sum(1) / mask.sum(1).clamp(min=1)).mean()
    return loss, metrics


def token_logps(model: torch.nn.Module, input_ids: torch.Tensor, mask: torch.Tensor,
                temperature: float = 1.0) -> torch.Tensor:
    """(B, T-1) log p(input_ids[:, t+1] | ..t) where mask (B, T-1) is set, 0 elsewhere: the
    logits of positions before the first masked target are not normalized (not needed).
    `temperature` scales the logits as the sampler did, so the ratio and the gradient are those of
    the distribution the replies came from (TRL does the same)."""
    logits, _ = model(input_ids[:, :-1])
    first = int(mask.any(0).float().argmax()) if mask.any() else mask.shape[1]
    logits, targets = logits[:, first:].float() / temperature, input_ids[:, first + 1:]
    picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)
    out = torch.zeros(mask.shape, dtype=picked.dtype, device=picked.device)
    out[:, first:] = picked
    return out * mask


def collate(prompts: list[list[int]], replies: list[list[int]], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """prompt + reply rows right-padded (causal attention: the padding changes nothing before it)
    -> input_ids (B, T) and the mask (B, T-1) of targets that are reply tokens."""
    rows = [p + r for p, r in zip(prompts, replies)]
    width = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width - 1), dtype=torch.bool)
    for i, (row, prompt) in enumerate(zip(rows, prompts)):
        input_ids[i, :len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, len(prompt) - 1:len(row) - 1] = True
    return input_ids, mask


# ---------------------------------------------------------------- the loop

def problem_sets(cfg: RlConfig, fits=None) -> tuple[list[Problem], list[Problem], dict]:
    """(train, held-out, the "data" event): the families' splits, or the data file split by a
    hash of each prompt (as flows.assistant_data does, so the eval stage holds out the same).
    Problems whose prompt does not `fits(prompt)` are quarantined as "too-long"."""
    if cfg.data is None:
        train = problems(cfg.families, cfg.max_steps * cfg.prompts_per_step, cfg.seed, "train")
        held = problems(cfg.families, cfg.heldout_problems, cfg.seed, "heldout")
        source, quarantine, rows = ", ".join(cfg.families), [], len(train) + len(held)
    else:
        loaded, quarantine = load_problems(cfg.data)
        rows = len(loaded) + len(quarantine)
        train, held = held_out_split(loaded, [p.prompt for p in loaded], cfg.held_out_fraction)
        random.Random(cfg.seed).shuffle(train)  # the file's order (sorted, grouped) is not the training order
        source = str(cfg.data)
    if fits is not None:
        quarantine += [{"line": None, "reason": "too-long", "preview": p.prompt[:160]}
                       for p in train + held if not fits(p.prompt)]
        train, held = [p for p in train if fits(p.prompt)], [p for p in held if fits(p.prompt)]
    held = held[:cfg.heldout_problems]
    event = {"event": "data", "kind": "rl", "source": source, "rows": rows, "examples": rows - len(quarantine),
             "quarantined": len(quarantine), "reasons": dict(reasons(quarantine)), "truncated": 0,
             "train": len(train), "held_out": len(held), "quarantine": quarantine[:200]}
    return train, held, event


def rollout_seed(seed: int, step: int) -> int:
    return int(np.random.SeedSequence([seed, step]).generate_state(1)[0])


def run_rl(cfg: RlConfig, log=None) -> dict:
    """GRPO from cfg.base; returns the last step's metrics."""
    emit = log or (lambda m: print(json.dumps(m), flush=True))
    device = _device(cfg)
    model, base_meta = load_model(cfg.base)
    tokenizer_dir = tokenizer_folder(Path(cfg.base)).resolve()
    tokenizer = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    eos = tokenizer.token_to_id(END_OF_TURN)

    train, held, event = problem_sets(cfg, fits=lambda prompt: len(chat_prompt_ids(tokenizer, prompt))
                                      + cfg.max_new_tokens <= model.config.max_seq_len)
    emit(event)
    if not train or not held:
        raise ValueError(f"rl needs train and held-out problems; got {len(train)} and {len(held)}")
    sample_prompts = cfg.sample_prompts if cfg.sample_prompts is not None else [p.prompt for p in held[:2]]

    replay = None
    if cfg.replay_data and cfg.replay_rows:
        rows = replay_rows(cfg.replay_data, tokenizer, model.config.max_seq_len)
        replay = lambda step: sft_batches(rows, cfg.replay_rows, model.config.max_seq_len, True, cfg.seed, step)[:2]  # noqa: E731
        emit({"event": "replay", "files": len(cfg.replay_data), "examples": len(rows)})
    model.to(device).train()
    reference = None
    if cfg.kl_beta > 0:  # the base as it is now, before a resume loads tuned weights
        reference = copy.deepcopy(model).eval().requires_grad_(False)
    optimizer = make_optimizer(model, cfg, fused=device.type == "cuda")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    start, metrics = 0, {}
    found = latest_checkpoint(out) if cfg.resume == "auto" else None
    if found is not None:
        meta = _resume(found, model, optimizer, False, device)
        if meta.get("kind") != "rl":
            raise CheckpointError(f"{found} is a {meta.get('kind')} checkpoint, not rl: use another --out")
        start, metrics = meta["step"], meta.get("metrics", {})
        emit({"event": "resumed", "step": start, "checkpoint": str(found)})
    params = sum(p.numel() for p in model.parameters())
    emit({"event": "start", "kind": "rl", "base": str(cfg.base), "params": params, "trainable": params, "lora": None,
          "seq_len": model.config.max_seq_len, "lr": cfg.lr, "device": str(device)})

    def evaluation(samples: bool) -> dict:
        result = {"rl/accuracy_heldout": accuracy(model, tokenizer, held, cfg.max_new_tokens)}
        if samples and sample_prompts:
            result["samples"] = reply(model, tokenizer, list(sample_prompts), cfg.max_new_tokens)
        return result

    if start == 0:
        emit({"step": 0, **evaluation(samples=True)})
    saved_meta = {"config": model.config.to_dict(), "kind": "rl", "base": str(Path(cfg.base).resolve()),
                  "rl": asdict(cfg), "tokenizer": str(tokenizer_dir), "lora": None}
    if base_meta.get("train", {}).get("manifest"):
        saved_meta["train"] = {"manifest": base_meta["train"]["manifest"]}
    group = cfg.group_size
    for step in range(start, cfg.max_steps):
        started = time.perf_counter()
        lr = learning_rate(cfg, step)
        for param_group in optimizer.param_groups:
            param_group["lr"] = lr
        batch = [train[(step * cfg.prompts_per_step + i) % len(train)] for i in range(cfg.prompts_per_step)]
        prompt_ids = [chat_prompt_ids(tokenizer, p.prompt) for p in batch for _ in range(group)]
        room = min(cfg.max_new_tokens, model.config.max_seq_len - max(len(p) for p in prompt_ids))
        replies = generate(model, prompt_ids, room, temperature=cfg.temperature, top_k=cfg.top_k, eos_id=eos,
                           seed=rollout_seed(cfg.seed, step))
        texts = [tokenizer.decode(r) for r in replies]
        problem_of = [p for p in batch for _ in range(group)]
        rewards = torch.tensor([reward(t, p, cfg.format_reward) for t, p in zip(texts, problem_of)])
        advantages = group_advantages(rewards.view(-1, group)).flatten()
        metrics = _update(model, reference, optimizer, cfg, prompt_ids, replies, advantages, device,
                          replay and (lambda: replay(step)))
        done = step + 1
        metrics = {"step": done, "rl/reward_mean": float(rewards.mean()),
                   "rl/reward_std": float(rewards.view(-1, group).std(1).mean()), **metrics,
                   "rl/completion_length": float(np.mean([len(r) for r in replies])),
                   "rl/format_rate": float(np.mean([final_answer(t) is not None for t in texts])),
                   "rl/lr": lr, "rl/step_seconds": time.perf_counter() - started}
        if done % cfg.eval_every == 0 or done == cfg.max_steps:
            metrics.update(evaluation(samples=done == cfg.max_steps))
        emit(metrics)
        if done % cfg.checkpoint_every == 0 or done == cfg.max_steps:
            _save(step_folder(out, done), model, optimizer,
                  {"step": done, **saved_meta, "data": {"seed": cfg.seed, "train": len(train), "held_out": len(held)},
                   "metrics": metrics}, False)
    return metrics


def replay_rows(files: list, tokenizer: Tokenizer, seq_len: int) -> list:
    """The encoded SFT examples of the files (rows that cannot be used are skipped: SFT counted them)."""
    encoded = []
    for path in files:
        for messages in load_sft(path)[0]:
            try:
                encoded.append(encode_sft(messages, tokenizer, max_len=seq_len + 1))
            except BadRow:
                continue
    return encoded


def _update(model, reference, optimizer, cfg: RlConfig, prompt_ids: list, replies: list, advantages: torch.Tensor,
            device, replay=None) -> dict:
    """cfg.iterations optimizer steps on one batch of replies, micro-batch by micro-batch; the
    metrics of the last iteration ("rl/loss", "rl/grad_norm", "rl/clip_ratio", "rl/kl").

    Without a KL term, a reply whose advantage is 0 (its group's rewards were all equal) adds
    exactly 0 to the loss and the gradient, so it is not run through the model at all: the
    gradient is the same, and a small model early in RL gets most groups all wrong."""
    keep = [i for i in range(len(replies)) if cfg.kl_beta > 0 or advantages[i] != 0]
    chunks = []
    for at in range(0, len(keep), cfg.micro_batch):
        rows = keep[at:at + cfg.micro_batch]
        ids, mask = collate([prompt_ids[i] for i in rows], [replies[i] for i in rows])
        ids, mask = ids.to(device), mask.to(device)
        with torch.no_grad():
            old = token_logps(model, ids, mask, cfg.temperature) if cfg.iterations > 1 else None
            ref = token_logps(reference, ids, mask, cfg.temperature) if reference is not None else None
        chunks.append((ids, mask, old, ref, advantages[rows].to(device)))
    for _ in range(cfg.iterations):
        sums: dict[str, float] = {"rl/loss": 0.0, "rl/clip_ratio": 0.0}
        if not chunks:  # every advantage 0: a zero gradient, and the optimizer steps as it would
            for param in model.parameters():
                if param.requires_grad:
                    param.grad = torch.zeros_like(param)
        for ids, mask, old, ref, adv in chunks:
            logps = token_logps(model, ids, mask, cfg.temperature)
            loss, values = grpo_loss(logps, logps.detach() if old is None else old, ref, adv, mask,
                                     cfg.clip_eps, cfg.kl_beta)
            share = len(ids) / len(replies)  # the mean over replies, across micro-batches
            (loss * share).backward()
            for key, value in {"loss": loss.item(), **values}.items():
                sums[f"rl/{key}"] = sums.get(f"rl/{key}", 0.0) + value * share
        if replay is not None:  # the SFT rows' loss, in the same step
            x, y = replay()
            _, replay_loss = model(x.to(device), y.to(device))
            (cfg.replay_coef * replay_loss).backward()
            sums["rl/replay_loss"] = replay_loss.item()
        sums["rl/grad_norm"] = float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return sums


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", required=True, help="checkpoint folder to start from (SFT or DPO)")
    parser.add_argument("--out", required=True, help="checkpoint folder (resumed from when it holds checkpoints)")
    parser.add_argument("--data", help='JSONL {"prompt", "answer"} problems instead of the built-in families')
    parser.add_argument("--config-json", default="{}", help="more RlConfig fields as a JSON object")
    args = parser.parse_args(argv)
    values = {**json.loads(args.config_json), "base": args.base, "out": args.out}
    if args.data:
        values["data"] = args.data
    try:
        run_rl(RlConfig.from_dict(values))
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
