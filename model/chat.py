"""A multi-turn chat with a model: the conversation in the chat template, replies streamed as they
are sampled, the oldest turns dropped when the history outgrows the context.

    from model.chat import Chat, TorchBackend, LlamaCppBackend
    chat = Chat(TorchBackend.from_checkpoint(checkpoint), system="Answer briefly.",
                max_new_tokens=128, temperature=0.7, top_p=0.9, seed=0, notify=print)
    for piece in chat.send("What is this website about?"):     # text as it is generated
        print(piece, end="", flush=True)
    chat.context_ids()     # the conversation as the model sees it (system, history, <|assistant|>)
    chat.reset()           # a new conversation: no history, seeds start over

    Chat(LlamaCppBackend("model-q8_0.gguf"), ...)   # a GGUF export in llama.cpp (llama-cpp-python)
    crawl2model chat [--checkpoint DIR | --alias champion | --gguf FILE]    # flows/chat_cli.py

Backends: TorchBackend renders the conversation with model.chat_data.conversation_prompt_ids (the
training format: markers as special ids, contents as plain text) and samples with
model.generate.stream, stopping at <|end_of_turn|>. LlamaCppBackend hands the messages to
llama.cpp's create_chat_completion(stream=True), which renders them with the GGUF's own
`tokenizer.chat_template` (the same template, see model/to_gguf.py) and stops at the end of turn.

Room for the reply: max_new_tokens, but never more than half the context, so a long max_new_tokens
cannot push the whole history out. When system + history + the new message do not fit in the rest,
the oldest user/assistant pairs are dropped (for good; `notify` says so once per conversation); a
message that does not fit even alone is refused (send returns None, `notify` says why). Sampling:
temperature (0 = greedy) and top-p; with a seed, turn k of a conversation is sampled with seed + k,
so a conversation after reset() replays exactly like the first one. A reply stopped early (the
caller closes the generator, e.g. on Ctrl-C) stays in the history as far as it got.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Protocol

from tokenizers import Tokenizer

from model.chat_data import conversation_prompt_ids
from model.generate import stream
from model.llama import Llama
from model.tokenizer import END_OF_TURN


def decode_stream(tokenizer: Tokenizer, tokens: Iterable[int]) -> Iterator[str]:
    """The text each new token adds (special tokens skipped). Byte-level BPE splits a multi-byte
    character over tokens, so text ending in an incomplete character (U+FFFD) is held back until
    the character is whole; the pieces join to tokenizer.decode(all tokens)."""
    ids: list[int] = []
    shown = ""
    for token in tokens:
        ids.append(token)
        text = tokenizer.decode(ids)
        if text.endswith("\ufffd") or not text.startswith(shown):
            continue
        if len(text) > len(shown):
            yield text[len(shown):]
            shown = text
    text = tokenizer.decode(ids)
    if text != shown:  # a character left incomplete at the end, or a held-back rewrite
        yield text[len(shown):] if text.startswith(shown) else text


class Backend(Protocol):
    context: int  # tokens the model can attend to: prompt + reply

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        """The ids the model is given for these messages, with the generation prompt."""

    def show(self, ids: list[int]) -> str:
        """The ids as text, markers included."""

    def reply(self, messages: list[dict], max_new_tokens: int, temperature: float, top_p: float,
              seed: int | None) -> Iterator[str]:
        """The assistant's reply to the messages, streamed."""


