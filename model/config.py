"""Shape of a Llama-style decoder: one frozen dataclass, named presets, JSON round trip, and
parameter and FLOP counts for throughput (MFU) reporting.

    from model.config import ModelConfig, PRESETS
    cfg = ModelConfig.from_preset("small", vocab_size=8192)             # or ...("tiny", 512, n_layers=1)
    cfg.num_params(), cfg.num_params(include_embeddings=False)
    cfg.flops_per_token(cfg.max_seq_len)                                # training FLOPs per token
    ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg

Presets carry everything but the vocab size, which comes from the trained tokenizer.
`ffn_dim=None` means Llama's rule: 8/3 * dim rounded up to a multiple of 64, so the SwiGLU
MLP (three matrices) costs about what a 4 * dim two-matrix MLP would.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from model.settings import from_known_fields

FFN_MULTIPLE_OF = 64

PRESETS: dict[str, dict] = {
    # CPU unit tests: a forward pass takes milliseconds.
    "tiny": dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=128),
    # A few minutes of training on 2 CPU cores over the ~0.7M-token sample corpus (vocab 8192:
    # 5.3M parameters, 3.2M outside the embedding).
    "small": dict(dim=256, n_layers=4, n_heads=4, n_kv_heads=4, max_seq_len=256),
    # GPT-2 small's shape (124M with GPT-2's 50257 vocab; ~110M with 32k).
    "124m": dict(dim=768, n_layers=12, n_heads=12, n_kv_heads=12, max_seq_len=1024),
    # GPT-2 medium's shape (~355M with 50257 vocab).
    "350m": dict(dim=1024, n_layers=24, n_heads=16, n_kv_heads=16, max_seq_len=1024),
}


def default_ffn_dim(dim: int) -> int:
    hidden = int(8 * dim / 3)
    return FFN_MULTIPLE_OF * ((hidden + FFN_MULTIPLE_OF - 1) // FFN_MULTIPLE_OF)


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int  # grouped-query attention: each k/v head serves n_heads // n_kv_heads query heads
    ffn_dim: int | None = None  # SwiGLU hidden size; None: default_ffn_dim(dim)
    max_seq_len: int = 1024
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    init_std: float = 0.02

    def __post_init__(self):
        for name in ("vocab_size", "dim", "n_layers", "n_heads", "n_kv_heads", "max_seq_len"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.dim % self.n_heads:
            raise ValueError(f"dim {self.dim} is not divisible by n_heads {self.n_heads}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads {self.n_heads} is not divisible by n_kv_heads {self.n_kv_heads} "
                             "(grouped-query attention shares each k/v head among equal groups of query heads)")
        if self.head_dim % 2:
            raise ValueError(f"head_dim {self.head_dim} (dim {self.dim} / n_heads {self.n_heads}) must be even "
                             "for rotary embeddings")
        if self.ffn_dim is None:
            object.__setattr__(self, "ffn_dim", default_ffn_dim(self.dim))  # frozen: set once, here
        elif self.ffn_dim < 1:
            raise ValueError(f"ffn_dim must be positive, got {self.ffn_dim}")
        if self.rope_theta <= 0 or self.norm_eps <= 0 or self.init_std <= 0:
            raise ValueError("rope_theta, norm_eps and init_std must be positive")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @classmethod
    def from_preset(cls, name: str, vocab_size: int, **overrides) -> "ModelConfig":
        if name not in PRESETS:
            raise ValueError(f"unknown model preset {name!r}; known presets: {', '.join(PRESETS)}")
        return cls(vocab_size=vocab_size, **{**PRESETS[name], **overrides})

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        return from_known_fields(cls, data)

    def num_params(self, include_embeddings: bool = True) -> int:
        """Exact parameter count of model.llama.Llama (a tied output matrix counts once).
        Without embeddings: the token embedding and, when untied, the output matrix are left out."""
        kv_dim = self.n_kv_heads * self.head_dim
        attention = self.dim * self.dim * 2 + self.dim * kv_dim * 2  # wq, wo, wk, wv
        feed_forward = 3 * self.dim * self.ffn_dim  # w1, w2, w3
        per_layer = attention + feed_forward + 2 * self.dim  # + attention_norm, ffn_norm
        body = self.n_layers * per_layer + self.dim  # + final norm
        if not include_embeddings:
            return body
        embeddings = self.vocab_size * self.dim * (1 if self.tie_embeddings else 2)
        return body + embeddings

    def flops_per_token(self, seq_len: int, include_lm_head: bool = True) -> int:
        """Training (forward + backward) FLOPs per token at context length seq_len:

            6 * N + 12 * n_layers * dim * seq_len

        N is num_params(include_embeddings=False) plus, with include_lm_head, the output
        projection's dim * vocab_size (a real matmul per token even when tied; the embedding
        lookup is free). 6 = 2 (multiply-add) x 3 (forward + backward w.r.t. activations and
        weights). The second term is the attention scores and weighted sum, 2 * 2 * dim * seq_len
        per layer forward, times 3; it ignores the causal mask's halving, as nanoGPT and the
        PaLM MFU formula do, so MFU numbers are comparable with theirs."""
        n = self.num_params(include_embeddings=False)
        if include_lm_head:
            n += self.dim * self.vocab_size
        return 6 * n + 12 * self.n_layers * self.dim * seq_len
