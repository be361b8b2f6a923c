"""Chat data for post-training: read SFT and preference (DPO) rows, quarantine the bad ones with a
reason, tokenize conversations with a loss mask, and draw deterministic SFT batches.

    from model.chat_data import load_sft, load_preferences, encode_sft, encode_preference, sft_batches
    examples, bad = load_sft("sft.jsonl")              # lists of messages; bad rows with a reason
    pairs, bad = load_preferences("prefs.parquet")     # PreferencePair(prompt_messages, chosen, rejected)
    encoded = [encode_sft(m, tokenizer, max_len=seq_len + 1) for m in examples]
    x, y, mask = sft_batches(encoded, batch_size=8, seq_len=seq_len, pack=True, seed=0, step=step)

    .venv/bin/python -m model.chat_data FILE [--kind sft|dpo]    # counts and quarantine reasons

Rows (JSONL, .jsonl.gz or Parquet), in the formats TRL and the hubs use:
  SFT  {"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}
       {"text": str}   plain text, every token learned (TRL's language-modeling form: replay of the
       pretraining corpus, so tuning does not wear the language model down)
       {"prompt": str, "response" | "completion": str, "system"?: str}   (prompt/completion may
       also be message lists, TRL's conversational prompt-completion form)
  DPO  {"prompt", "chosen", "rejected"}: strings, or a message list and one-assistant-message lists
       {"chosen", "rejected"} as HH transcripts ("\\n\\nHuman: ...\\n\\nAssistant: ...") or as full
       message lists: split at the LAST assistant turn; the shared prefix is the prompt.
Every row read is either an example or a quarantine entry {"source", "line", "reason", "preview"},
so the counts always reconcile. Blank lines are not rows.

Tokens: a conversation is exactly `model.tokenizer.render_chat`'s string (what the HF export's
apply_chat_template gives), tokenized with the role and end-of-turn markers as their special ids
and every content through the plain-text encoder, so text such as "<|user|>" inside a message is
plain text and never a marker. The loss mask is True on assistant content and on the
<|end_of_turn|> that closes each assistant turn (the model learns to stop), False elsewhere.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import random
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from tokenizers import Tokenizer

from model.tokenizer import ASSISTANT, END_OF_TURN, EOT, SPECIAL_TOKENS, SYSTEM, USER, plain_text_encoder

ROLES = {"system": SYSTEM, "user": USER, "assistant": ASSISTANT}
TEXT_ROLE = "text"  # a plain-text SFT row: <|endoftext|> then the text, every token learned (as in pretraining)
IGNORE = -100  # torch.nn.functional.cross_entropy's default ignore_index
HH_TURN = re.compile(r"\n\n(Human|Assistant):")
HH_ROLES = {"Human": "user", "Assistant": "assistant"}
PREVIEW_CHARS = 160


class BadRow(ValueError):
    """A row that cannot become an example; `reason` is a short kebab-case code."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class PreferencePair(NamedTuple):
    prompt_messages: list[dict]  # ends with a user turn
    chosen: str                  # the preferred assistant reply
    rejected: str


class EncodedChat(tuple):
    """(ids, loss_mask), unpacking as a pair, with `.truncated` telling whether max_len cut it."""

    def __new__(cls, ids: list[int], loss_mask: list[bool], truncated: bool = False):
        self = super().__new__(cls, (ids, loss_mask))
        self.truncated = truncated
        return self

    ids = property(lambda self: self[0])
    loss_mask = property(lambda self: self[1])


# ---------------------------------------------------------------- reading rows

