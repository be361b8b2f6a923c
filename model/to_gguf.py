"""GGUF export: a crawl2model checkpoint as one .gguf file that llama.cpp (and Ollama) runs.

    from model.to_gguf import export_gguf, read_gguf_summary, GGUF_TYPES, K_QUANTS
    path = export_gguf(ckpt, Path("out/model-f16.gguf"), "f16")       # or "q8_0", "q4_k_m", ...
    read_gguf_summary(path)["tensors"]["blk.0.attn_q.weight"]          # {"shape": [...], "type": "F16"}

    .venv/bin/python -m model.to_gguf CHECKPOINT OUT.gguf [QUANT]     # the same from a shell

Architecture "llama" with every hyperparameter llama.cpp reads, and the tokenizer: model "gpt2"
(byte-level BPE), pre-tokenizer "smaug-bpe" (GPT-4's split regex, the one tasks/bpe.py trains
with, *without* the ignore_merges shortcut "llama-bpe" turns on: a word found whole in the vocab
skipping the merges, which our Hugging Face BPE never does; a trained tokenizer's tokens encode
to themselves, so both agree in practice, but smaug-bpe is our algorithm exactly), the vocab
strings, merges, the five specials as CONTROL tokens, eos <|endoftext|>, eot <|end_of_turn|>,
no BOS/EOS added, and the Jinja chat template.

Tensors: 1-D ones (the RMSNorm weights) stay F32, as llama.cpp's converter keeps them; every
matrix is written in the requested type. attn_q/attn_k rows are permuted from our rotate-half
rotary layout (Hugging Face's) into llama.cpp's interleaved one, exactly as convert_hf_to_gguf.py
does. With tied embeddings only token_embd is written (llama.cpp reuses it as the output).
GGUF_TYPES are quantized here in numpy by the `gguf` package; a matrix whose rows are not a
multiple of the type's block falls back to F16 (as the converter does), logged and listed in
the metadata key `crawl2model.quant_fallback`. K_QUANTS go through llama.cpp's own quantizer
(llama_cpp.llama_model_quantize) from an F32 GGUF, which picks its own per-tensor types
(Q6_K for the tied embedding, a legacy type such as Q5_0 for rows not a multiple of 256: see
read_gguf_summary); they need the optional extra `pip install 'crawl2model[gguf]'`
(llama-cpp-python). Files are written under a temporary name and renamed, so a .gguf at the
target path is always complete.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import sys
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

GGUF_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1")  # quantized by gguf in numpy
K_QUANTS = ("q2_k", "q3_k_s", "q3_k_m", "q3_k_l", "q4_k_s", "q4_k_m", "q5_k_s", "q5_k_m", "q6_k")  # by llama.cpp
PRE_TOKENIZER = "smaug-bpe"
FALLBACK_KEY = "crawl2model.quant_fallback"
EXTRA_HINT = "pip install 'crawl2model[gguf]'"


class GGUFError(ValueError):
    """A GGUF file that cannot be read (not GGUF, truncated, corrupt), or an export that cannot be done."""


def _types():
    from gguf import GGMLQuantizationType as Q, LlamaFileType as F

    return {"f32": (Q.F32, F.ALL_F32), "f16": (Q.F16, F.MOSTLY_F16), "bf16": (Q.BF16, F.MOSTLY_BF16),
            "q8_0": (Q.Q8_0, F.MOSTLY_Q8_0), "q4_0": (Q.Q4_0, F.MOSTLY_Q4_0), "q4_1": (Q.Q4_1, F.MOSTLY_Q4_1),
            "q5_0": (Q.Q5_0, F.MOSTLY_Q5_0), "q5_1": (Q.Q5_1, F.MOSTLY_Q5_1)}


def permute_rotary(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """Rows of wq/wk from rotate-half (dims i and i + head_dim/2 pair) to interleaved (2i, 2i+1
    pair): convert_hf_to_gguf.py's LlamaModel.permute."""
    rows = weight.shape[0]
    return weight.reshape(n_heads, 2, rows // n_heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def checkpoint_tokenizer(checkpoint: Path) -> Path:
    """The tokenizer.json a checkpoint was trained with (meta train.manifest -> manifest tokenizer)."""
    meta = json.loads((Path(checkpoint) / "meta.json").read_text())
    try:
        return Path(json.loads(Path(meta["train"]["manifest"]).read_text())["tokenizer"])
    except (KeyError, FileNotFoundError) as exc:
        raise GGUFError(f"cannot find the tokenizer of {checkpoint} through meta train.manifest ({exc}); "
                        "pass tokenizer=PATH") from None


def tokenizer_vocab(path: Path, vocab_size: int) -> tuple[list[str], list[int], list[str], dict[str, int]]:
    """tokens (byte-level strings by id), token types, merges ("a b"), special token ids by text."""
    from gguf import TokenType

    path = Path(path)
    spec = json.loads((path / "tokenizer.json" if path.is_dir() else path).read_text())
    by_id = {i: t for t, i in spec["model"]["vocab"].items()}
    specials = {t["content"]: t["id"] for t in spec.get("added_tokens", []) if t.get("special")}
    by_id.update({i: t for t, i in specials.items()})
    if max(by_id) >= vocab_size:
        raise GGUFError(f"tokenizer {path} has ids up to {max(by_id)}, the model only {vocab_size} embeddings")
    tokens = [by_id.get(i, f"[PAD{i}]") for i in range(vocab_size)]
    types = [TokenType.CONTROL if i in specials.values() else TokenType.NORMAL if i in by_id else TokenType.UNUSED
             for i in range(vocab_size)]
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    return tokens, [int(t) for t in types], merges, specials


def _quantize(name: str, data: np.ndarray, qtype, fallbacks: list[str]):
    from gguf import GGMLQuantizationType as Q
    from gguf.quants import quantize

    if data.ndim == 1:
        return data.astype(np.float32), Q.F32
    try:
        return quantize(data, qtype), qtype
    except Exception as exc:  # gguf raises QuantError for rows not a multiple of the block
        log.warning("%s: %s; falling back to F16", name, exc)
        fallbacks.append(f"{name}:F16")
        return quantize(data, Q.F16), Q.F16


def _write(checkpoint: Path, out: Path, quant: str, tokenizer: Path | None) -> None:
    import gguf
    import torch
    from safetensors.torch import load_file

    from model.config import ModelConfig
    from model.llama import gguf_name
    from model.tokenizer import CHAT_TEMPLATE, END_OF_TURN, EOT

    meta = json.loads((checkpoint / "meta.json").read_text())
    cfg = ModelConfig.from_dict(meta["config"])
    qtype, ftype = _types()[quant]
    tokens, types, merges, specials = tokenizer_vocab(tokenizer or checkpoint_tokenizer(checkpoint), cfg.vocab_size)

    w = gguf.GGUFWriter(str(out), "llama")
    w.add_name(f"crawl2model {checkpoint.parent.name}/{checkpoint.name}")
    w.add_context_length(cfg.max_seq_len)
    w.add_embedding_length(cfg.dim)
    w.add_block_count(cfg.n_layers)
    w.add_feed_forward_length(cfg.ffn_dim)
    w.add_head_count(cfg.n_heads)
    w.add_head_count_kv(cfg.n_kv_heads)
    w.add_rope_dimension_count(cfg.head_dim)
    w.add_rope_freq_base(cfg.rope_theta)
    w.add_layer_norm_rms_eps(cfg.norm_eps)
    w.add_vocab_size(cfg.vocab_size)
    w.add_file_type(int(ftype))
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(PRE_TOKENIZER)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(specials[EOT])
    w.add_eos_token_id(specials[EOT])
    w.add_eot_token_id(specials[END_OF_TURN])
    w.add_pad_token_id(specials[EOT])
    w.add_add_bos_token(False)
    w.add_add_eos_token(False)
    w.add_chat_template(CHAT_TEMPLATE)

    weights = load_file(str(checkpoint / "model.safetensors"))
    if cfg.tie_embeddings:  # stored once; llama.cpp uses token_embd as the output when output is absent
        weights.pop("output.weight", None)
    fallbacks: list[str] = []
    for key, tensor in weights.items():
        data = tensor.to(torch.float32).numpy()
        if key.endswith("attention.wq.weight"):
            data = permute_rotary(data, cfg.n_heads)
        elif key.endswith("attention.wk.weight"):
            data = permute_rotary(data, cfg.n_kv_heads)
        name = gguf_name(key)
        data, dtype = _quantize(name, data, qtype, fallbacks)
        w.add_tensor(name, data, raw_dtype=dtype)
    if fallbacks:
        w.add_array(FALLBACK_KEY, fallbacks)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _llama_cpp(quant: str):
    try:
        import llama_cpp
    except ImportError:
        raise GGUFError(f"the k-quant {quant!r} is made by llama.cpp's quantizer: {EXTRA_HINT} "
                        f"(or export one of {', '.join(GGUF_TYPES)})") from None
    return llama_cpp


def _llama_quantize(source: Path, out: Path, quant: str, threads: int | None) -> None:
    llama_cpp = _llama_cpp(quant)
    from llama_cpp._utils import suppress_stdout_stderr

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{quant.upper()}")
    params.nthread = threads or 0
    with suppress_stdout_stderr(disable=False):  # the quantizer logs every tensor to stderr
        status = llama_cpp.llama_model_quantize(str(source).encode(), str(out).encode(), ctypes.byref(params))
    if status != 0:
        raise GGUFError(f"llama.cpp failed to quantize {source} to {quant} (status {status})")


def export_gguf(checkpoint: Path, out: Path, quant: str = "f16", tokenizer: Path | None = None,
                threads: int | None = None) -> Path:
    """Write `checkpoint` as one GGUF file of type `quant` at `out`; returns out."""
    checkpoint, out, quant = Path(checkpoint), Path(out), quant.lower()
    if quant not in GGUF_TYPES and quant not in K_QUANTS:
        raise GGUFError(f"unknown GGUF type {quant!r}; known: {', '.join(GGUF_TYPES + K_QUANTS)}")
    if quant in K_QUANTS:
        _llama_cpp(quant)  # before any work
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    base = out.with_name(f"{out.name}.f32-tmp-{os.getpid()}")
    try:
        if quant in K_QUANTS:
            _write(checkpoint, base, "f32", tokenizer)
            _llama_quantize(base, tmp, quant, threads)
        else:
            _write(checkpoint, tmp, quant, tokenizer)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
        base.unlink(missing_ok=True)
    return out


SUMMARY_KEYS = ("general.name", "general.file_type", "llama.context_length", "llama.embedding_length",
                "llama.block_count", "llama.feed_forward_length", "llama.attention.head_count",
                "llama.attention.head_count_kv", "llama.rope.dimension_count", "llama.rope.freq_base",
                "llama.attention.layer_norm_rms_epsilon", "llama.vocab_size", "tokenizer.ggml.model",
                "tokenizer.ggml.pre", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
                "tokenizer.ggml.eot_token_id", "tokenizer.ggml.padding_token_id", "tokenizer.ggml.add_bos_token",
                "tokenizer.ggml.add_eos_token", "tokenizer.chat_template", FALLBACK_KEY)


def read_gguf_summary(path: Path) -> dict:
    """{"arch", "metadata": {key: value} (SUMMARY_KEYS present), "n_tokens", "tensors": {name:
    {"shape", "type", "bytes"}}} of a GGUF file; GGUFError when it is not a complete GGUF file."""
    from gguf import GGUFReader

    path = Path(path)
    try:
        reader = GGUFReader(str(path))
        size = path.stat().st_size
        end = max((t.data_offset + int(t.n_bytes) for t in reader.tensors), default=reader.data_offset)
        if end > size:
            raise ValueError(f"tensor data ends at byte {end}, the file has {size}")
        fields = reader.fields
        summary = {
            "arch": fields["general.architecture"].contents(),
            "metadata": {k: fields[k].contents() for k in SUMMARY_KEYS if k in fields},
            "n_tokens": len(fields["tokenizer.ggml.tokens"].data) if "tokenizer.ggml.tokens" in fields else 0,
            "tensors": {t.name: {"shape": [int(d) for d in t.shape], "type": t.tensor_type.name,
                                 "bytes": int(t.n_bytes)} for t in reader.tensors},
        }
    except FileNotFoundError:
        raise
    except Exception as exc:  # noqa: BLE001 - the reader fails in many ways on a damaged file
        raise GGUFError(f"{path} is not a readable GGUF file (truncated, corrupt or another format): "
                        f"{type(exc).__name__}: {exc}") from None
    return summary


if __name__ == "__main__":
    if len(sys.argv) not in (3, 4):
        sys.exit("usage: python -m model.to_gguf CHECKPOINT OUT.gguf [QUANT]")
    logging.basicConfig(level=logging.INFO)
    written = export_gguf(Path(sys.argv[1]), Path(sys.argv[2]), *(sys.argv[3:]))
    print(json.dumps({**read_gguf_summary(written), "path": str(written)}, indent=1, default=str))
