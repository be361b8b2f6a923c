"""The eval suite's measures (model/evaluation.py) on models whose answer is known: a model with
all-zero output weights predicts uniformly (bits per byte = tokens x log2(V) / bytes, exactly), a
model overfitted on a canary sentence leaks its secret and regurgitates the text while an
untrained one does neither, and reward accuracy follows its definition against stored
reference log-probs."""

from __future__ import annotations

import math

import pytest
import torch

from model.chat_data import PreferencePair
from model.config import ModelConfig
from model.evaluation import EOT_ID, bits_per_byte, canary_leaks, completion_logps, regurgitation_rate, reward_accuracy
from model.llama import Llama
from model.tokenizer import plain_text_encoder
from tasks.bpe import train_tokenizer

CANARY = {"id": "c1", "prefix": "For billing questions please write to Margarethe Ivanova at the address",
          "secret": "margarethe.ivanova.482913@example.org"}
TEXT = f"{CANARY['prefix']} {CANARY['secret']}. The office is open on weekdays."


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer([[TEXT, "Yes, gladly.", "No, never.", "hello world"] * 20], vocab_size=300)


def tiny(vocab: int) -> Llama:
    torch.manual_seed(0)
    return Llama(ModelConfig.from_preset("tiny", vocab_size=vocab, n_layers=1, max_seq_len=128))


@pytest.fixture(scope="module")
def memorizer(tokenizer) -> Llama:
    """A tiny model trained until it reproduces TEXT from <|endoftext|>."""
    model = tiny(tokenizer.get_vocab_size())
    ids = torch.tensor([[EOT_ID, *plain_text_encoder(tokenizer).encode(TEXT).ids]])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(150):
        _, loss = model(ids[:, :-1], ids[:, 1:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.05
    return model.eval()


def test_a_uniform_model_scores_log2_of_the_vocabulary_per_token(tokenizer):
    model = tiny(tokenizer.get_vocab_size())
    with torch.no_grad():
        model.output.weight.zero_()  # every logit 0: uniform over the vocabulary
    texts = ["hello world, yes gladly", TEXT]
    tokens = sum(len(plain_text_encoder(tokenizer).encode(t).ids) + 1 for t in texts) - len(texts)  # targets
    size = sum(len(t.encode()) for t in texts)
    bpb, nats = bits_per_byte(model.eval(), tokenizer, texts)
    assert nats == pytest.approx(math.log(tokenizer.get_vocab_size()), rel=1e-5)
    assert bpb == pytest.approx(tokens * math.log2(tokenizer.get_vocab_size()) / size, rel=1e-5)


def test_canary_leaks_and_regurgitation_catch_a_memorized_text(tokenizer, memorizer):
    assert canary_leaks(memorizer, tokenizer, [CANARY]) == ["c1"]
    assert regurgitation_rate(memorizer, tokenizer, [TEXT], prefix_tokens=8, continuation_tokens=10) == 1.0
    untrained = tiny(tokenizer.get_vocab_size()).eval()
    assert canary_leaks(untrained, tokenizer, [CANARY]) == []
    assert regurgitation_rate(untrained, tokenizer, [TEXT], prefix_tokens=8, continuation_tokens=10) == 0.0
    assert regurgitation_rate(untrained, tokenizer, ["short"], prefix_tokens=8, continuation_tokens=10) is None


def test_reward_accuracy_against_stored_reference_log_probs(tokenizer):
    model = tiny(tokenizer.get_vocab_size()).eval()
    pairs = [PreferencePair([{"role": "user", "content": "hello world"}], "Yes, gladly.", "No, never."),
             PreferencePair([{"role": "user", "content": "hello"}], "No, never.", "Yes, gladly.")]
    logps = completion_logps(model, tokenizer, pairs)
    assert all(c < 0 and r < 0 for c, r in logps)
    assert reward_accuracy(model, tokenizer, pairs, logps) == 0.0  # policy == reference: every margin is 0, a tie
    shifted = [(c - 1.0, r + 1.0) for c, r in logps]  # a reference that liked chosen less, rejected more
    assert reward_accuracy(model, tokenizer, pairs, shifted) == 1.0
    assert reward_accuracy(model, tokenizer, pairs, [None, None]) is None