def _read(path: Path) -> Iterator[tuple[int, dict | None, str | None, str]]:
    """(line or row number from 1, row, reason, raw preview) for every row of a file."""
    name = path.name.lower()
    if not path.exists():
        raise FileNotFoundError(f"no chat data file at {path}")
    if name.endswith(".parquet"):
        import pyarrow.parquet as pq

        number = 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
            for row in batch.to_pylist():
                number += 1
                yield number, row, None, ""
        return
    if not (name.endswith(".jsonl") or name.endswith(".jsonl.gz")):
        raise ValueError(f"{path}: unsupported chat data file; use .jsonl, .jsonl.gz or .parquet")
    opener = gzip.open if name.endswith(".gz") else open
    with opener(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                yield number, None, "invalid-utf8", raw[:PREVIEW_CHARS].decode("utf-8", "replace")
                continue
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                yield number, None, "invalid-json", line.rstrip("\r\n")[:PREVIEW_CHARS]
                continue
            if not isinstance(row, dict):
                yield number, None, "not-an-object", line.rstrip("\r\n")[:PREVIEW_CHARS]
                continue
            yield number, row, None, ""


def read_rows(path: str | Path) -> Iterator[tuple[int, dict | None, str | None]]:
    """(line number, row, None) for each row, or (line number, None, reason) for one that could not
    be parsed: "invalid-json", "invalid-utf8", "not-an-object". Parquet rows are numbered from 1."""
    for number, row, reason, _ in _read(Path(path)):
        yield number, row, reason


def _preview(row) -> str:
    try:
        text = json.dumps(row, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        text = repr(row)
    return text[:PREVIEW_CHARS]


def _load(path: str | Path, parse) -> tuple[list, list[dict]]:
    good, quarantine = [], []
    for number, row, reason, raw in _read(Path(path)):
        if reason is None:
            try:
                good.append(parse(row))
                continue
            except BadRow as e:
                reason, raw = e.reason, _preview(row)
        quarantine.append({"source": str(path), "line": number, "reason": reason, "preview": raw})
    return good, quarantine


def load_sft(path: str | Path) -> tuple[list[list[dict]], list[dict]]:
    """(examples as message lists, quarantine); len(examples) + len(quarantine) == rows read."""
    return _load(path, sft_example)


def load_preferences(path: str | Path) -> tuple[list[PreferencePair], list[dict]]:
    """(pairs, quarantine); len(pairs) + len(quarantine) == rows read."""
    return _load(path, preference_example)


def reasons(quarantine: list[dict]) -> Counter:
    return Counter(q["reason"] for q in quarantine)


# ---------------------------------------------------------------- parsing rows

def _field(row: dict, *names: str):
    for name in names:
        if row.get(name) is not None:  # a Parquet null is a missing field
            return row[name]
    raise BadRow("missing-field", "/".join(names))


def _text(value) -> str:
    if not isinstance(value, str):
        raise BadRow("not-a-string", type(value).__name__)
    if not value.strip():
        raise BadRow("empty-content")
    return value


def _messages(value) -> list[dict]:
    """Validated {"role", "content"} messages (other keys dropped)."""
    if not isinstance(value, (list, tuple)):
        raise BadRow("not-a-list", type(value).__name__)
    out = []
    for message in value:
        if not isinstance(message, dict):
            raise BadRow("not-an-object", type(message).__name__)
        role, content = message.get("role"), message.get("content")
        if role is None or content is None:
            raise BadRow("missing-field", "role/content")
        if role not in ROLES:
            raise BadRow("unknown-role", str(role)[:30])
        out.append({"role": role, "content": _text(content)})
    return out


def _conversation(system, turns: list[dict]) -> list[dict]:
    return ([{"role": "system", "content": _text(system)}] if system is not None else []) + turns


def sft_example(row: dict) -> list[dict]:
    """The messages of an SFT row, ending with an assistant turn, or BadRow(reason). A plain-text
    row ({"text"}, TRL's language-modeling form) is one message of role TEXT_ROLE."""
    if not isinstance(row, dict):
        raise BadRow("not-an-object")
    if row.get("text") is not None and row.get("messages") is None and row.get("prompt") is None:
        return [{"role": TEXT_ROLE, "content": _text(row["text"])}]
    if row.get("messages") is not None:
        messages = _messages(row["messages"])
    else:
        prompt, response = _field(row, "prompt"), _field(row, "response", "completion")
        turns = _messages(prompt) if isinstance(prompt, list) else [{"role": "user", "content": _text(prompt)}]
        turns += (_messages(response) if isinstance(response, list)
                  else [{"role": "assistant", "content": _text(response)}])
        messages = _conversation(row.get("system"), turns)
    if not any(m["role"] == "assistant" for m in messages):
        raise BadRow("no-assistant-turn")
    if messages[-1]["role"] != "assistant":
        raise BadRow("last-turn-not-assistant")
    return messages


def _completion(value) -> str:
    """A string, or a list holding exactly one assistant message."""
    if not isinstance(value, list):
        return _text(value)
    messages = _messages(value)
    if len(messages) != 1 or messages[0]["role"] != "assistant":
        raise BadRow("not-one-assistant-turn")
    return messages[0]["content"]


def _hh_turns(transcript) -> list[dict]:
    """HH transcript -> messages; text before the first "\\n\\nHuman:" is refused."""
    parts = HH_TURN.split(transcript)
    if parts[0].strip():
        raise BadRow("hh-malformed", "text before the first turn")
    return [{"role": HH_ROLES[role], "content": content.strip()} for role, content in zip(parts[1::2], parts[2::2])]


def _split_last_assistant(chosen: list[dict], rejected: list[dict]) -> PreferencePair:
    """Two full conversations -> the shared prefix and the two last assistant turns."""
    for conversation in (chosen, rejected):
        if not conversation or conversation[-1]["role"] != "assistant":
            raise BadRow("no-assistant-turn" if not any(m["role"] == "assistant" for m in conversation)
                         else "last-turn-not-assistant")
    prompt = chosen[:-1]
    if prompt != rejected[:-1]:
        raise BadRow("hh-prefix-mismatch")
    return _pair(prompt, chosen[-1]["content"], rejected[-1]["content"])


def _pair(prompt: list[dict], chosen: str, rejected: str) -> PreferencePair:
    for message in prompt:
        if not message["content"].strip():
            raise BadRow("empty-content")
    if not chosen.strip() or not rejected.strip():
        raise BadRow("empty-content")
    if not any(m["role"] == "user" for m in prompt):
        raise BadRow("no-user-turn")
    if prompt[-1]["role"] != "user":
        raise BadRow("prompt-not-ending-with-user")
    if chosen.strip() == rejected.strip():
        raise BadRow("identical-chosen-rejected")
    return PreferencePair(prompt, chosen, rejected)


def preference_example(row: dict) -> PreferencePair:
    """The PreferencePair of a DPO row, or BadRow(reason)."""
    if not isinstance(row, dict):
        raise BadRow("not-an-object")
    chosen, rejected = _field(row, "chosen"), _field(row, "rejected")
    if row.get("prompt") is not None:
        prompt = row["prompt"]
        turns = _messages(prompt) if isinstance(prompt, list) else [{"role": "user", "content": _text(prompt)}]
        return _pair(_conversation(row.get("system"), turns), _completion(chosen), _completion(rejected))
    if isinstance(chosen, list) and isinstance(rejected, list):  # TRL's implicit-prompt form
        return _split_last_assistant(_messages(chosen), _messages(rejected))
    for transcript in (chosen, rejected):
        if not isinstance(transcript, str):
            raise BadRow("not-a-string", type(transcript).__name__)
        if "\n\nAssistant:" not in transcript:
            raise BadRow("hh-malformed" if "\n\nHuman:" not in transcript else "no-assistant-turn")
    if chosen[:chosen.rindex("\n\nAssistant:")] != rejected[:rejected.rindex("\n\nAssistant:")]:
        raise BadRow("hh-prefix-mismatch")
    chosen_turns, rejected_turns = _hh_turns(chosen), _hh_turns(rejected)
    for turns in (chosen_turns, rejected_turns):
        if any(a["role"] == b["role"] for a, b in zip(turns, turns[1:])) or turns[0]["role"] != "user":
            raise BadRow("hh-turns-not-alternating")  # e.g. a "Human:" that lost its "\n\n"
    return _split_last_assistant(chosen_turns, rejected_turns)


# ---------------------------------------------------------------- tokens

_PLAIN: dict[int, tuple[Tokenizer, Tokenizer, dict[str, int]]] = {}


def _encoders(tokenizer: Tokenizer) -> tuple[Tokenizer, dict[str, int]]:
    """(plain-text encoder, special token -> id), built once per tokenizer object."""
    hit = _PLAIN.get(id(tokenizer))
    if hit is None or hit[0] is not tokenizer:
        specials = {t: tokenizer.token_to_id(t) for t in SPECIAL_TOKENS}
        if None in specials.values():
            raise ValueError(f"the tokenizer lacks the chat tokens {[t for t, i in specials.items() if i is None]}")
        if len(_PLAIN) >= 8:
            _PLAIN.clear()
        hit = _PLAIN[id(tokenizer)] = (tokenizer, plain_text_encoder(tokenizer), specials)
    return hit[1], hit[2]


def _content_ids(plain: Tokenizer, specials: dict[str, int], text: str) -> list[int]:
    ids = plain.encode(text).ids
    if set(ids) & set(specials.values()):  # cannot happen with crawl2model tokenizers; guard anyway
        raise ValueError(f"plain-text encoding of {text[:40]!r} produced a special id")
    return ids


def chat_prompt_ids(tokenizer: Tokenizer, prompt: str) -> list[int]:
    """A user turn and the generation prompt: render_chat([user], add_generation_prompt=True)'s ids."""
    return conversation_prompt_ids(tokenizer, [{"role": "user", "content": prompt}])


def conversation_prompt_ids(tokenizer: Tokenizer, messages: list[dict], add_generation_prompt: bool = True) -> list[int]:
    """render_chat(messages, add_generation_prompt)'s ids for a whole conversation (system, then
    user/assistant turns): role and end-of-turn markers as special ids, every content through the
    plain-text encoder; with the generation prompt (<|assistant|>) the model answers next."""
    plain, specials = _encoders(tokenizer)
    ids: list[int] = []
    for message in messages:
        if message["role"] not in ROLES:
            raise ValueError(f"unknown role {message['role']!r}; known: {', '.join(ROLES)}")
        ids += [specials[ROLES[message["role"]]], *_content_ids(plain, specials, message["content"]),
                specials[END_OF_TURN]]
    return ids + [specials[ASSISTANT]] if add_generation_prompt else ids


def encode_sft(messages: list[dict], tokenizer: Tokenizer, max_len: int) -> EncodedChat:
    """(ids, loss_mask) of render_chat(messages), cut to max_len tokens from the right
    (`.truncated` says so). The mask is True on assistant content and the <|end_of_turn|> closing
    each assistant turn. BadRow("too-long") when no trainable token is left."""
    plain, specials = _encoders(tokenizer)
    end = specials[END_OF_TURN]
    ids: list[int] = []
    mask: list[bool] = []
    if len(messages) == 1 and messages[0]["role"] == TEXT_ROLE:
        content = _content_ids(plain, specials, messages[0]["content"])
        ids, mask = [specials[EOT], *content], [False] + [True] * len(content)
        messages = []
    for message in messages:
        if message["role"] not in ROLES:
            raise BadRow("unknown-role", str(message["role"]))
        content = _content_ids(plain, specials, message["content"])
        learn = message["role"] == "assistant"
        ids += [specials[ROLES[message["role"]]], *content, end]
        mask += [False] + [learn] * (len(content) + 1)
    truncated = len(ids) > max_len
    ids, mask = ids[:max_len], mask[:max_len]
    if not any(mask[1:]):  # position 0 is never a target
        raise BadRow("too-long" if truncated else "no-assistant-turn")
    return EncodedChat(ids, mask, truncated)


def encode_preference(pair: PreferencePair, tokenizer: Tokenizer, max_len: int) -> dict:
    """{"prompt_ids", "chosen_ids", "rejected_ids", "truncated"}: prompt_ids is the rendered
    prompt with the generation prompt (<|assistant|>), each completion ends with <|end_of_turn|>,
    and prompt_ids + chosen_ids is render_chat(prompt + [chosen]) tokenized.

    If prompt + the longer completion exceed max_len, the prompt loses tokens from the left first
    (down to max_len // 2 tokens, TRL's keep-end), then the completions are cut from the right
    (losing their <|end_of_turn|>). BadRow("identical-after-truncation") when that makes them equal."""
    plain, specials = _encoders(tokenizer)
    end = specials[END_OF_TURN]
    prompt = []
    for message in pair.prompt_messages:
        prompt += [specials[ROLES[message["role"]]], *_content_ids(plain, specials, message["content"]), end]
    prompt.append(specials[ASSISTANT])
    chosen = _content_ids(plain, specials, pair.chosen) + [end]
    rejected = _content_ids(plain, specials, pair.rejected) + [end]
    longest = max(len(chosen), len(rejected))
    truncated = len(prompt) + longest > max_len
    if truncated:
        keep = max(min(len(prompt), max_len // 2), max_len - longest)
        prompt = prompt[len(prompt) - keep:]
        room = max_len - len(prompt)
        chosen, rejected = chosen[:room], rejected[:room]
        if not room:
            raise BadRow("too-long")
        if chosen == rejected:
            raise BadRow("identical-after-truncation")
    return {"prompt_ids": prompt, "chosen_ids": chosen, "rejected_ids": rejected, "truncated": truncated}


# ---------------------------------------------------------------- batches

def sft_batches(encoded: list[tuple[list[int], list[bool]]], batch_size: int, seq_len: int, pack: bool,
                seed: int, step: int, rank: int = 0, world_size: int = 1
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(inputs, targets, mask) of global step `step`, each (batch_size, seq_len): int64, int64, bool.

    targets[i] is the token after inputs[i] where the loss mask of that token is True and -100
    (cross_entropy's ignore_index) elsewhere; mask == (targets != -100). Drawn from (seed, step)
    like model.data.ShardBatches (examples with replacement), so a resumed run draws the same
    batches; rank r of world_size takes its slice of the global batch. Examples must hold at most
    seq_len + 1 tokens (encode with max_len=seq_len + 1).

    pack=False: one example per row, padded with id 0 (<|endoftext|>) and target -100.
    pack=True: examples drawn one after another fill each row, separated by <|endoftext|>, with
    padding only at the end. Attention is NOT masked between them: a later example can attend to
    an earlier one. That is acceptable as in pretraining (documents separated by end-of-text):
    every example starts with its own role marker after an end-of-text, and no loss is taken on
    the separator or on a prediction across the boundary."""
    if not encoded:
        raise ValueError("no encoded examples to batch")
    width = seq_len + 1
    longest = max(len(ids) for ids, _ in encoded)
    if longest > width:
        raise ValueError(f"an example holds {longest} tokens, more than seq_len + 1 = {width}; "
                         f"encode with max_len={width}")
    rows = range(rank * batch_size, (rank + 1) * batch_size)
    if pack:
        shortest = min(len(ids) for ids, _ in encoded)
        picked = []
        for row in rows:
            rng = np.random.Generator(np.random.PCG64([seed, step, row]))
            chosen, used, misses = [], 0, 0
            while misses < 8 and width - used >= shortest + (1 if chosen else 0):
                k = int(rng.integers(len(encoded)))
                need = len(encoded[k][0]) + (1 if chosen else 0)
                if used + need <= width:
                    chosen.append(k)
                    used += need
                else:
                    misses += 1
            picked.append(chosen)
    else:
        rng = np.random.Generator(np.random.PCG64([seed, step]))
        picks = rng.integers(0, len(encoded), size=batch_size * world_size)
        picked = [[int(picks[row])] for row in rows]
    tokens = torch.zeros((batch_size, width), dtype=torch.int64)
    learn = torch.zeros((batch_size, width), dtype=torch.bool)
    for r, examples in enumerate(picked):
        at = 0
        for n, k in enumerate(examples):
            at += 1 if n else 0  # the <|endoftext|> separator: id 0, no loss
            ids, mask = encoded[k]
            tokens[r, at:at + len(ids)] = torch.tensor(ids, dtype=torch.int64)
            learn[r, at:at + len(ids)] = torch.tensor(mask, dtype=torch.bool)
            learn[r, at] = False  # the first token of an example is never a target
            at += len(ids)
    inputs, targets = tokens[:, :-1], tokens[:, 1:].clone()
    mask = learn[:, 1:].clone()
    targets[~mask] = IGNORE
    return inputs.contiguous(), targets, mask


# ---------------------------------------------------------------- pairs from the corpus

CONTINUE_PROMPTS = ("Continue this passage:\n{text}", "Continue the following text.\n\n{text}",
                    "What comes next in this text?\n\n{text}")
TITLE_PROMPTS = ("Write the opening of an article titled \"{title}\".", "Title: {title}\nWrite the first paragraphs.")


def _cut(text: str, target: int) -> int:
    """A break near `target` characters: paragraph, line, sentence, then word boundary."""
    if len(text) <= target:
        return len(text)
    for sep in ("\n\n", "\n", ". ", " "):
        k = text.rfind(sep, target // 2, target)
        if k > 0:
            return k + len(sep)
    return target


def text_rows(texts: Iterable[str | tuple[str, str]], chars: int = 1000, limit: int | None = None) -> list[dict]:
    """Plain-text SFT rows {"text"}: each document cut into pieces of about `chars` characters at
    paragraph, line, sentence or word breaks, in order; at most `limit` rows."""
    rows: list[dict] = []
    for item in texts:
        text = item[1] if isinstance(item, tuple) else item
        text = text.strip() if isinstance(text, str) else ""
        while text and (limit is None or len(rows) < limit):
            cut = _cut(text, chars)
            rows.append({"text": text[:cut].strip()})
            text = text[cut:].strip()
    return rows


def pairs_from_warehouse_texts(texts: Iterable[str | tuple[str, str]], seed: int = 0, prompt_chars: int = 600,
                               response_chars: int = 800, min_chars: int = 80,
                               limit: int | None = None) -> list[dict]:
    """SFT rows {"prompt", "response"} made from corpus documents, for when the user gives none.

    Each document (a text, or a (title, text) tuple) gives a continuation pair ("Continue this
    passage:\\n<first part>" -> the next part, cut at paragraph/sentence breaks), and a titled one
    also gives title -> opening paragraphs. Documents too short for both parts (min_chars each)
    are skipped. Deterministic: the cut points and phrasings come from (seed, the document's text),
    so a document gives the same pair wherever it sits in the input.

    What such pairs teach: the chat format and turn-taking (answer after <|assistant|>, stop with
    <|end_of_turn|>) and staying on topic. What they cannot teach: helpfulness, following
    instructions, answering questions, refusing harmful requests; for those, use real SFT data."""
    rows: list[dict] = []
    for item in texts:
        title, text = item if isinstance(item, tuple) else (None, item)
        if not isinstance(text, str):
            continue
        text = text.strip()
        digest = hashlib.sha256(f"{seed}\0{title}\0{text}".encode()).digest()
        rng = random.Random(digest)
        cut = _cut(text, rng.randint(prompt_chars // 2, prompt_chars))
        head, rest = text[:cut].strip(), text[cut:].lstrip()
        tail = rest[:_cut(rest, response_chars)].strip()
        if title and title.strip() and len(head) >= min_chars:
            rows.append({"prompt": rng.choice(TITLE_PROMPTS).format(title=title.strip()), "response": head})
        if len(head) >= min_chars and len(tail) >= min_chars:
            rows.append({"prompt": rng.choice(CONTINUE_PROMPTS).format(text=head), "response": tail})
        if limit is not None and len(rows) >= limit:
            return rows[:limit]
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Parse a chat data file and report counts and quarantine reasons.")
    parser.add_argument("file", type=Path)
    parser.add_argument("--kind", choices=("sft", "dpo"), default="sft")
    args = parser.parse_args(argv)
    good, bad = (load_sft if args.kind == "sft" else load_preferences)(args.file)
    print(json.dumps({"file": str(args.file), "kind": args.kind, "rows": len(good) + len(bad), "examples": len(good),
                      "quarantined": len(bad), "reasons": dict(reasons(bad))}, indent=1))
    for q in bad[:10]:
        print(f"  line {q['line']}: {q['reason']}  {q['preview'][:100]!r}")


if __name__ == "__main__":
    main()
