"""The tokenizer at run time: its special tokens, chat template, loading, saving and rendering
(training a tokenizer is the pipeline's job: tasks/bpe.py).

    from model.tokenizer import load_tokenizer, render_chat, END_OF_TURN
    tok = load_tokenizer(folder)                    # folder/tokenizer.json
    text = render_chat([{"role": "user", "content": "Hi"}], add_generation_prompt=True)
    # transformers.AutoTokenizer.from_pretrained(folder).apply_chat_template(...) renders the same

A crawl2model tokenizer is byte-level BPE (Hugging Face `tokenizers`) whose first ids are the
special tokens below, in this order: end of text (between documents) and the chat-turn tokens.
Encoding adds no special tokens; the pipeline and the chat template place them.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from tokenizers import Tokenizer

EOT = "<|endoftext|>"
SYSTEM, USER, ASSISTANT, END_OF_TURN = "<|system|>", "<|user|>", "<|assistant|>", "<|end_of_turn|>"
SPECIAL_TOKENS = (EOT, SYSTEM, USER, ASSISTANT, END_OF_TURN)  # ids 0..4 in this order

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + '<|end_of_turn|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


def load_tokenizer(folder: Path) -> Tokenizer:
    path = Path(folder) / "tokenizer.json"
    if not path.exists():
        raise FileNotFoundError(f"no tokenizer at {path}: run `crawl2model tokenizer train` first")
    return Tokenizer.from_file(str(path))


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
    write_hf_files(tmp, model_max_length)
    shutil.rmtree(folder, ignore_errors=True)
    os.rename(tmp, folder)
    return folder


def write_hf_files(folder: Path, model_max_length: int) -> None:
    """tokenizer_config.json and special_tokens_map.json beside a tokenizer.json."""
    config = hf_config(model_max_length)
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=1))
    specials = {k: config[k] for k in ("eos_token", "pad_token", "additional_special_tokens")}
    (folder / "special_tokens_map.json").write_text(json.dumps(specials, indent=1))


def render_chat(messages: list[dict], add_generation_prompt: bool = False) -> str:
    """The chat template rendered with jinja2, as transformers renders it."""
    import jinja2  # deferred: only rendering needs it (it comes with torch)

    template = jinja2.Environment(undefined=jinja2.StrictUndefined).from_string(CHAT_TEMPLATE)
    return template.render(messages=messages, add_generation_prompt=add_generation_prompt)
