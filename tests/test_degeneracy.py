"""The "no collapse" measures (model/evaluation.py: distinct_n, repetition_rate, degeneracy) and
the eval stage's lineage of them (flows/evaluate.py): the pure metrics on hand-made replies, the
end-of-turn rate on a tiny model trained to answer some prompts and to loop on another (and to
continue plain text), and the lineage walk over a real rl -> dpo -> sft ("I don't know" pass) ->
sft -> pretrain chain of checkpoints."""

from __future__ import annotations

import pytest
import torch

from flows.evaluate import lineage, lineage_line, lineage_scores
from model.chat_data import chat_prompt_ids
from model.checkpoint import save_checkpoint
from model.config import ModelConfig
from model.evaluation import EOT_ID, degeneracy, distinct_n, repetition_rate, replies, suite
from model.llama import Llama
from model.tokenizer import END_OF_TURN, plain_text_encoder, save_tokenizer
from tasks.bpe import train_tokenizer
from tests.test_posttrain import one_thread  # noqa: F401 - autouse fixture: one torch thread

ANSWER = "It is a small site about old harbour towns."
CONTINUATION = " Nobody knows why the gulls came back."
LOOP = "0=" * 40  # the collapse the issue saw: "I-0=0=0=0=..."
ANSWERED = ["What is this website about?", "Explain what a function is."]
LOOPING = "Tell me a story."
PROMPTS = [*ANSWERED, LOOPING]


