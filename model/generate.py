"""Batched sampling from a model.llama.Llama with its KV cache.

    .venv/bin/python -m model.generate CHECKPOINT "The " [--max-new-tokens 64] [--temperature 0.8]

    from model.generate import generate, stream
    new = generate(model, [[5, 9, 2], [7]], max_new_tokens=50, temperature=0.8, top_p=0.95,
                   eos_id=0, seed=1234)        # new[i]: the tokens generated after prompts[i]
    for token in stream(model, [5, 9, 2], 50, temperature=0.8, eos_id=0, seed=1234):
        ...                                    # the same tokens as generate's row, one at a time

Prompts of different lengths are left-padded into one batch; the cache's `pad` masks the pad
slots out and starts each row's rotary positions at its first real token, so every row gets
what it would get alone. One prefill forward over the padded prompts, then one token per step.

Sampling: temperature 0 is greedy (argmax); otherwise logits / temperature, then top-k, then
top-p (nucleus: the smallest set of most likely tokens whose probability reaches top_p), then
an inverse-CDF draw from a torch.Generator seeded with `seed` (same seed, same device: same tokens).
A row stops after it emits eos_id; the eos token is included in its output, so a caller can
tell an eos stop from running out of max_new_tokens. The model's train/eval mode is restored.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import torch

from model.llama import KVCache, Llama


def filter_logits(logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """Set the logits (B, vocab) outside the top-k / nucleus to -inf (the most likely one always stays)."""
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # Drop a token when the tokens more likely than it already reach top_p.
        drop_sorted = probs.cumsum(dim=-1) - probs >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def next_tokens(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None,
                generator: torch.Generator | None) -> torch.Tensor:
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = filter_logits(logits / temperature, top_k, top_p).softmax(dim=-1)
    # Inverse-CDF draw: one uniform number per row. torch.multinomial draws an exponential per
    # vocabulary entry, which was half of a decode step's time at vocab 8192 on CPU. A token of
    # probability 0 never has a cumulative sum above the one before it, so it is never chosen.
    cdf = probs.cumsum(dim=-1)
    u = torch.rand(cdf.shape[0], 1, generator=generator, device=cdf.device, dtype=cdf.dtype) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp_(max=cdf.shape[-1] - 1)


@torch.inference_mode()  # on a generator: active only while it runs, not between its yields
def _steps(model: Llama, prompts: list[list[int]], max_new_tokens: int, temperature: float,
           top_k: int | None, top_p: float | None, seed: int | None) -> Iterator[torch.Tensor]:
    """The tokens (B,) chosen at each of max_new_tokens steps: one prefill, then one forward a step."""
    device = next(model.parameters()).device
    longest = max(len(p) for p in prompts)
    cache = KVCache(model.config, len(prompts), longest + max_new_tokens, device=device,
                    dtype=next(model.parameters()).dtype)
    cache.pad = torch.tensor([longest - len(p) for p in prompts], device=device)
    tokens = torch.tensor([[0] * (longest - len(p)) + list(p) for p in prompts], device=device)
    generator = None
    if seed is not None:
        generator = torch.Generator(device=device).manual_seed(seed)

    logits, _ = model(tokens, kv_cache=cache, start_pos=0, last_only=True)
    for step in range(max_new_tokens):
        chosen = next_tokens(logits[:, -1], temperature, top_k, top_p, generator)
        yield chosen
        if step == max_new_tokens - 1:
            break
        # Finished rows keep decoding (a batch moves together); their tokens are not kept.
        logits, _ = model(chosen[:, None], kv_cache=cache, start_pos=longest + step)


def _generate(model: Llama, prompts: list[list[int]], max_new_tokens: int, temperature: float,
              top_k: int | None, top_p: float | None, eos_id: int | None, seed: int | None) -> list[list[int]]:
    outputs: list[list[int]] = [[] for _ in prompts]
    done = [False] * len(prompts)
    for chosen in _steps(model, prompts, max_new_tokens, temperature, top_k, top_p, seed):
        for row, token in enumerate(chosen.tolist()):
            if not done[row]:
                outputs[row].append(token)
                done[row] = token == eos_id
        if all(done):
            break
    return outputs


def _check(model: Llama, prompts: list[list[int]], max_new_tokens: int, temperature: float,
           top_k: int | None, top_p: float | None) -> None:
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("generate needs at least one prompt, and every prompt at least one token")
    if max_new_tokens < 0 or temperature < 0 or (top_k is not None and top_k < 1) \
            or (top_p is not None and not 0 < top_p <= 1):
        raise ValueError("need max_new_tokens >= 0, temperature >= 0, top_k >= 1 and 0 < top_p <= 1")
    longest = max(len(p) for p in prompts)
    if longest + max_new_tokens > model.config.max_seq_len:
        raise ValueError(f"prompt ({longest}) + max_new_tokens ({max_new_tokens}) exceeds "
                         f"max_seq_len {model.config.max_seq_len}")


def generate(model: Llama, prompts: list[list[int]], max_new_tokens: int, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, eos_id: int | None = None,
             seed: int | None = None) -> list[list[int]]:
    _check(model, prompts, max_new_tokens, temperature, top_k, top_p)
    if max_new_tokens == 0:
        return [[] for _ in prompts]
    was_training = model.training
    model.eval()
    try:
        return _generate(model, prompts, max_new_tokens, temperature, top_k, top_p, eos_id, seed)
    finally:
        model.train(was_training)


def stream(model: Llama, prompt: list[int], max_new_tokens: int, temperature: float = 1.0,
           top_k: int | None = None, top_p: float | None = None, eos_id: int | None = None,
           seed: int | None = None) -> Iterator[int]:
    """The tokens of `generate(model, [prompt], ...)[0]`, yielded one at a time as each is sampled
    (the eos token too, then it stops). Arguments are checked at the call; the model is in eval
    mode while the generator runs and gets its mode back when it ends or is closed."""
    _check(model, [prompt], max_new_tokens, temperature, top_k, top_p)

    def tokens() -> Iterator[int]:
        was_training = model.training
        model.eval()
        try:
            for chosen in _steps(model, [prompt], max_new_tokens, temperature, top_k, top_p, seed):
                token = int(chosen[0])
                yield token
                if token == eos_id:
                    return
        finally:
            model.train(was_training)

    return tokens()


def main(argv: list[str] | None = None) -> None:
    """Continue a prompt with a checkpoint (its own tokenizer), as plain text: `model/` alone."""
    # Deferred: model.sampling imports this module (generate); only the command line needs it back.
    from model.sampling import generate_text

    parser = argparse.ArgumentParser(description="Continue a prompt with a crawl2model checkpoint.")
    parser.add_argument("checkpoint", help="checkpoint folder (model.safetensors + meta.json)")
    parser.add_argument("prompt")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.8, help="0: greedy")
    parser.add_argument("--top-k", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(generate_text(args.checkpoint, args.prompt, args.max_new_tokens, args.temperature, args.top_k or None,
                        seed=args.seed))


if __name__ == "__main__":
    main()
