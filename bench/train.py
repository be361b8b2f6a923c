"""Benchmark: training tokens/s (forward, backward, AdamW step) of crawl2model's Llama against
Hugging Face transformers' LlamaForCausalLM built from the identical config, in one run, with
the same batch, sequence length, threads, dtype and optimizer. Runs with torch (+ transformers
for the peer) alone, so it runs as is on a GPU machine.

    .venv/bin/python bench/train.py                          # CPU: preset small, vocab 8192, B8 T256, fp32
    python bench/train.py --preset 124m --vocab 49152 --batch 16 --seq 1024   # CUDA: bf16 + torch.compile

Prints tokens/s of both, the ratio (goal on CPU >= 1.2x), model FLOPs per token (6 x parameters
including the output layer, plus attention 12 x layers x dim x seq) and, on a GPU whose peak is
known (model.train.PEAK_FLOPS), MFU for both (goal >= 45% on an H100 for 124m in bf16 + compile).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from model.config import ModelConfig  # noqa: E402
from model.llama import Llama  # noqa: E402
from model.train import PEAK_FLOPS  # noqa: E402


def hf_llama(config: ModelConfig):
    from transformers import LlamaConfig, LlamaForCausalLM

    hf_config = LlamaConfig(
        vocab_size=config.vocab_size, hidden_size=config.dim, intermediate_size=config.ffn_dim,
        num_hidden_layers=config.n_layers, num_attention_heads=config.n_heads, num_key_value_heads=config.n_kv_heads,
        max_position_embeddings=config.max_seq_len, rms_norm_eps=config.norm_eps, rope_theta=config.rope_theta,
        tie_word_embeddings=config.tie_embeddings, attention_bias=False, mlp_bias=False)
    return LlamaForCausalLM._from_config(hf_config, attn_implementation="sdpa")


def measure(name: str, model, step_loss, args, device, autocast) -> dict:
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), fused=device.type == "cuda" or None)
    step = torch.compile(step_loss) if args.compile else step_loss
    x = torch.randint(0, args.vocab, (args.batch, args.seq), device=device)
    y = torch.randint(0, args.vocab, (args.batch, args.seq), device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = []
    for i in range(args.warmup + args.steps):
        sync()
        started = time.perf_counter()
        with autocast():
            loss = step(model, x, y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync()
        if i >= args.warmup:
            times.append(time.perf_counter() - started)
    seconds = sorted(times)[len(times) // 2]  # median step
    result = {"side": name, "tokens_per_s": args.batch * args.seq / seconds, "step_seconds": seconds,
              "loss": loss.item(), "params": sum(p.numel() for p in model.parameters())}
    if device.type == "cuda":
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2 ** 30
        torch.cuda.reset_peak_memory_stats()
    model.cpu()
    return result


def ours_loss(model, x, y):
    return model(x, y)[1]


def hf_loss(model, x, y):
    logits = model(input_ids=x).logits.float()
    return torch.nn.functional.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1))


def main() -> None:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="124m" if cuda else "small")
    parser.add_argument("--vocab", type=int, default=49152 if cuda else 8192)
    parser.add_argument("--batch", type=int, default=16 if cuda else 8)
    parser.add_argument("--seq", type=int, default=1024 if cuda else 256)
    parser.add_argument("--steps", type=int, default=20 if cuda else 5)
    parser.add_argument("--warmup", type=int, default=5 if cuda else 2)
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=cuda)
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=cuda)
    parser.add_argument("--sides", default="crawl2model,transformers")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    device = torch.device("cuda" if cuda else "cpu")
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    config = ModelConfig.from_preset(args.preset, args.vocab, max_seq_len=max(args.seq, 16))
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if args.bf16 else nullcontext
    flops = config.flops_per_token(args.seq)
    peak = next((f for k, f in PEAK_FLOPS.items() if cuda and k in torch.cuda.get_device_name()), None)
    where = torch.cuda.get_device_name() if cuda else f"CPU, {torch.get_num_threads()} threads"
    print(f"{args.preset}: {config.num_params():,} parameters (vocab {args.vocab}), batch {args.batch} x seq {args.seq}, "
          f"{'bf16' if args.bf16 else 'fp32'}{' + compile' if args.compile else ''}, {where}; "
          f"{flops / 1e6:.1f} MFLOPs per token", flush=True)
    results = []
    for side in args.sides.split(","):
        torch.manual_seed(0)
        model, loss = (Llama(config), ours_loss) if side == "crawl2model" else (hf_llama(config), hf_loss)
        result = measure(side, model, loss, args, device, autocast)
        if peak:
            result["mfu"] = flops * result["tokens_per_s"] / peak
        results.append(result)
        print(f"  {side:13s} {result['tokens_per_s']:12,.0f} tokens/s  {result['params']:,} params"
              + (f"  MFU {result['mfu'] * 100:.1f}%" if peak else "")
              + (f"  peak {result['peak_memory_gib']:.1f} GiB" if cuda else ""), flush=True)
        del model
    if len(results) == 2:
        print(f"ratio crawl2model / transformers: {results[0]['tokens_per_s'] / results[1]['tokens_per_s']:.2f}x")
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, "device": where,
                                         "flops_per_token": flops, "results": results}, indent=1))


if __name__ == "__main__":
    main()
