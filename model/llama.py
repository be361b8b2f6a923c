"""Llama-style decoder-only transformer (torch only): RMSNorm, rotary embeddings, grouped-query
attention, SwiGLU MLP, no biases, optional tied embeddings, and a preallocated KV cache.

    from model.config import ModelConfig
    from model.llama import Llama, KVCache
    model = Llama(ModelConfig.from_preset("tiny", vocab_size=512))
    logits, loss = model(tokens, targets)        # tokens (B, T) int64; loss: mean CE, -100 ignored
    logits, _ = model(tokens)                    # logits are float32 whatever the weights' dtype
    cache = KVCache(model.config, batch_size=B, max_seq_len=256)
    logits, _ = model(prompt, kv_cache=cache, start_pos=0)      # prefill
    logits, _ = model(next_tok, kv_cache=cache, start_pos=T)    # then one token at a time

Rotary convention: Hugging Face LlamaForCausalLM's "rotate_half" (dimension i of a head pairs
with i + head_dim/2, not with its neighbour), so with `hf_name` the weights load into
transformers' Llama one-to-one, no permutation. llama.cpp's GGUF llama arch uses the
interleaved convention instead: an exporter permutes the rows of attn_q/attn_k exactly as
llama.cpp's convert_hf_to_gguf.py does for HF Llama checkpoints.

Without a cache, attention is F.scaled_dot_product_attention(is_causal=True) over positions
start_pos.. (training). With a cache, new k/v are written at cache slots start_pos.. and the
new queries attend to slots [0, start_pos + T) under an explicit causal mask, so a prefill of
many tokens and one-token decoding steps both work. A cache may hold left-padded prompts
(KVCache.pad, set by model.generate): slots before a row's pad are masked out and its rotary
positions start at 0 on its first real token, so each row computes what it would alone.
"""

from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F
from torch import nn

from model.config import ModelConfig

# Our state_dict key -> (Hugging Face LlamaForCausalLM key, GGUF llama tensor name); {i} is the layer.
NAME_TABLE: dict[str, tuple[str, str]] = {
    "tok_embeddings.weight": ("model.embed_tokens.weight", "token_embd.weight"),
    "layers.{i}.attention_norm.weight": ("model.layers.{i}.input_layernorm.weight", "blk.{i}.attn_norm.weight"),
    "layers.{i}.attention.wq.weight": ("model.layers.{i}.self_attn.q_proj.weight", "blk.{i}.attn_q.weight"),
    "layers.{i}.attention.wk.weight": ("model.layers.{i}.self_attn.k_proj.weight", "blk.{i}.attn_k.weight"),
    "layers.{i}.attention.wv.weight": ("model.layers.{i}.self_attn.v_proj.weight", "blk.{i}.attn_v.weight"),
    "layers.{i}.attention.wo.weight": ("model.layers.{i}.self_attn.o_proj.weight", "blk.{i}.attn_output.weight"),
    "layers.{i}.ffn_norm.weight": ("model.layers.{i}.post_attention_layernorm.weight", "blk.{i}.ffn_norm.weight"),
    "layers.{i}.feed_forward.w1.weight": ("model.layers.{i}.mlp.gate_proj.weight", "blk.{i}.ffn_gate.weight"),
    "layers.{i}.feed_forward.w2.weight": ("model.layers.{i}.mlp.down_proj.weight", "blk.{i}.ffn_down.weight"),
    "layers.{i}.feed_forward.w3.weight": ("model.layers.{i}.mlp.up_proj.weight", "blk.{i}.ffn_up.weight"),
    "norm.weight": ("model.norm.weight", "output_norm.weight"),
    "output.weight": ("lm_head.weight", "output.weight"),  # with tied embeddings HF stores it once
}


def _translate(key: str, column: int) -> str:
    layer = re.match(r"layers\.(\d+)\.", key)
    template = key.replace(f"layers.{layer.group(1)}.", "layers.{i}.", 1) if layer else key
    if template not in NAME_TABLE:
        raise KeyError(f"no Hugging Face/GGUF name for state_dict key {key!r}")
    target = NAME_TABLE[template][column]
    return target.format(i=layer.group(1)) if layer else target