class TorchBackend:
    """A crawl2model checkpoint in torch (model.llama.Llama and its BPE tokenizer)."""

    def __init__(self, model: Llama, tokenizer: Tokenizer):
        self.model, self.tokenizer = model, tokenizer
        self.context = model.config.max_seq_len
        self.end_of_turn = tokenizer.token_to_id(END_OF_TURN)

    @classmethod
    def from_checkpoint(cls, checkpoint: str | Path) -> TorchBackend:
        from model.sampling import load_model_and_tokenizer

        return cls(*load_model_and_tokenizer(checkpoint))

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        return conversation_prompt_ids(self.tokenizer, messages)

    def show(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    def reply(self, messages: list[dict], max_new_tokens: int, temperature: float, top_p: float,
              seed: int | None) -> Iterator[str]:
        tokens = stream(self.model, self.prompt_ids(messages), max_new_tokens, temperature=temperature,
                        top_p=top_p, eos_id=self.end_of_turn, seed=seed)
        return decode_stream(self.tokenizer, tokens)


class LlamaCppBackend:
    """A GGUF file in llama.cpp, chatting through its own chat template (needs llama-cpp-python)."""

    def __init__(self, gguf: str | Path, n_threads: int | None = None):
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        from model.llamacpp import _load

        probe = _load(gguf, vocab_only=True)  # reads the metadata without allocating a context
        template = probe.metadata.get("tokenizer.chat_template")
        if not template:
            raise ValueError(f"{gguf} carries no tokenizer.chat_template, so there is no chat format to use")
        self.context = int(probe.metadata.get("llama.context_length", 2048))
        self.llm = _load(gguf, n_threads, n_ctx=self.context)
        self.formatter = Jinja2ChatFormatter(template, eos_token="", bos_token="")

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        prompt = self.formatter(messages=messages).prompt
        return self.llm.tokenize(prompt.encode(), add_bos=False, special=True)

    def show(self, ids: list[int]) -> str:
        return self.llm.detokenize(ids, special=True).decode("utf-8", "replace")

    def reply(self, messages: list[dict], max_new_tokens: int, temperature: float, top_p: float,
              seed: int | None) -> Iterator[str]:
        # top_k=0 and min_p=0: only temperature and top-p shape the draw, as in the torch backend
        chunks = self.llm.create_chat_completion(messages, stream=True, max_tokens=max_new_tokens,
                                                 temperature=temperature, top_p=top_p, top_k=0, min_p=0.0,
                                                 repeat_penalty=1.0, seed=seed)
        return (c["choices"][0]["delta"].get("content") or "" for c in chunks)


class Chat:
    """A conversation: optional system prompt, user/assistant history, sampling settings."""

    def __init__(self, backend: Backend, system: str | None = None, max_new_tokens: int = 128,
                 temperature: float = 0.7, top_p: float = 0.9, seed: int | None = None,
                 notify: Callable[[str], None] = lambda message: None):
        if max_new_tokens < 1 or temperature < 0 or not 0 < top_p <= 1:
            raise ValueError("need max_new_tokens >= 1, temperature >= 0 and 0 < top_p <= 1")
        self.backend, self.system = backend, system
        self.max_new_tokens, self.temperature, self.top_p, self.seed = max_new_tokens, temperature, top_p, seed
        self.notify = notify
        self.reset()

    def reset(self) -> None:
        self.history: list[dict] = []
        self.turns = 0  # replies in this conversation: the seed of the next one is seed + turns
        self.dropped = 0  # oldest turns dropped to fit the context
        self.last_prompt_ids: list[int] = []

    def messages(self, *more: dict, history: bool = True) -> list[dict]:
        """System prompt, history (unless history=False), then `more`."""
        system = [{"role": "system", "content": self.system}] if self.system else []
        return system + (self.history if history else []) + list(more)

    def context_ids(self) -> list[int]:
        """The conversation as the model sees it: system, history and the generation prompt."""
        return self.backend.prompt_ids(self.messages())

    def reply_room(self) -> int:
        return min(self.max_new_tokens, self.backend.context // 2)

    def _fit(self, message: dict) -> list[int] | None:
        """The prompt ids with `message` appended, after dropping the oldest turns that do not fit;
        None (history untouched) when the message does not fit even without any history."""
        budget = self.backend.context - self.reply_room()
        alone = self.backend.prompt_ids(self.messages(message, history=False))
        if len(alone) > budget:
            shorter = "say it in fewer words" + (" or drop the system prompt" if self.system else "")
            self.notify(f"(that message makes a prompt of {len(alone)} tokens; the model's context holds {budget} "
                        f"with room for a reply: {shorter})")
            return None
        ids = self.backend.prompt_ids(self.messages(message))
        while len(ids) > budget:
            self.history = self.history[2:]  # one user message and the reply to it
            if not self.dropped:
                self.notify(f"(the conversation outgrew the model's {self.backend.context}-token context: "
                            "dropping the oldest turns)")
            self.dropped += 1
            ids = self.backend.prompt_ids(self.messages(message))
        return ids

    def send(self, text: str) -> Iterator[str] | None:
        """The reply to a user message, streamed; the message and the reply then join the history.
        The prompt is fitted at the call (a drop notice comes before any reply text); None when
        the message does not fit even alone (`notify` has said why)."""
        message = {"role": "user", "content": text}
        ids = self._fit(message)
        if ids is None:
            return None
        self.last_prompt_ids = ids
        seed = None if self.seed is None else self.seed + self.turns
        pieces = self.backend.reply(self.messages(message), self.reply_room(), self.temperature, self.top_p, seed)
        return self._record(message, pieces)

    def _record(self, message: dict, pieces: Iterator[str]) -> Iterator[str]:
        said: list[str] = []
        try:
            for piece in pieces:
                said.append(piece)
                yield piece
        finally:  # also when the caller stops the reply early
            self.history += [message, {"role": "assistant", "content": "".join(said)}]
            self.turns += 1
