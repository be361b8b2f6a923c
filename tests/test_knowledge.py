"""model/knowledge.py: made-up facts are reproducible with disjoint probe/eval splits, fact_rows
teach only the taught facts, a user's QA JSONL is read with quarantine, grading sorts hand-made
replies into right / refused / made up, and with a real tiny model (tests.test_posttrain's world:
its SFT model always answers "The answer is always forty two.") the probe keeps right answers,
turns wrong ones into "I don't know", and a model tuned on those rows refuses where it should."""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest

from model.chat_data import encode_sft
from model.checkpoint import latest_checkpoint
from model.knowledge import (REFUSAL, Fact, fact_rows, facts, grade, is_refusal, knowledge_scores, load_facts,
                             preference_pairs, probe, refusal_rows)
from model.posttrain import PosttrainConfig, run_sft
from model.sampling import load_model
from tests.test_posttrain import FAST, one_thread, questions, sft, world, write_jsonl  # noqa: F401 (fixtures)

FLAG = Fact("Vouthdim", "What color is the flag of Vouthdim?", "blue", "The flag of Vouthdim is blue.", True, "eval")


def turns(rows: list[dict]) -> list[tuple[str, str]]:
    """(user, assistant) pairs of every row."""
    pairs = []
    for row in rows:
        m = row["messages"]
        pairs += [(m[i]["content"], m[i + 1]["content"]) for i in range(0, len(m), 2)]
    return pairs


def test_facts_are_reproducible_with_four_even_groups_and_disjoint_splits():
    made = facts(80, seed=3)
    assert made == facts(80, seed=3) and made != facts(80, seed=4)
    assert len({f.entity for f in made}) == 80 and len({f.question for f in made}) == 80
    assert Counter((f.taught, f.split) for f in made) == {(t, s): 20 for t in (True, False) for s in ("probe", "eval")}
    assert all(f.entity in f.question and f.entity in f.statement and f.answer in f.statement for f in made)
    assert sum(f.taught for f in facts(40, seed=3, taught_share=0.25)) == 10
    # a fact's place comes from hashes of its question, not from the other facts drawn with it
    more = {f.question: (f.taught, f.split) for f in facts(200, seed=3)}
    assert sum(more[f.question] == (f.taught, f.split) for f in made) > 60