def hf_name(key: str) -> str:
    """Our state_dict key -> the Hugging Face LlamaForCausalLM key (same shape, same layout)."""
    return _translate(key, 0)


def gguf_name(key: str) -> str:
    """Our state_dict key -> the GGUF llama tensor name (attn_q/attn_k rows need llama.cpp's permute)."""
    return _translate(key, 1)


class RMSNorm(nn.Module):
    """x / rms(x) * weight, the statistics in float32 (bf16 sums of squares lose too much)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight  # the order of Meta's and HF's Llama


def rotary_tables(head_dim: int, max_seq_len: int, theta: float, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of shape (max_seq_len, head_dim), float32, in HF's layout (frequencies repeated
    for the two halves of a head)."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(max_seq_len, device=device, dtype=torch.float32), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat([-second, first], dim=-1)


class RotaryEmbedding(nn.Module):
    """Precomputed cos/sin tables (non-persistent buffers, so not in the state_dict)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.shape = (config.head_dim, config.max_seq_len, config.rope_theta)
        cos, sin = rotary_tables(*self.shape)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def _apply(self, fn, recurse=True):
        # model.to(torch.bfloat16) would round the tables to bf16 (under 3 significant digits), a
        # needless error on every q and k; rebuild them in float32 on whatever device they moved to.
        super()._apply(fn, recurse)
        if self.cos.dtype != torch.float32:
            self.cos, self.sin = rotary_tables(*self.shape, device=self.cos.device)
        return self

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """x (B, heads, T, head_dim); positions (T,) or (B, T)."""
        cos, sin = self.cos[positions], self.sin[positions]
        if cos.dim() == 3:  # per-row positions: broadcast over heads
            cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        x32 = x.float()
        return (x32 * cos + rotate_half(x32) * sin).type_as(x)


