"""Text in, text out with a pretraining checkpoint: finds the tokenizer the checkpoint was trained
with (through its shard manifest) and continues a prompt.

    from model.sampling import generate_text
    print(generate_text("c2m-data/checkpoints/<run>/step-000100", "The ", max_new_tokens=64, temperature=0.8))
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from model.checkpoint import CheckpointError, load_checkpoint
from model.config import ModelConfig
from model.generate import generate
from model.hf import tokenizer_folder
from model.llama import Llama
from model.tokenizer import EOT

__all__ = ["CheckpointError", "generate_text", "load_model", "load_model_and_tokenizer"]


def load_model(path: str | Path) -> tuple[Llama, dict]:
    path = Path(path)
    try:
        meta = json.loads((path / "meta.json").read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path} is not a checkpoint (no meta.json)") from None
    model = Llama(ModelConfig.from_dict(meta["config"]))
    load_checkpoint(path, model)
    return model.eval(), meta


def load_model_and_tokenizer(path: str | Path):
    """The checkpoint's model (eval mode) and the tokenizer it was trained with, or imported with."""
    from tokenizers import Tokenizer

    model, _ = load_model(path)
    return model, Tokenizer.from_file(str(tokenizer_folder(Path(path)) / "tokenizer.json"))


def generate_text(path: str | Path, prompt: str, max_new_tokens: int = 64, temperature: float = 0.8,
                  top_k: int | None = 50, top_p: float | None = None, seed: int = 0) -> str:
    model, tokenizer = load_model_and_tokenizer(path)
    ids = tokenizer.encode(prompt).ids or [tokenizer.token_to_id(EOT)]
    with torch.no_grad():
        [new] = generate(model, [ids], max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                         eos_id=tokenizer.token_to_id(EOT), seed=seed)
    return tokenizer.decode(new)
