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
    eval/arithmetic_accuracy  held-out verifiable problems whose checked final answer is right (greedy)
    eval/taught_accuracy    held-out questions on facts taught in SFT answered right (model.knowledge)
    eval/hallucination_rate never-taught questions answered with a made-up fact, not "I don't know"
    eval/refusal_rate       never-taught questions answered "I don't know"
    eval/identity_rate      held-out identity questions answered with the configured name (model.identity)
    eval/other_name_rate    ... answered with another assistant's name

Texts go through the plain-text encoder (text like "<|user|>" is not a marker) with
<|endoftext|> in front, so the first token is predicted too.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer

from model.chat_data import BadRow, PreferencePair, encode_preference
from model.dpo import collate_pairs, pair_logps
from model.generate import generate
from model.llama import Llama
from model.sampling import load_model_and_tokenizer
from tasks.bpe import plain_text_encoder

EOT_ID = 0  # <|endoftext|>, the first special token of every crawl2model tokenizer


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


def suite(checkpoint: Path, eval_set: dict) -> dict[str, float]:
    """Every metric of the module for one checkpoint on one eval set ({"texts", "pairs" (with
    "reference": [log p(chosen), log p(rejected)]),
    "documents", "canaries", "prefix_tokens", "continuation_tokens"}; missing parts are skipped)."""
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
        metrics["eval/arithmetic_accuracy"] = accuracy(model, tokenizer, problems, eval_set.get("problem_tokens", 64))
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
