"""Run a GGUF export in llama.cpp (through llama-cpp-python, the optional extra
`pip install 'crawl2model[gguf]'`): tokenize, score, generate, all on the CPU.

    from model import llamacpp
    llamacpp.available()                                   # is llama_cpp importable?
    llamacpp.tokenize("model-f16.gguf", "Hello world")    # ids, no BOS, special tokens as plain text
    llamacpp.val_loss("model-q4_k_m.gguf", windows)        # nats; perplexity() = exp(val_loss)
    llamacpp.next_token_logits("model-f32.gguf", ids)      # (len(ids), vocab) float32
    llamacpp.generation_speed("model-q8_0.gguf", prompt_ids, 64)   # greedy tokens/s

val_loss uses crawl2model's definition (model.variants.torch_val_loss): each window of n tokens
predicts its tokens 1..n-1 from their prefix; the mean cross-entropy over all predicted tokens.
Only the first n-1 tokens are evaluated, so windows of max_seq_len + 1 tokens stay inside the
model's trained context. Every call loads the model itself (verbose=False keeps llama.cpp quiet);
n_threads=None lets llama-cpp-python choose.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

EXTRA_HINT = "pip install 'crawl2model[gguf]'"


def available() -> bool:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return False
    return True


def _load(gguf_path: Path, n_threads: int | None = None, **options):
    try:
        from llama_cpp import Llama
        from llama_cpp._utils import suppress_stdout_stderr
    except ImportError:
        raise ImportError(f"running a GGUF file needs llama-cpp-python: {EXTRA_HINT}") from None
    with suppress_stdout_stderr(disable=False):  # verbose=False still lets some context warnings through
        return Llama(str(gguf_path), n_threads=n_threads, n_threads_batch=n_threads, verbose=False, **options)


def tokenize(gguf_path: Path, text: str) -> list[int]:
    """llama.cpp's ids for `text` with the GGUF's own tokenizer: no BOS, "<|endoftext|>" in the
    text is plain text (special=False), as crawl2model's training stream encodes it."""
    return _load(gguf_path, vocab_only=True).tokenize(text.encode(), add_bos=False, special=False)


def next_token_logits(gguf_path: Path, tokens: list[int], n_threads: int | None = None,
                      f32_cache: bool = False) -> np.ndarray:
    """Logits (len(tokens), vocab) at every position of one sequence. f32_cache: an F32 KV cache
    instead of llama.cpp's default F16 (for exact comparisons)."""
    options = {"type_k": 0, "type_v": 0} if f32_cache else {}  # GGML_TYPE_F32
    n = len(tokens)
    llm = _load(gguf_path, n_threads, n_ctx=n, n_batch=n, n_ubatch=n, logits_all=True, **options)
    llm.eval(tokens)
    return np.array(llm.scores[:n], dtype=np.float32)


def val_loss(gguf_path: Path, windows: list[list[int]], n_threads: int | None = None) -> float:
    """Mean next-token cross-entropy (nats) over every predicted token of the windows."""
    n = max(len(w) for w in windows) - 1
    llm = _load(gguf_path, n_threads, n_ctx=n, n_batch=n, n_ubatch=n, logits_all=True)
    total, count = 0.0, 0
    for window in windows:
        inputs, targets = window[:-1], np.asarray(window[1:])
        llm.reset()
        llm.eval(inputs)
        logits = llm.scores[:len(inputs)].astype(np.float64)
        peak = logits.max(axis=1, keepdims=True)
        log_norm = np.log(np.exp(logits - peak).sum(axis=1)) + peak[:, 0]
        total += float((log_norm - logits[np.arange(len(targets)), targets]).sum())
        count += len(targets)
    return total / count


def perplexity(gguf_path: Path, windows: list[list[int]], n_threads: int | None = None) -> float:
    """exp(val_loss): the perplexity over the windows."""
    return float(np.exp(val_loss(gguf_path, windows, n_threads)))


def generation_speed(gguf_path: Path, prompt_tokens: list[int], n_tokens: int, n_threads: int | None = None) -> float:
    """Greedy decoding tokens/s (prefill of the prompt included, batch 1) after one warm-up run,
    as model.variants.torch_generation_speed measures crawl2model."""
    llm = _load(gguf_path, n_threads, n_ctx=len(prompt_tokens) + n_tokens)

    def run(count: int) -> int:
        llm.reset()
        made = 0
        for _ in llm.generate(prompt_tokens, top_k=1, temp=0.0, repeat_penalty=1.0, reset=True):
            made += 1
            if made == count:
                break
        return made

    run(min(4, n_tokens))
    started = time.perf_counter()
    made = run(n_tokens)
    return made / (time.perf_counter() - started)
