"""model/identity.py: identity conversations are reproducible, always give the configured name and
never another assistant's, render through the chat template with the loss on the assistant turns;
held-out questions never appear in them; the name rule on hand-made replies ("Llama" the
architecture is not a claim to be Llama); a tiny model tuned on the rows answers held-out
questions with the name, and the untuned one does not."""

from __future__ import annotations

import pytest

from model.chat_data import encode_sft
from model.checkpoint import latest_checkpoint
from model.identity import OTHER_ASSISTANTS, identity_questions, identity_rows, identity_scores, names
from model.posttrain import PosttrainConfig, run_sft
from model.sampling import load_model
from tests.test_chat_data import masked_runs
from tests.test_posttrain import FAST, one_thread, world, write_jsonl  # noqa: F401 (fixtures)

NAME, MAKER = "Crawly", "the crawl2model project"


def assistant_turns(rows: list[dict]) -> list[str]:
    return [m["content"] for r in rows for m in r["messages"] if m["role"] == "assistant"]


def test_rows_are_reproducible_varied_and_only_ever_give_the_configured_name():
    rows = identity_rows(NAME, MAKER, 200, seed=0)
    assert len(rows) == 200
    assert rows == identity_rows(NAME, MAKER, 200, seed=0) != identity_rows(NAME, MAKER, 200, seed=1)
    answers = assistant_turns(rows)
    assert all(names(a, NAME) == (True, []) for a in answers)                # the name, no other assistant
    assert sum(MAKER in a for a in answers) > len(answers) / 3
    assert len({m["content"] for r in rows for m in r["messages"] if m["role"] == "user"}) > 50
    turns = [sum(m["role"] == "user" for m in r["messages"]) for r in rows]
    assert set(turns) == {1, 2} and 0.2 < turns.count(2) / len(rows) < 0.5  # some multi-turn
    assert not any(m["role"] == "system" for r in rows for m in r["messages"])
    assert all(r["messages"][-1]["content"].startswith((f"I am {NAME}", f"I'm {NAME}")) for r in rows)  # name first
    assert sum(any(o in r["messages"][-2]["content"] for o in OTHER_ASSISTANTS) for r in rows) > 30  # "Are you X?"
    prompted = identity_rows(NAME, MAKER, 40, seed=0, system_prompt="You are Crawly.")
    assert sum(r["messages"][0] == {"role": "system", "content": "You are Crawly."} for r in prompted) == 20


def test_heldout_questions_are_disjoint_from_the_rows_and_balanced():
    heldout = identity_questions(seed=0)
    assert heldout == identity_questions(seed=0) != identity_questions(seed=1)
    assert sorted(heldout) == sorted(identity_questions(seed=1)) and len(set(heldout)) == len(heldout) >= 40
    train = set(identity_questions(seed=0, split="train"))
    asked = {m["content"] for seed in range(3) for r in identity_rows(NAME, MAKER, 500, seed)
             for m in r["messages"] if m["role"] == "user"}
    assert not set(heldout) & (train | asked)
    first = heldout[:30]  # a prefix asks about the name, the maker and other assistants alike
    assert 8 <= sum(any(o in q for o in OTHER_ASSISTANTS) for q in first) <= 12
    with pytest.raises(ValueError):
        identity_questions(0, split="test")


def test_rows_render_through_the_chat_template_with_the_loss_on_assistant_turns(world):
    tokenizer = world["tokenizer"]
    for row in identity_rows(NAME, MAKER, 20, seed=0, system_prompt="Be brief."):
        ids, mask = encode_sft(row["messages"], tokenizer, max_len=10_000)
        decoded = [tokenizer.decode(run, skip_special_tokens=False) for run in masked_runs(ids, mask)]
        assert decoded == [m["content"] + "<|end_of_turn|>" for m in row["messages"] if m["role"] == "assistant"]


@pytest.mark.parametrize("reply, own, others", [
    ("I am Crawly, made by the crawl2model project.", True, []),
    ("I am ChatGPT.", False, ["ChatGPT"]),
    ("Hi, I'm Llama, how can I help?", False, ["Llama"]),
    ("I am Crawly, a small Llama-style model.", True, []),          # the architecture, not an assistant
    ("I run on Llama.cpp and like my llama.", False, []),           # a tool, an animal
    ("Llama2 and GPT-4o are other models.", False, []),            # glued to more characters
    ("ChatGPT's cousin, Crawlyish.", False, ["ChatGPT"]),           # "Crawlyish" is not the name
    ("I am claude or CHATGPT", False, []),                          # names are case-sensitive
])
def test_name_rule_on_hand_made_replies(reply, own, others):
    assert names(reply, NAME) == (own, others)


def test_the_configured_name_is_never_another_assistant():
    assert names("I am Claude, made by us.", "Claude") == (True, [])


def test_tuned_tiny_model_answers_heldout_questions_with_the_name(world, tmp_path):
    tokenizer, questions = world["tokenizer"], identity_questions(seed=0)[:12]
    untuned = identity_scores(load_model(world["base"])[0], tokenizer, NAME, questions, max_new_tokens=24)
    assert untuned["identity_rate"] == 0.0 and untuned["questions"] == 12
    data = write_jsonl(tmp_path / "identity.jsonl", identity_rows(NAME, "us", 200, seed=0))
    run_sft(PosttrainConfig.from_dict({**FAST, "kind": "sft", "base": str(world["base"]), "out": str(tmp_path / "out"),
                                       "data": str(data), "lr": 1e-2, "max_steps": 60, "eval_every": 60,
                                       "held_out_fraction": 0.0, "sample_prompts": []}), log=lambda m: None)
    tuned = identity_scores(load_model(latest_checkpoint(tmp_path / "out"))[0], tokenizer, NAME, questions,
                            max_new_tokens=24)
    # a one-layer model with a 400-token vocabulary: most, not all (the >= 90% goal is the small preset's)
    assert tuned["identity_rate"] >= 0.75 and tuned["other_name_rate"] == 0.0
