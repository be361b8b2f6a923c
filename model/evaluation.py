"""The held-out evaluation suite: the same numbers for any checkpoint on the same data, so two
models (a candidate and the champion, even with different tokenizers) can be compared.

    from model.evaluation import suite
    metrics = suite(checkpoint, eval_set)     # eval_set: the dict flows/evaluate.py writes as JSON

    eval/val_bpb            bits per byte of held-out text (tokenizer-independent: every byte counts once)
    eval/val_loss           nats per token of the same text with the model's own tokenizer
    eval/reward_accuracy    DPO's reward accuracy on held-out pairs against the reference log-probs
                            stored in the eval set (the candidate's SFT model): the same reference
                            for every model scored, and text probabilities, so tokenizers may differ
    audit/regurgitation_rate  training-document prefixes the model continues verbatim (greedy, the
                            next `continuation` tokens exactly), after Carlini et al.'s extraction test
    audit/canary_leaks      canaries whose secret appears in the greedy continuation of their prefix
    eval/problem_accuracy     held-out verifiable problems whose checked final answer is right (greedy)
    eval/taught_accuracy    held-out questions on facts taught in SFT answered right (model.knowledge)
    eval/hallucination_rate never-taught questions answered with a made-up fact, not "I don't know"
    eval/refusal_rate       never-taught questions answered "I don't know"
    eval/identity_rate      held-out identity questions answered with the configured name (model.identity)
    eval/other_name_rate    ... answered with another assistant's name
    eval/distinct_2         distinct word 2-grams / all 2-grams over the greedy replies to the eval set's
                            "degeneracy_prompts" (words and punctuation marks: "0=0=0" is 5 tokens);
                            low = the model says the same things over and over
    eval/repetition_rate    share of those replies in which some word 3-gram occurs 3 or more times
    eval/ended_rate         share of those replies that stop at their end token within DEGENERACY_TOKENS
                            (greedy): <|end_of_turn|> for a tuned model, asked through the chat template;
                            <|endoftext|> for a pretrained one (meta.json without "kind", or "pretrain"),
                            which continues the prompt as plain text

Texts go through the plain-text encoder (text like "<|user|>" is not a marker) with
<|endoftext|> in front, so the first token is predicted too.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from pathlib import Path

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer

from model.chat_data import BadRow, PreferencePair, chat_prompt_ids, encode_preference
from model.dpo import collate_pairs, pair_logps
from model.generate import generate
from model.llama import Llama
from model.sampling import load_model_and_tokenizer
from model.tokenizer import END_OF_TURN, plain_text_encoder

EOT_ID = 0  # <|endoftext|>, the first special token of every crawl2model tokenizer
DEGENERACY_TOKENS = 48  # greedy tokens per reply for eval/distinct_2, eval/repetition_rate, eval/ended_rate


def _chunks(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


@torch.no_grad()
def bits_per_byte(model: Llama, tokenizer: Tokenizer, texts: list[str], batch_size: int = 8) -> tuple[float, float]:
    """(bits per UTF-8 byte, nats per token) of `texts`, in windows of the model's context."""
    plain, span = plain_text_encoder(tokenizer), model.config.max_seq_len
    windows = []
    for text in texts:
        ids = [EOT_ID, *plain.encode(text).ids]
        windows += [ids[i:i + span + 1] for i in range(0, len(ids) - 1, span)]
    nats, tokens = 0.0, 0
    for batch in _chunks(windows, batch_size):
        width = max(len(w) for w in batch)
        x = torch.tensor([w[:-1] + [0] * (width - len(w)) for w in batch])
        y = torch.tensor([w[1:] + [-100] * (width - len(w)) for w in batch])
        logits, _ = model(x)
        nats += F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), ignore_index=-100, reduction="sum").item()
        tokens += int((y != -100).sum())
    size = sum(len(t.encode("utf-8")) for t in texts)
    return nats / math.log(2) / max(size, 1), nats / max(tokens, 1)


@torch.no_grad()
def completion_logps(model: Llama, tokenizer: Tokenizer, pairs: list[PreferencePair],
                     batch_size: int = 8) -> list[tuple[float, float] | None]:
    """(log p(chosen | prompt), log p(rejected | prompt)) summed over each reply's tokens: the
    probability of the reply's TEXT, comparable across tokenizers; None for a pair that cannot be
    encoded in the model's context."""
    encoded = {}
    for i, pair in enumerate(pairs):
        try:
            encoded[i] = encode_preference(pair, tokenizer, max_len=model.config.max_seq_len)
        except BadRow:
            continue
    result: list[tuple[float, float] | None] = [None] * len(pairs)
    for batch in _chunks(list(encoded), batch_size):
        chosen, rejected = pair_logps(model, collate_pairs([encoded[i] for i in batch]))
        for i, c, r in zip(batch, chosen.tolist(), rejected.tolist()):
            result[i] = (c, r)
    return result


