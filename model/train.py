"""Pretraining loop (torch only): AdamW, warmup then cosine or warmup-stable-decay, gradient
accumulation to a tokens-per-step target, clipping, bf16 autocast and torch.compile on CUDA,
DistributedDataParallel under torchrun, evaluation, checkpoints that resume exactly.

    python -m model.train --manifest c2m-data/shards/<id>/manifest.json --out c2m-data/checkpoints/run1 \\
        --preset small --max-steps 300                       # one process
    torchrun --nproc_per_node 2 -m model.train --manifest ... --out ...   # DDP (gloo on CPU, nccl on CUDA)

    from model.train import TrainConfig, train
    train(TrainConfig(manifest=..., out=..., preset="tiny", max_steps=20), log=print)

Every metric line is a JSON object on stdout from rank 0 (`{"step": .., "train/loss": ..}`), so
a caller (flows/pretrain.py) streams them into Prefect's log and MLflow. Batches come from the
seed and the step number (model.data), the RNG state and optimizer state are in every
checkpoint, so a run killed and resumed with `resume=auto` continues with the same losses,
bitwise on CPU.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, fields
from pathlib import Path

import torch
import torch.distributed as dist

from model.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint, step_folder
from model.config import ModelConfig
from model.data import ShardBatches
from model.llama import Llama
from model.settings import TrainConfig
from model.tokenizer import load_tokenizer

# Dense bf16 peak FLOP/s of known accelerators, for MFU (per device).
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12}


def learning_rate(cfg: TrainConfig, step: int) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    low = cfg.lr * cfg.min_lr_ratio
    if cfg.schedule == "wsd":
        decay_start = int(cfg.max_steps * (1 - cfg.decay_fraction))
        if step < decay_start:
            return cfg.lr
        return cfg.lr - (cfg.lr - low) * (step - decay_start) / max(1, cfg.max_steps - decay_start)
    progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
    return low + 0.5 * (cfg.lr - low) * (1 + math.cos(math.pi * min(1.0, progress)))


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, fused: bool) -> torch.optim.AdamW:
    """Weight decay on matrices (embeddings, projections) only, not on norms."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=fused or None)


