"""Every exported variant of one checkpoint, built and measured the same way: size on disk, bits
per weight, val loss and perplexity on the same token windows, generation tokens/s. Shared by
the export flow (flows/export.py) and the benchmark (bench/quantize.py); no Prefect here.

    from model.variants import build_variants, measure_variants, val_windows, variant_table
    variants = build_variants(ckpt, out, formats=["hf", "gguf", "torch"], gguf_quants=["f16", "q8_0"],
                              torch_quants=["int8", "int4"])
    windows = val_windows(ckpt, n_windows=64)
    measure_variants(variants, ckpt, windows)            # fills val_loss, tokens_per_s
    print(variant_table(variants))

Variants: `torch-fp32` (the checkpoint itself, the reference every delta is against),
`torch-int8`/`torch-int4` (model.quantize, run by crawl2model), `gguf-<type>` (model.to_gguf, run
by llama.cpp when `llama-cpp-python` is installed) and `hf` (model.hf, a folder for transformers;
its logits equal the checkpoint's, so it is not measured again). Perplexity of a GGUF comes from
llama.cpp's own logits over the same windows crawl2model evaluates.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from model.config import ModelConfig
from model.generate import generate
from model.llama import Llama

TORCH_BITS = {"int8": 8, "int4": 4}


@dataclass
class Variant:
    name: str  # torch-fp32, torch-int8, gguf-q8_0, hf ...
    format: str  # torch | gguf | hf
    engine: str  # who runs it when measured: crawl2model | llama.cpp | "" (not measured)
    path: Path
    size_bytes: int
    weight_bytes: int  # bytes of tensors only (no tokenizer or metadata)
    params: int
    val_loss: float | None = None
    tokens_per_s: float | None = None
    note: str = ""

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.weight_bytes / self.params

    @property
    def ppl(self) -> float | None:
        return math.exp(self.val_loss) if self.val_loss is not None else None

    def to_dict(self) -> dict:
        return {**asdict(self), "path": str(self.path), "bits_per_weight": self.bits_per_weight, "ppl": self.ppl}


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def safetensors_bytes(path: Path) -> int:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return sum(_slice_bytes(f.get_slice(k)) for k in f.keys())


_DTYPE_BYTES = {"F64": 8, "I64": 8, "F32": 4, "I32": 4, "F16": 2, "BF16": 2, "I16": 2, "I8": 1, "U8": 1}


def _slice_bytes(tensor_slice) -> int:
    return int(np.prod(tensor_slice.get_shape(), dtype=np.int64)) * _DTYPE_BYTES[tensor_slice.get_dtype()]


def gguf_tensor_bytes(path: Path) -> int:
    from gguf import GGUFReader

    return int(sum(int(t.n_bytes) for t in GGUFReader(str(path)).tensors))


def _config(checkpoint: Path) -> ModelConfig:
    return ModelConfig.from_dict(json.loads((Path(checkpoint) / "meta.json").read_text())["config"])


def build_variants(checkpoint: Path, out: Path, formats: list[str], gguf_quants: list[str], torch_quants: list[str],
                   group_size: int = 32, log: Callable[[str], None] = print) -> list[Variant]:
    """Write every requested variant of `checkpoint` under `out` (hf/, gguf/, torch/); returns them,
    the fp32 checkpoint first. A k-quant without llama.cpp installed is skipped with a note."""
    from model.llamacpp import available as llamacpp_available
    from model.ollama import write_modelfile
    from model.quantize import quantize_model, save_quantized
    from model.sampling import load_model
    from model.to_gguf import K_QUANTS, export_gguf

    checkpoint, out = Path(checkpoint), Path(out)
    params = _config(checkpoint).num_params()
    weights = checkpoint / "model.safetensors"
    variants = [Variant("torch-fp32", "torch", "crawl2model", checkpoint, _size(weights), safetensors_bytes(weights), params)]
    if "hf" in formats:
        from model.hf import export_hf

        folder = export_hf(checkpoint, out / "hf")
        variants.append(Variant("hf", "hf", "", folder, _size(folder), safetensors_bytes(folder / "model.safetensors"),
                                params, note="transformers LlamaForCausalLM; logits equal torch-fp32"))
        log(f"export: Hugging Face folder {folder}")
    if "torch" in formats and torch_quants:
        model, meta = load_model(checkpoint)
        for quant in torch_quants:
            quantized = quantize_model(model, TORCH_BITS[quant], group_size=group_size)
            folder = save_quantized(quantized, out / "torch" / quant, {**meta, "source_checkpoint": str(checkpoint)})
            variants.append(Variant(f"torch-{quant}", "torch", "crawl2model", folder, _size(folder),
                                    safetensors_bytes(folder / "model.safetensors"), params,
                                    note=f"weight-only, group {group_size}" if quant == "int4" else "weight-only, per channel"))
            log(f"export: torch {quant} {folder}")
    if "gguf" in formats:
        for quant in gguf_quants:
            if quant in K_QUANTS and not llamacpp_available():
                log(f"export: skipping gguf {quant}: k-quants need llama.cpp (pip install 'crawl2model[gguf]')")
                continue
            path = export_gguf(checkpoint, out / "gguf" / f"model-{quant}.gguf", quant)
            write_modelfile(path)
            variants.append(Variant(f"gguf-{quant}", "gguf", "llama.cpp" if llamacpp_available() else "", path,
                                    _size(path), gguf_tensor_bytes(path), params))
            log(f"export: gguf {quant} {path} ({_size(path) / 1e6:.1f} MB)")
    return variants


def val_windows(checkpoint: Path, n_windows: int = 64, seq_len: int | None = None) -> list[list[int]]:
    """The first n_windows non-overlapping windows of seq_len + 1 tokens of the checkpoint's val
    shards: every variant is scored on exactly these."""
    from model.data import ShardBatches

    meta = json.loads((Path(checkpoint) / "meta.json").read_text())
    seq_len = seq_len or _config(checkpoint).max_seq_len
    val = ShardBatches(meta["train"]["manifest"], "val", seq_len=seq_len - 1, batch_size=1)
    windows = []
    for x, y in val.eval_batches(n_windows):
        windows.append(torch.cat([x[0], y[0, -1:]]).tolist())
    return windows


@torch.no_grad()
def torch_val_loss(model: Llama, windows: list[list[int]], batch_size: int = 8) -> float:
    """Mean next-token cross-entropy (nats) over every predicted token of the windows."""
    total, count = 0.0, 0
    for i in range(0, len(windows), batch_size):
        batch = torch.tensor(windows[i:i + batch_size])
        _, loss = model(batch[:, :-1], batch[:, 1:])
        n = batch[:, 1:].numel()
        total, count = total + loss.item() * n, count + n
    return total / count


@torch.no_grad()
def torch_generation_speed(model: Llama, prompt: list[int], n_tokens: int) -> float:
    """Greedy decoding tokens/s with the KV cache (batch 1), after one warm-up run."""
    generate(model, [prompt], 4, temperature=0.0)
    started = time.perf_counter()
    [new] = generate(model, [prompt], n_tokens, temperature=0.0)
    return len(new) / (time.perf_counter() - started)


def measure_variants(variants: list[Variant], checkpoint: Path, windows: list[list[int]], gen_tokens: int = 64,
                     threads: int | None = None, log: Callable[[str], None] = print) -> list[Variant]:
    """Fill val_loss and tokens_per_s of every variant its engine can run here."""
    from model import llamacpp
    from model.quantize import load_quantized
    from model.sampling import load_model

    prompt = windows[0][:16]
    gen_tokens = min(gen_tokens, _config(checkpoint).max_seq_len - len(prompt))
    for v in variants:
        if v.engine == "crawl2model":
            model = load_model(v.path)[0] if v.name == "torch-fp32" else load_quantized(v.path)[0]
            v.val_loss = torch_val_loss(model.eval(), windows)
            v.tokens_per_s = torch_generation_speed(model, prompt, gen_tokens)
        elif v.engine == "llama.cpp":
            v.val_loss = llamacpp.val_loss(v.path, windows, n_threads=threads)
            v.tokens_per_s = llamacpp.generation_speed(v.path, prompt, gen_tokens, n_threads=threads)
        else:
            continue
        log(f"measure: {v.name:<12} val loss {v.val_loss:.4f} (ppl {v.ppl:.2f}), {v.tokens_per_s:,.0f} tokens/s")
    return variants


def variant_table(variants: list[Variant], reference: str = "torch-fp32") -> str:
    """Markdown table; deltas are perplexity relative to the reference variant."""
    ref = next((v.ppl for v in variants if v.name == reference and v.ppl), None)
    rows = ["| variant | engine | size MB | bits/weight | val loss | ppl | delta ppl | gen tokens/s |",
            "|---|---|---:|---:|---:|---:|---:|---:|"]
    for v in variants:
        delta = f"{100 * (v.ppl / ref - 1):+.2f}%" if ref and v.ppl else "-"
        rows.append(f"| {v.name} | {v.engine or '-'} | {v.size_bytes / 1e6:.2f} | {v.bits_per_weight:.2f} | "
                    + (f"{v.val_loss:.4f} | {v.ppl:.2f} | {delta} | {v.tokens_per_s:,.0f} |" if v.ppl else "- | - | - | - |"))
    return "\n".join(rows)