class KVCache:
    """Per-layer key/value tensors (batch, n_kv_heads, max_seq_len, head_dim), zero-filled so
    unused slots never hold NaN garbage. `pad[b]` is how many slots row b leaves empty on the
    left (left-padded prompts); those slots are never attended to by real tokens."""

    def __init__(self, config: ModelConfig, batch_size: int, max_seq_len: int | None = None,
                 device=None, dtype: torch.dtype = torch.float32):
        self.max_seq_len = max_seq_len or config.max_seq_len
        if self.max_seq_len > config.max_seq_len:
            raise ValueError(f"cache length {self.max_seq_len} exceeds the model's max_seq_len {config.max_seq_len}")
        shape = (batch_size, config.n_kv_heads, self.max_seq_len, config.head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layers)]
        self.pad = torch.zeros(batch_size, dtype=torch.long, device=device)

    def positions_and_mask(self, start_pos: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotary positions (B, T) of the new tokens and the boolean mask (B, 1, T, start_pos + T)
        of the cache slots each may attend to."""
        end = start_pos + length
        if end > self.max_seq_len:
            raise ValueError(f"positions up to {end} do not fit a KV cache of {self.max_seq_len}")
        query_slots = torch.arange(start_pos, end, device=self.pad.device)
        key_slots = torch.arange(end, device=self.pad.device)
        pad = self.pad[:, None]
        positions = (query_slots[None, :] - pad).clamp(min=0)
        causal = key_slots[None, :] <= query_slots[:, None]  # (T, S)
        real_key = key_slots[None, None, :] >= pad[:, :, None]  # (B, 1, S)
        # A pad query sees no real key; letting it see itself keeps its softmax row from being
        # all -inf (NaN), which would spread through its k/v into later layers' scores.
        itself = key_slots[None, :] == query_slots[:, None]
        mask = causal[None] & (real_key | itself[None])
        return positions, mask[:, None]

    def write(self, layer: int, start_pos: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        end = start_pos + k.shape[2]
        self.k[layer][:, :, start_pos:end] = k
        self.v[layer][:, :, start_pos:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]


class Attention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = config.n_heads, config.n_kv_heads, config.head_dim
        self.wq = nn.Linear(config.dim, config.n_heads * config.head_dim, bias=False)
        self.wk = nn.Linear(config.dim, config.n_kv_heads * config.head_dim, bias=False)
        self.wv = nn.Linear(config.dim, config.n_kv_heads * config.head_dim, bias=False)
        self.wo = nn.Linear(config.n_heads * config.head_dim, config.dim, bias=False)

    def forward(self, x, rotary: RotaryEmbedding, positions, layer: int, kv_cache: KVCache | None,
                start_pos: int, mask: torch.Tensor | None) -> torch.Tensor:
        batch, length, _ = x.shape
        q = self.wq(x).view(batch, length, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.wk(x).view(batch, length, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.wv(x).view(batch, length, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = rotary(q, positions), rotary(k, positions)
        if kv_cache is None:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                                 enable_gqa=self.n_kv_heads != self.n_heads)
        else:
            k, v = kv_cache.write(layer, start_pos, k, v)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                                 enable_gqa=self.n_kv_heads != self.n_heads)
        return self.wo(out.transpose(1, 2).reshape(batch, length, -1))


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x); w1 is HF's gate_proj, w3 up_proj, w2 down_proj."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.w1 = nn.Linear(config.dim, config.ffn_dim, bias=False)
        self.w2 = nn.Linear(config.ffn_dim, config.dim, bias=False)
        self.w3 = nn.Linear(config.dim, config.ffn_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.attention_norm = RMSNorm(config.dim, config.norm_eps)
        self.attention = Attention(config)
        self.ffn_norm = RMSNorm(config.dim, config.norm_eps)
        self.feed_forward = FeedForward(config)

    def forward(self, x, rotary, positions, layer, kv_cache, start_pos, mask):
        x = x + self.attention(self.attention_norm(x), rotary, positions, layer, kv_cache, start_pos, mask)
        return x + self.feed_forward(self.ffn_norm(x))


class Llama(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.dim)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.norm = RMSNorm(config.dim, config.norm_eps)
        self.output = nn.Linear(config.dim, config.vocab_size, bias=False)
        self.rotary = RotaryEmbedding(config)
        self.reset_parameters()
        if config.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """normal(0, init_std) for every matrix; the residual-stream writers (wo, w2) scaled by
        1/sqrt(2 * n_layers) so the residual's variance does not grow with depth (GPT-2)."""
        std = self.config.init_std
        for name, param in self.named_parameters():
            if param.dim() == 1:
                nn.init.ones_(param)  # RMSNorm weights
            elif name.endswith(("attention.wo.weight", "feed_forward.w2.weight")):
                nn.init.normal_(param, 0.0, std / math.sqrt(2 * self.config.n_layers))
            else:
                nn.init.normal_(param, 0.0, std)

    def forward(self, tokens: torch.Tensor, targets: torch.Tensor | None = None,
                kv_cache: KVCache | None = None, start_pos: int = 0,
                last_only: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """tokens (B, T) -> (logits (B, T, vocab) float32, mean cross-entropy over targets or None).
        last_only: logits (B, 1, vocab) of the last position only (a prefill needs no more)."""
        length = tokens.shape[1]
        if last_only and targets is not None:
            raise ValueError("last_only computes no loss: pass targets or last_only, not both")
        if start_pos + length > self.config.max_seq_len:
            raise ValueError(f"positions up to {start_pos + length} exceed max_seq_len {self.config.max_seq_len}")
        if kv_cache is None:
            positions, mask = torch.arange(start_pos, start_pos + length, device=tokens.device), None
        else:
            positions, mask = kv_cache.positions_and_mask(start_pos, length)
        x = self.tok_embeddings(tokens)
        for index, layer in enumerate(self.layers):
            x = layer(x, self.rotary, positions, index, kv_cache, start_pos, mask)
        if last_only:
            x = x[:, -1:]
        logits = self.output(self.norm(x)).float()
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100)
        return logits, loss
