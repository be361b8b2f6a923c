"""Byte-level BPE tokenizer: trained with Hugging Face `tokenizers`, saved so that `tokenizers`
and `transformers` load it and agree on every id.

    from tasks.bpe import train_tokenizer, save_tokenizer, load_tokenizer
    tok = train_tokenizer(batches_of_texts, vocab_size=8192)     # batches: an iterable of lists
    folder = save_tokenizer(tok, root / "tokenizer" / "abc123")  # tokenizer.json + tokenizer_config.json
    tok = load_tokenizer(folder)
    # transformers.AutoTokenizer.from_pretrained(folder) gives the same ids

Pre-tokenization is GPT-4's (cl100k) split pattern, then byte-level: every string maps to bytes
and every byte is in the base alphabet, so `decode(encode(s)) == s` for any Unicode string (the
role byte fallback plays for non-byte-level BPE; no unknown token exists). No normalizer, no
post-processor: encoding adds no special tokens, the pipeline places them. Special tokens: end
of text (between documents) and the chat-turn tokens, with a Jinja chat template that
transformers' `apply_chat_template` and `render_chat` here render alike.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

EOT = "<|endoftext|>"
SYSTEM, USER, ASSISTANT, END_OF_TURN = "<|system|>", "<|user|>", "<|assistant|>", "<|end_of_turn|>"
SPECIAL_TOKENS = (EOT, SYSTEM, USER, ASSISTANT, END_OF_TURN)  # ids 0..4 in this order

# GPT-4's split: contractions, words with one leading non-letter, numbers of up to 3 digits,
# punctuation runs, newlines, other whitespace (a space before a word stays with the word).
SPLIT_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                 r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + '<|end_of_turn|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


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


def plain_text_encoder(tokenizer: Tokenizer) -> Tokenizer:
    """The same tokenizer without its special tokens matched in the input: a crawled page that
    contains the text "<|endoftext|>" must not put an end-of-text id into the training stream
    (the pipeline places those itself). Same ids for every other text."""
    spec = json.loads(tokenizer.to_str())
    spec["added_tokens"] = []
    return Tokenizer.from_str(json.dumps(spec))


def hf_config(model_max_length: int) -> dict:
    """tokenizer_config.json for transformers' PreTrainedTokenizerFast."""
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": None, "eos_token": EOT, "pad_token": EOT, "unk_token": None,
        "additional_special_tokens": [SYSTEM, USER, ASSISTANT, END_OF_TURN],
        "model_max_length": model_max_length,
        "clean_up_tokenization_spaces": False,
        "add_prefix_space": False,
        "chat_template": CHAT_TEMPLATE,
    }


def save_tokenizer(tokenizer: Tokenizer, folder: Path, model_max_length: int = 2048) -> Path:
    """tokenizer.json, tokenizer_config.json, special_tokens_map.json, written to a temporary
    folder that is renamed into place (complete or absent)."""
    folder = Path(folder)
    tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tokenizer.save(str(tmp / "tokenizer.json"))
    config = hf_config(model_max_length)
    (tmp / "tokenizer_config.json").write_text(json.dumps(config, indent=1))
    specials = {k: config[k] for k in ("eos_token", "pad_token", "additional_special_tokens")}
    (tmp / "special_tokens_map.json").write_text(json.dumps(specials, indent=1))
    shutil.rmtree(folder, ignore_errors=True)
    os.rename(tmp, folder)
    return folder


def load_tokenizer(folder: Path) -> Tokenizer:
    path = Path(folder) / "tokenizer.json"
    if not path.exists():
        raise FileNotFoundError(f"no tokenizer at {path}: run `crawl2model tokenizer train` first")
    return Tokenizer.from_file(str(path))


def render_chat(messages: list[dict], add_generation_prompt: bool = False) -> str:
    """The chat template rendered with jinja2, as transformers renders it."""
    import jinja2

    template = jinja2.Environment(undefined=jinja2.StrictUndefined).from_string(CHAT_TEMPLATE)
    return template.render(messages=messages, add_generation_prompt=add_generation_prompt)


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