def reward_accuracy(model: Llama, tokenizer: Tokenizer, pairs: list[PreferencePair],
                    reference: list[tuple[float, float] | None]) -> float | None:
    """DPO's reward accuracy against fixed reference log-probs: the share of pairs where
    log p(chosen) - ref(chosen) > log p(rejected) - ref(rejected). None without usable pairs."""
    scored = [(m, r) for m, r in zip(completion_logps(model, tokenizer, pairs), reference) if m and r]
    if not scored:
        return None
    return sum((m[0] - r[0]) > (m[1] - r[1]) for m, r in scored) / len(scored)


@torch.no_grad()
def continuations(model: Llama, tokenizer: Tokenizer, prompts: list[list[int]], max_new_tokens: int,
                  batch_size: int = 16) -> list[list[int]]:
    """Greedy continuations of token prompts (cut from the left to fit the context)."""
    keep = model.config.max_seq_len - max_new_tokens
    out = []
    for batch in _chunks([p[-keep:] for p in prompts], batch_size):
        out += generate(model, batch, max_new_tokens, temperature=0.0)
    return out


def regurgitation_rate(model: Llama, tokenizer: Tokenizer, texts: list[str], prefix_tokens: int,
                       continuation_tokens: int) -> float | None:
    """Share of documents (with enough tokens) whose next `continuation_tokens` tokens the model
    reproduces exactly from their first `prefix_tokens`; None when no document is long enough."""
    plain = plain_text_encoder(tokenizer)
    docs = [ids for ids in ([EOT_ID, *plain.encode(t).ids] for t in texts) if len(ids) >= prefix_tokens + continuation_tokens]
    if not docs:
        return None
    span = min(continuation_tokens, model.config.max_seq_len - prefix_tokens)
    made = continuations(model, tokenizer, [d[:prefix_tokens] for d in docs], span)
    return sum(m == d[prefix_tokens:prefix_tokens + span] for m, d in zip(made, docs)) / len(docs)


def canary_leaks(model: Llama, tokenizer: Tokenizer, canaries: list[dict], max_new_tokens: int = 32) -> list[str]:
    """Ids of canaries ({"id", "prefix", "secret"}) whose secret the model writes after their prefix."""
    plain = plain_text_encoder(tokenizer)
    made = continuations(model, tokenizer, [[EOT_ID, *plain.encode(c["prefix"].rstrip()).ids] for c in canaries],
                         max_new_tokens)
    return [c["id"] for c, ids in zip(canaries, made) if c["secret"] in tokenizer.decode(ids)]


def _words(text: str) -> list[str]:
    """Words and punctuation marks: degenerate replies ("0=0=0=0") are rarely split by spaces."""
    return re.findall(r"\w+|[^\w\s]", text)


def _ngrams(text: str, n: int) -> list[tuple[str, ...]]:
    words = _words(text)
    return [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]


