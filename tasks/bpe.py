"""Byte-level BPE tokenizer training with Hugging Face `tokenizers`; saving, loading, the special
tokens and the chat template are the model's (model/tokenizer.py), so that `tokenizers` and
`transformers` load what is trained here and agree on every id.

    from tasks.bpe import train_tokenizer
    from model.tokenizer import save_tokenizer, load_tokenizer
    tok = train_tokenizer(batches_of_texts, vocab_size=8192)     # batches: an iterable of lists
    folder = save_tokenizer(tok, root / "tokenizer" / "abc123")  # tokenizer.json + tokenizer_config.json
    tok = load_tokenizer(folder)
    # transformers.AutoTokenizer.from_pretrained(folder) gives the same ids

Pre-tokenization is GPT-4's (cl100k) split pattern, then byte-level: every string maps to bytes
and every byte is in the base alphabet, so `decode(encode(s)) == s` for any Unicode string (the
role byte fallback plays for non-byte-level BPE; no unknown token exists). No normalizer, no
post-processor: encoding adds no special tokens, the pipeline places them. Special tokens: end
of text (between documents) and the chat-turn tokens, with a Jinja chat template that
transformers' `apply_chat_template` and `model.tokenizer.render_chat` render alike.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from model.tokenizer import SPECIAL_TOKENS

# GPT-4's split: contractions, words with one leading non-letter, numbers of up to 3 digits,
# punctuation runs, newlines, other whitespace (a space before a word stays with the word).
SPLIT_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                 r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def new_tokenizer() -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def train_tokenizer(batches: Iterable[list[str]], vocab_size: int, min_frequency: int = 2,
                    length: int | None = None) -> Tokenizer:
    """Train on batches of texts, streamed (the corpus is never one list in memory)."""
    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size {vocab_size} is below the 256 bytes plus {len(SPECIAL_TOKENS)} special tokens")
    tokenizer = new_tokenizer()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, show_progress=False,
                                  special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(batches, trainer=trainer, length=length)
    return tokenizer


def longest_merges(tokenizer: Tokenizer, n: int = 50) -> list[dict]:
    """The n merges whose result decodes to the longest text (what the tokenizer learned)."""
    model = json.loads(tokenizer.to_str())["model"]
    vocab = model["vocab"]
    rows = []
    for rank, merge in enumerate(model["merges"]):
        left, right = merge if isinstance(merge, list) else merge.split(" ", 1)
        token = left + right
        text = tokenizer.decode([vocab[token]])
        rows.append({"rank": rank, "id": vocab[token], "text": text, "chars": len(text)})
    return sorted(rows, key=lambda r: (-r["chars"], r["rank"]))[:n]


def bytes_per_token(tokenizer: Tokenizer, texts: list[str]) -> float:
    encoded = tokenizer.encode_batch(texts)
    tokens = sum(len(e.ids) for e in encoded)
    return sum(len(t.encode()) for t in texts) / max(1, tokens)