def test_distinct_2_and_repetition_rate_follow_their_definitions():
    looped = "a b c a b c a b c a b c"  # 11 bigrams, 3 distinct; 3-grams abc x4, bca x3, cab x3
    assert distinct_n([looped]) == pytest.approx(3 / 11)
    assert repetition_rate([looped]) == 1.0
    varied = ["the cat sat on the mat", "a dog ran in the park"]
    assert distinct_n(varied) == 1.0 and repetition_rate(varied) == 0.0
    assert distinct_n(varied, n=1) == pytest.approx(10 / 12)  # 12 words, "the" three times
    assert repetition_rate(["a b c a b c", "a b c a b c a b c"]) == 0.5  # twice is not enough, three times is
    assert distinct_n([looped, looped]) == pytest.approx(3 / 22)  # n-grams counted over all replies together
    collapsed = "I-0=0=0=0=0=0=0=0=0."  # no space in it: words and punctuation marks are separate tokens
    assert repetition_rate([collapsed]) == 1.0 and distinct_n([collapsed]) < 0.3
    assert distinct_n([]) == 0.0 and distinct_n(["one", ""]) == 0.0  # no bigram at all
    assert repetition_rate([]) == 0.0


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    """A tokenizer and a tiny model trained to answer ANSWERED with ANSWER then <|end_of_turn|>,
    LOOPING with LOOP (never ending), and, as plain text after <|endoftext|>, every prompt with
    CONTINUATION then <|endoftext|>."""
    root = tmp_path_factory.mktemp("degeneracy")
    tokenizer = train_tokenizer([[ANSWER, CONTINUATION, LOOP, *PROMPTS] * 20], vocab_size=300)
    folder = save_tokenizer(tokenizer, root / "tokenizer")
    plain, end = plain_text_encoder(tokenizer), tokenizer.token_to_id(END_OF_TURN)
    rows = [chat_prompt_ids(tokenizer, p) + plain.encode(ANSWER).ids + [end] for p in ANSWERED]
    rows.append(chat_prompt_ids(tokenizer, LOOPING) + plain.encode(LOOP).ids)
    rows += [[EOT_ID, *plain.encode(p).ids, *plain.encode(CONTINUATION).ids, EOT_ID] for p in PROMPTS]
    width = max(len(r) for r in rows)
    x = torch.tensor([r[:-1] + [0] * (width - len(r)) for r in rows])
    y = torch.tensor([r[1:] + [-100] * (width - len(r)) for r in rows])
    torch.manual_seed(0)
    model = Llama(ModelConfig.from_preset("tiny", vocab_size=tokenizer.get_vocab_size(), n_layers=1, max_seq_len=128))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(120):
        _, loss = model(x, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.05
    return {"root": root, "tokenizer": tokenizer, "folder": folder, "model": model.eval()}


def test_ended_rate_counts_replies_that_stop_at_their_end_token(world):
    model, tokenizer = world["model"], world["tokenizer"]
    made = replies(model, tokenizer, PROMPTS, chat=True)
    assert made[:2] == [(ANSWER, True)] * 2
    assert made[2][0].startswith("0=0=0") and made[2][1] is False  # 48 tokens of the loop, no end of turn
    chat = degeneracy(model, tokenizer, PROMPTS, chat=True)
    assert chat["ended_rate"] == pytest.approx(2 / 3) and chat["repetition_rate"] == pytest.approx(1 / 3)
    assert degeneracy(model, tokenizer, ANSWERED, chat=True) == {
        "distinct_2": pytest.approx(distinct_n([ANSWER] * 2)), "repetition_rate": 0.0, "ended_rate": 1.0}
    assert degeneracy(model, tokenizer, ANSWERED, chat=True, max_new_tokens=3)["ended_rate"] == 0.0  # cut short
    # the pretrained way: plain text after <|endoftext|>, ended by <|endoftext|>
    assert replies(model, tokenizer, PROMPTS, chat=False) == [(CONTINUATION, True)] * 3
    assert degeneracy(model, tokenizer, PROMPTS, chat=False) == {
        "distinct_2": pytest.approx(distinct_n([CONTINUATION] * 3)), "repetition_rate": 0.0, "ended_rate": 1.0}


def test_lineage_walks_from_rl_to_pretrain_and_scores_each_stage(world):
    """rl -> dpo -> sft/idk -> sft -> pretrain: "sft" is the "I don't know" pass (the model DPO
    started from), pretrain is scored as plain continuation, the candidate's own numbers are its suite's."""
    root, trained = world["root"], world["model"]
    torch.manual_seed(1)
    untrained = Llama(trained.config).eval()
    chain, base = {}, None
    for name, kind, model in (("pretrain", None, trained), ("sft", "sft", untrained), ("sft/idk", "sft", trained),
                              ("dpo", "dpo", trained), ("rl", "rl", trained)):
        meta = {"step": 1, "config": trained.config.to_dict(), "tokenizer": str(world["folder"]),
                **({"kind": kind, "base": str(base)} if kind else {})}
        base = chain[name] = save_checkpoint(root / "checkpoints" / name / "step-000001", model, None, meta)
    assert lineage(chain["rl"]) == {"rl": chain["rl"], "dpo": chain["dpo"], "sft": chain["sft/idk"],
                                    "pretrain": chain["pretrain"]}
    assert lineage(chain["sft"]) == {"sft": chain["sft"], "pretrain": chain["pretrain"]}

    eval_set = {"degeneracy_prompts": PROMPTS}
    candidate = suite(chain["rl"], eval_set)
    chat = degeneracy(trained, world["tokenizer"], PROMPTS, chat=True)
    assert candidate == {f"eval/{k}": pytest.approx(v) for k, v in chat.items()}
    scores = lineage_scores.fn(chain["rl"], eval_set, candidate)
    assert set(scores) == {f"lineage/{s}/{k}" for s in ("pretrain", "sft", "dpo", "rl")
                           for k in ("distinct_2", "repetition_rate", "ended_rate")}
    for stage in ("sft", "dpo", "rl"):  # the trained weights, asked as a chat model
        assert {k: scores[f"lineage/{stage}/{k}"] for k in chat} == pytest.approx(chat), stage
    assert scores["lineage/pretrain/ended_rate"] == 1.0 and scores["lineage/pretrain/repetition_rate"] == 0.0
    line = lineage_line(scores)
    assert line.index("pretrain") < line.index("sft") < line.index("dpo") < line.index("rl")
    assert lineage_scores.fn(chain["rl"], {}, candidate) == {}