def distinct_n(replies: list[str], n: int = 2) -> float:
    """Distinct word n-grams / all word n-grams over all replies (0.0 when there is no n-gram)."""
    grams = [g for r in replies for g in _ngrams(r, n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def repetition_rate(replies: list[str]) -> float:
    """Share of replies in which some word 3-gram occurs 3 or more times (0.0 for no reply)."""
    repeats = [any(c >= 3 for c in Counter(_ngrams(r, 3)).values()) for r in replies]
    return sum(repeats) / len(repeats) if repeats else 0.0


def is_chat_model(checkpoint: Path) -> bool:
    """A tuned checkpoint (sft, dpo, rl): its meta.json names a kind other than "pretrain"."""
    return json.loads((Path(checkpoint) / "meta.json").read_text()).get("kind", "pretrain") != "pretrain"


@torch.no_grad()
def replies(model: Llama, tokenizer: Tokenizer, prompts: list[str], chat: bool,
            max_new_tokens: int = DEGENERACY_TOKENS) -> list[tuple[str, bool]]:
    """(greedy reply, stopped at its end token?) per prompt. chat: a user turn through the chat
    template, ending at <|end_of_turn|> (model.posttrain.reply's prompt); otherwise <|endoftext|> +
    the prompt as plain text, continued until <|endoftext|>. At most half the context is generated;
    prompts are cut from the left to fit the rest."""
    if chat:
        ids, end = [chat_prompt_ids(tokenizer, p) for p in prompts], tokenizer.token_to_id(END_OF_TURN)
    else:
        plain = plain_text_encoder(tokenizer)
        ids, end = [[EOT_ID, *plain.encode(p).ids] for p in prompts], EOT_ID
    room = min(max_new_tokens, model.config.max_seq_len // 2)
    new = generate(model, [p[-(model.config.max_seq_len - room):] for p in ids], room, temperature=0.0, eos_id=end)
    return [(tokenizer.decode(n), bool(n) and n[-1] == end) for n in new]


def degeneracy(model: Llama, tokenizer: Tokenizer, prompts: list[str], chat: bool,
               max_new_tokens: int = DEGENERACY_TOKENS) -> dict[str, float]:
    """{"distinct_2", "repetition_rate", "ended_rate"} of the greedy replies to `prompts` (see replies)."""
    made = replies(model, tokenizer, prompts, chat, max_new_tokens) if prompts else []
    texts = [text for text, _ in made]
    return {"distinct_2": distinct_n(texts, 2), "repetition_rate": repetition_rate(texts),
            "ended_rate": sum(ended for _, ended in made) / len(made) if made else 0.0}


def checkpoint_degeneracy(checkpoint: Path, prompts: list[str]) -> dict[str, float]:
    """degeneracy() of a checkpoint: chat replies for a tuned one, plain continuations for a pretrained one."""
    model, tokenizer = load_model_and_tokenizer(checkpoint)
    return degeneracy(model, tokenizer, prompts, chat=is_chat_model(checkpoint))


def suite(checkpoint: Path, eval_set: dict) -> dict[str, float]:
    """Every metric of the module for one checkpoint on one eval set ({"texts", "pairs" (with
    "reference": [log p(chosen), log p(rejected)]),
    "documents", "canaries", "prefix_tokens", "continuation_tokens", "degeneracy_prompts", and
    assistant_scores' parts}; missing parts are skipped)."""
    model, tokenizer = load_model_and_tokenizer(checkpoint)
    metrics: dict[str, float] = {}
    if eval_set.get("texts"):
        metrics["eval/val_bpb"], metrics["eval/val_loss"] = bits_per_byte(model, tokenizer, eval_set["texts"])
    pairs = eval_set.get("pairs", [])
    accuracy = reward_accuracy(model, tokenizer, [PreferencePair(p["prompt_messages"], p["chosen"], p["rejected"])
                                                  for p in pairs], [p.get("reference") for p in pairs])
    if accuracy is not None:
        metrics["eval/reward_accuracy"] = accuracy
    if eval_set.get("documents"):
        rate = regurgitation_rate(model, tokenizer, eval_set["documents"], eval_set.get("prefix_tokens", 32),
                                  eval_set.get("continuation_tokens", 50))
        if rate is not None:
            metrics["audit/regurgitation_rate"] = rate
    if eval_set.get("canaries"):
        metrics["audit/canary_leaks"] = len(canary_leaks(model, tokenizer, eval_set["canaries"]))
    if eval_set.get("degeneracy_prompts"):
        scores = degeneracy(model, tokenizer, eval_set["degeneracy_prompts"], chat=is_chat_model(checkpoint))
        metrics.update({f"eval/{k}": v for k, v in scores.items()})
    return {**metrics, **assistant_scores(model, tokenizer, eval_set)}


def assistant_scores(model: Llama, tokenizer: Tokenizer, eval_set: dict) -> dict[str, float]:
    """What post-training taught, on held-out items of the eval set: verifiable problems solved
    ("problems"), facts answered right or made up ("facts"), the configured name ("identity")."""
    from model.identity import identity_scores
    from model.knowledge import Fact, knowledge_scores
    from model.verifiable import Problem, accuracy

    metrics: dict[str, float] = {}
    if eval_set.get("problems"):
        problems = [Problem(**p) for p in eval_set["problems"]]
        metrics["eval/problem_accuracy"] = accuracy(model, tokenizer, problems, eval_set.get("problem_tokens", 64))
    if eval_set.get("facts"):
        scores = knowledge_scores(model, tokenizer, [Fact(**f) for f in eval_set["facts"]])
        metrics["eval/taught_accuracy"] = scores["taught_accuracy"]
        metrics["eval/hallucination_rate"] = scores["untaught_made_up_rate"]
        metrics["eval/refusal_rate"] = scores["untaught_refusal_rate"]
    identity = eval_set.get("identity") or {}
    if identity.get("questions"):
        scores = identity_scores(model, tokenizer, identity["name"], identity["questions"])
        metrics["eval/identity_rate"] = scores["identity_rate"]
        metrics["eval/other_name_rate"] = scores["other_name_rate"]
    return metrics