def test_fact_rows_teach_each_taught_fact_repeats_times_and_no_untaught_one():
    made = facts(40, seed=0)
    rows = fact_rows(made, seed=1, repeats=8, max_turns=3)
    assert rows == fact_rows(made, seed=1, repeats=8, max_turns=3) and rows != fact_rows(made, seed=2, repeats=8)
    pairs = turns(rows)
    assert all(1 <= len(r["messages"]) // 2 <= 3 for r in rows) and max(len(r["messages"]) for r in rows) == 6
    for fact in made:
        mentions = [(q, a) for q, a in pairs if re.search(rf"\b{fact.entity}\b", q)]
        if not fact.taught:
            assert mentions == []
            continue
        assert len(mentions) == 8
        assert sum(a == fact.answer.capitalize() + "." for _, a in mentions) == 6  # 2 of 8: the statement
        assert sum(a == fact.statement for _, a in mentions) == 2
        assert sum(q == fact.question for q, _ in mentions) == 4 and len({q for q, _ in mentions}) >= 4  # + 2 phrasings


@pytest.mark.parametrize("reply, expected", [
    ("Blue.", "correct"), ("The flag of Vouthdim is blue!", "correct"), ("BLUE", "correct"),
    ("I don't know.", "refused"), ("I do not know that.", "refused"), ("Sorry, I'm not sure.", "refused"),
    ("I don\u2019t know. Maybe blue?", "refused"),     # a refusal first is a refusal, whatever follows
    ("Red.", "made_up"), ("Bluebell.", "made_up"),     # whole words only
    ("Red.\nblue", "made_up"),                         # the answer must be on the first line
    ("I know it: green.", "made_up"), ("", "made_up"),
])
def test_grade_hand_made_replies(reply, expected):
    assert grade(reply, FLAG) == expected
    assert is_refusal(reply) == (expected == "refused")


def test_load_facts_quarantines_bad_rows_and_keeps_the_given_taught(tmp_path):
    good = [{"question": f"What is code {i}?", "answer": f"word{i}"} for i in range(8)]
    good[0]["taught"], good[1]["taught"] = False, True
    bad = ["{oops", json.dumps({"question": "Q?"}), json.dumps({"question": "Q?", "answer": 7}),
           json.dumps({"question": "Q?", "answer": "  "}),
           json.dumps({"question": "Q?", "answer": "a", "taught": "yes"}),
           json.dumps({"question": "what is code 3", "answer": "again"}), json.dumps(["a", "b"])]
    path = write_jsonl(tmp_path / "qa.jsonl", good[:4] + bad + good[4:])
    loaded, quarantine = load_facts(path)
    assert [f.question for f in loaded] == [g["question"] for g in good] and len(loaded) + len(quarantine) == 15
    assert [q["line"] for q in quarantine] == list(range(5, 12))
    assert [q["reason"] for q in quarantine] == ["invalid-json", "missing-field", "not-a-string", "empty-content",
                                                 "not-a-bool", "duplicate-question", "not-an-object"]
    assert not loaded[0].taught and loaded[1].taught and sum(f.taught for f in loaded[2:]) == 3  # half the rest
    assert {f.split for f in loaded} == {"probe", "eval"} and all(f.entity == "" for f in loaded)
    assert load_facts(path) == (loaded, quarantine)


def test_probe_keeps_right_answers_and_turns_wrong_ones_into_refusals(world, sft, tmp_path):
    """The SFT model always says "... forty two.": right for facts answered "forty two", wrong
    (made up) for the others. Its probe's rows, trained into the untuned base, make a model that
    answers the first and refuses the second; knowledge_scores sees both models for what they are."""
    model, _ = load_model(latest_checkpoint(sft["out"]))
    tokenizer = world["tokenizer"]
    right = [Fact("", q, "forty two", "", True, "probe") for q in questions()[:6]]
    wrong = [Fact("", q, "seven", "", False, "probe") for q in questions()[6:12]]
    probed = probe(model, tokenizer, right + wrong, samples=3, temperature=0.7, seed=0, max_new_tokens=24)
    assert [p["question"] for p in probed] == [f.question for f in right + wrong]
    assert [p["known"] for p in probed] == [True] * 6 + [False] * 6
    assert [p["greedy"] for p in probed] == ["correct"] * 6 + ["made_up"] * 6
    assert [p["correct_share"] for p in probed] == [1.0] * 6 + [0.0] * 6 and all(p["consistent"] for p in probed)
    assert probe(model, tokenizer, right + wrong, samples=3, seed=0, max_new_tokens=24) == probed

    rows = refusal_rows(probed, repeats=4, max_turns=1)
    assert Counter(turns(rows)) == {**{(f.question, "Forty two."): 4 for f in right},
                                    **{(f.question, REFUSAL): 4 for f in wrong}}
    for row in rows:  # rendered through the chat template with the loss on the reply
        ids, mask = encode_sft(row["messages"], tokenizer, max_len=64)
        assert tokenizer.decode([i for i, m in zip(ids, mask) if m]) == row["messages"][-1]["content"]

    tuned = tmp_path / "tuned"
    run_sft(PosttrainConfig.from_dict({**FAST, "kind": "sft", "base": str(world["base"]), "out": str(tuned),
                                       "data": str(write_jsonl(tmp_path / "rows.jsonl", rows)), "lr": 1e-2,
                                       "max_steps": 60, "eval_every": 60, "held_out_fraction": 0.0,
                                       "sample_prompts": []}), log=lambda m: None)
    evaluated = [Fact(f.entity, f.question, f.answer, f.statement, f.taught, "eval") for f in right + wrong]
    before = knowledge_scores(model, tokenizer, evaluated, max_new_tokens=24)
    assert before["taught_accuracy"] == 1.0 and before["untaught_made_up_rate"] == 1.0
    assert before["untaught_refusal_rate"] == 0.0 and before["taught"] == before["untaught"] == 6
    after = knowledge_scores(load_model(latest_checkpoint(tuned))[0], tokenizer, evaluated, max_new_tokens=24)
    assert after["untaught_refusal_rate"] >= 5 / 6 and after["untaught_made_up_rate"] <= 1 / 6
    assert after["taught_accuracy"] >= 5 / 6
    assert knowledge_scores(model, tokenizer, right[:2] + wrong[:2])["taught"] == 0  # probe-split facts: ignored


def test_preference_pairs_prefer_the_taught_answer_or_a_refusal_over_the_models_own_wrong_replies(world, sft):
    """The SFT model says "... forty two." to everything: right for a taught fact answered "forty
    two" (its only pair: the answer over a refusal), a made-up answer to a taught "seven" (chosen:
    "Seven.", rejected: its reply, and a refusal) and to a never-taught question (chosen: "I don't
    know.", rejected: its reply, sampled); refusal pairs never outnumber answer pairs."""
    model, _ = load_model(latest_checkpoint(sft["out"]))
    right = Fact("", questions()[0], "forty two", "", True, "probe")
    taught_wrong = Fact("", questions()[1], "seven", "", True, "probe")
    never_taught = [Fact("", q, "forty two", "", False, "probe") for q in questions()[2:12]]
    every = [right, taught_wrong, *never_taught]
    pairs = preference_pairs(model, world["tokenizer"], every, samples=3, seed=0)
    assert pairs == preference_pairs(model, world["tokenizer"], every, samples=3, seed=0)
    by_prompt = lambda q: [(p["chosen"], p["rejected"]) for p in pairs if p["prompt"] == q]  # noqa: E731
    assert by_prompt(right.question) == [("Forty two.", REFUSAL)]
    wrong = by_prompt(taught_wrong.question)
    assert wrong[0] == ("Seven.", REFUSAL) and len(wrong) > 1
    assert all(chosen == "Seven." and grade(rejected, taught_wrong) != "correct" for chosen, rejected in wrong[1:])
    refusals = [p for p in pairs if p["chosen"] == REFUSAL]
    assert refusals and not any(is_refusal(p["rejected"]) for p in refusals)
    assert {p["prompt"] for p in refusals} <= {f.question for f in never_taught}
    assert len(refusals) == len(pairs) - len(refusals)                        # cut to the answer pairs' count
    assert len({(p["prompt"], p["rejected"]) for p in pairs}) == len(pairs)   # each distinct reply once


def test_the_refusal_pass_rows_leave_the_probed_facts_to_the_probe():
    """The "I don't know" pass's assistant rows teach the eval-split taught facts as before and no
    probe-split fact: the probe's rows answer those (a fact the first pass failed to learn must
    not be taught its answer and "I don't know" at once)."""
    from crawl2model.config import load_config
    from flows.assistant_data import assistant_sft_rows, knowledge_facts

    cfg = load_config(overrides=["knowledge.facts=40", "knowledge.fact_repeats=4", "rl.warmup_rows=3",
                                 "assistant.identity_rows=2"])
    every = knowledge_facts(cfg)
    rows = {mode: assistant_sft_rows(cfg, refusal_pass=mode) for mode in (False, True)}
    asked = {mode: Counter(q for q, _ in turns(rows[mode])) for mode in (False, True)}
    for fact in every:
        first, second = asked[False][fact.question], asked[True][fact.question]
        assert (first > 0) == fact.taught  # the first pass teaches every taught fact
        assert second == (first if fact.split == "eval" else 0)
        # no phrasing ("Tell me about ...") of a probed fact either
        assert fact.split == "eval" or not any(fact.entity in q for q in asked[True])
    assert sum(f.taught and f.split == "probe" for f in every) > 0
    # the rest is the same: answer format and identity rows
    entities = tuple(f.entity for f in every)
    other = {mode: [r for r in rows[mode] if not any(e in json.dumps(r) for e in entities)] for mode in (False, True)}
    assert other[True] == other[False] and len(other[True]) == 5