def _device(cfg: TrainConfig, local_rank: int) -> torch.device:
    if cfg.device == "cpu" or (cfg.device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((flops for key, flops in PEAK_FLOPS.items() if key in name), None)


@torch.no_grad()
def evaluate(model: Llama, val: ShardBatches, batches: int, device, autocast) -> float:
    model.eval()
    losses = []
    for x, y in val.eval_batches(batches):
        with autocast():
            _, loss = model(x.to(device), y.to(device))
        losses.append(loss.item())
    model.train()
    return sum(losses) / max(1, len(losses))


def sample_prompt_ids(prompts: list, manifest: dict) -> list[list[int]]:
    """Token ids of the sample prompts: text is encoded with the tokenizer the manifest names."""
    if not prompts or not isinstance(prompts[0], str):
        return [list(p) for p in prompts]
    if "tokenizer" not in manifest:
        raise ValueError("sample_prompts are text, but the manifest names no tokenizer: give token id lists or []")
    tokenizer = load_tokenizer(Path(manifest["tokenizer"]).parent)
    return [tokenizer.encode(p).ids for p in prompts]


def train(cfg: TrainConfig, log=None) -> dict:
    """Train; returns the last metrics. `log(dict)` receives each metrics line (rank 0)."""
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = _device(cfg, int(os.environ.get("LOCAL_RANK", "0")))
    if distributed and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    emit = (log or (lambda m: print(json.dumps(m), flush=True))) if rank == 0 else (lambda m: None)
    use_bf16 = cfg.bf16 if cfg.bf16 is not None else device.type == "cuda"
    use_compile = cfg.compile if cfg.compile is not None else device.type == "cuda"

    if not (cfg.manifest and cfg.out):
        raise ValueError("give the token shard manifest and the output folder (manifest=..., out=...)")
    manifest = json.loads(Path(cfg.manifest).read_text())
    model_config = ModelConfig.from_preset(cfg.preset, manifest["vocab_size"], **cfg.model_overrides)
    sample_ids = sample_prompt_ids(cfg.sample_prompts, manifest)
    seq_len = cfg.seq_len or model_config.max_seq_len
    per_step = cfg.micro_batch * seq_len * world
    accumulation = max(1, round(cfg.tokens_per_step / per_step))
    data = ShardBatches(cfg.manifest, "train", seq_len, cfg.micro_batch, cfg.seed, rank, world)
    val = ShardBatches(cfg.manifest, "val", seq_len, cfg.micro_batch)

    torch.manual_seed(cfg.seed)
    model = Llama(model_config).to(device)
    optimizer = make_optimizer(model, cfg, fused=device.type == "cuda")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    start = 0
    found = latest_checkpoint(out) if cfg.resume == "auto" else None
    if found is not None:
        meta = load_checkpoint(found, model, optimizer, expect_config=model_config.to_dict())
        start = meta["step"]
        emit({"event": "resumed", "step": start, "checkpoint": str(found)})
    step_model = torch.compile(model) if use_compile else model
    if distributed:
        step_model = torch.nn.parallel.DistributedDataParallel(step_model)
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if use_bf16 else nullcontext
    peak = peak_flops(device)
    flops_per_token = model_config.flops_per_token(seq_len)
    emit({"event": "start", "params": model_config.num_params(), "params_non_embedding":
          model_config.num_params(include_embeddings=False), "seq_len": seq_len, "accumulation": accumulation,
          "tokens_per_step": per_step * accumulation, "train_tokens": data.tokens, "device": str(device),
          "world_size": world, "flops_per_token": flops_per_token, "config": model_config.to_dict()})

    metrics: dict = {}
    for step in range(start, cfg.max_steps):
        started = time.perf_counter()
        lr = learning_rate(cfg, step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        total = 0.0
        for micro in range(accumulation):
            x, y = data.batch(step * accumulation + micro)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            sync = not distributed or micro == accumulation - 1
            context = step_model.no_sync() if distributed and not sync else nullcontext()
            with context, autocast():
                _, loss = step_model(x, y)
                (loss / accumulation).backward()
            total += loss.detach()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss_value = (total / accumulation).item()
        if distributed:
            reduced = torch.tensor([loss_value], device=device)
            dist.all_reduce(reduced)
            loss_value = reduced.item() / world
        seconds = time.perf_counter() - started
        tokens_per_s = per_step * accumulation / seconds
        metrics = {"step": step + 1, "train/loss": loss_value, "train/lr": lr, "train/grad_norm": float(grad_norm),
                   "train/tokens_per_s": tokens_per_s, "train/tokens_seen": (step + 1) * per_step * accumulation}
        if peak:
            metrics["train/mfu"] = flops_per_token * tokens_per_s / (peak * world)
        done = step + 1
        if done % cfg.eval_every == 0 or done == cfg.max_steps:
            metrics["val/loss"] = evaluate(model, val, cfg.eval_batches, device, autocast)
            metrics["val/ppl"] = math.exp(min(metrics["val/loss"], 50))
            if sample_ids and rank == 0:
                from model.generate import generate

                model.eval()
                metrics["samples"] = generate(model, sample_ids, max_new_tokens=32, temperature=0.0)
                model.train()
        emit(metrics)
        if rank == 0 and (done % cfg.checkpoint_every == 0 or done == cfg.max_steps):
            save_checkpoint(step_folder(out, done), model, optimizer,
                            {"step": done, "config": model_config.to_dict(), "train": asdict(cfg),
                             "data": {"seed": cfg.seed, "next_batch": done * accumulation}, "metrics": metrics})
    if distributed:
        dist.barrier()
        dist.destroy_process_group()
    return metrics


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--manifest", required=True, help="token shard manifest.json")
    parser.add_argument("--out", required=True, help="checkpoint folder (resumed from when it holds checkpoints)")
    parser.add_argument("--config-json", default="{}", help="more TrainConfig fields as a JSON object")
    for name in ("preset", "max_steps", "micro_batch", "tokens_per_step", "lr", "seed", "resume", "device"):
        kind = next(f.type for f in fields(TrainConfig) if f.name == name)
        parser.add_argument(f"--{name.replace('_', '-')}", type=int if kind == "int" else float if kind == "float" else str)
    args = parser.parse_args(argv)
    values = {"manifest": args.manifest, "out": args.out, **json.loads(args.config_json)}
    values.update({k: v for k, v in vars(args).items() if v is not None and k not in ("manifest", "out", "config_json")})
    try:
        train(TrainConfig.from_dict(values))
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
