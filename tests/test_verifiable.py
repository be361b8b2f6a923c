"""Verifiable problems (model/verifiable.py): the final-answer reader and checker on right, wrong
and malformed replies; worked solutions that are right column by column; generators reproducible
from a seed with train and held-out never sharing a problem; user families and JSONL problems
with quarantine; warm-up rows from the train split only."""

from __future__ import annotations

import json
import random
import re

import pytest

from model.verifiable import (CATEGORIES, CATEGORY_PHRASINGS, FAMILIES, FINAL_MARK, Problem, check, column_solution,
                              final_answer, load_problems, problems, register_family, reward, split_of, warmup_rows)

SUM = Problem("What is 47 + 38?", "85", column_solution(47, "+", 38), "arithmetic")


@pytest.mark.parametrize("text, expected", [
    ("ones: 7+8+0=15\ntens: 4+3+1=8\nAnswer: 85", "85"),
    ("Answer: 85", "85"),
    ("work\nAnswer: 85.\n\n", "85"),                    # trailing period and blank lines
    ("Answer: 1,234", "1234"),
    ("Answer: 1 2 3 4", "1234"),                        # digits written apart
    ("Answer: 007", "7"),
    ("Answer: -12", "-12"),
    ("Answer:   Paris  ", "paris"),                     # text answers: case-folded
])
def test_final_answer_reads_and_normalizes_the_marked_line(text, expected):
    assert final_answer(text) == expected


@pytest.mark.parametrize("text", [
    "the sum is 85",                                    # no mark
    "Answer:",                                          # nothing after it
    "Answer: 85\nbecause 4+3+1=8",                      # not the last line
    "Answer: 84\nAnswer: 85",                           # two answers: hedging is malformed
    "",
])
def test_final_answer_is_none_when_absent_or_malformed(text):
    assert final_answer(text) is None


def test_check_and_reward_right_wrong_malformed():
    assert check(SUM.solution, SUM) and check("Answer: 85", SUM)
    assert not check(SUM.solution.replace("Answer: 85", "Answer: 84"), SUM)
    assert not check("85", SUM) and not check("Answer: 85\nAnswer: 85", SUM)
    assert reward(SUM.solution, SUM) == pytest.approx(1.1)
    assert reward("Answer: 84", SUM) == pytest.approx(0.1)
    assert reward("84", SUM) == 0.0
    assert reward("Answer: 85", SUM, format_reward=0.0) == 1.0


def test_worked_solutions_are_right_in_every_column():
    rng = random.Random(1)
    for _ in range(500):
        a, b = rng.randint(0, 999), rng.randint(0, 999)
        op = rng.choice("+-")
        a, b = (max(a, b), min(a, b)) if op == "-" else (a, b)
        lines = column_solution(a, op, b).splitlines()
        assert lines[-1] == f"{FINAL_MARK} {a + b if op == '+' else a - b}" and len(lines) == len(str(max(a, b))) + 1
        carry, digits = 0, []
        for line, column in zip(lines[:-1], zip(str(a).zfill(3)[::-1], str(b).zfill(3)[::-1])):
            top, bottom, carry_in, result = map(int, re.fullmatch(r"\w+: (\d+)[+-](\d)[+-](\d)=(\d+)", line).groups())
            assert carry_in == carry and bottom == int(column[1]) and top % 10 == int(column[0])
            assert result == (top + bottom + carry_in if op == "+" else top - bottom - carry_in)
            carry = result // 10 if op == "+" else int(top >= 10)
            digits.append(result % 10)
        assert int("".join(map(str, reversed(digits)))) + (carry * 10 ** len(digits) if op == "+" else 0) \
            == int(final_answer("\n".join(lines)))


def test_generators_are_reproducible_and_splits_never_overlap():
    families = ["arithmetic", "word_problems"]
    first = problems(families, 200, seed=3, split="train")
    assert first == problems(families, 200, seed=3, split="train")
    assert first != problems(families, 200, seed=4, split="train")
    assert [p.family for p in first[:4]] == families * 2            # the families take turns
    assert len({p.prompt for p in first}) == 200 and all(check(p.solution, p) for p in first)
    for train_seed, held_seed in [(0, 0), (0, 1), (7, 2)]:        # any seeds: the split is by a hash
        train = problems(families, 400, train_seed, "train")
        held = problems(families, 100, held_seed, "heldout")
        assert not {p.solution for p in train} & {p.solution for p in held}
        assert not {p.prompt for p in train} & {p.prompt for p in held}
        assert {split_of(p) for p in held} == {"heldout"}
    with pytest.raises(ValueError, match="unknown task families"):
        problems(["calculus"], 1, 0, "train")


def _phrasing(prompt: str, split: str) -> bool:
    """Whether the prompt is one of the split's (opener, core) phrasings of some word."""
    openers, cores = CATEGORY_PHRASINGS[split]
    words = [w for ws in CATEGORIES.values() for w in ws]
    asked = set()
    for opener in openers:
        for core in cores:
            for word in words:
                article = "" if word in CATEGORIES["color"] else "an " if word[0] in "aeiou" else "a "
                text = core.format(a=article, word=word)
                asked.add(opener + (text[0].lower() + text[1:] if opener.endswith((", ", ": ")) else text))
    return prompt in asked


def test_category_problems_are_right_and_held_out_ones_use_phrasings_never_trained_on():
    train, held = problems(["category"], 600, 0, "train"), problems(["category"], 256, 7, "heldout")
    kind_of = {w: kind for kind, words in CATEGORIES.items() for w in words}
    assert len(set(kind_of)) == sum(map(len, CATEGORIES.values()))    # no word in two categories
    for p in train[:50] + held[:50]:
        word = max((w for w in kind_of if re.search(rf"\b{w}\b", p.prompt)), key=len)
        assert p.answer == kind_of[word] and check(p.solution, p) and p.solution == f"{FINAL_MARK} {p.answer}"
        assert not check(f"{FINAL_MARK} {'fruit' if p.answer != 'fruit' else 'color'}", p)
    assert all(_phrasing(p.prompt, "train") and not _phrasing(p.prompt, "heldout") for p in train)
    assert all(_phrasing(p.prompt, "heldout") and not _phrasing(p.prompt, "train") for p in held)
    rows = warmup_rows(["category"], 300, seed=0)
    assert not {r["messages"][0]["content"] for r in rows} & {p.prompt for p in problems(["category"], 300, 3, "heldout")}
    assert {p.answer for p in held} == set(CATEGORIES)


def test_a_user_family_with_its_own_checker():
    def generate(rng):
        word = rng.choice(["cat", "dog", "owl", "fox", "elk", "bee", "ant", "yak"]) + str(rng.randint(0, 99))
        return Problem(f"Spell {word} backwards.", word[::-1], "", "reverse")

    register_family("reverse", generate, check=lambda completion, p: p.answer in completion)
    try:
        train, held = problems(["reverse"], 30, 0, "train"), problems(["reverse"], 10, 0, "heldout")
        assert not {p.prompt for p in train} & {p.prompt for p in held}
        p = train[0]
        assert check(f"it is {p.answer}!", p) and reward(f"it is {p.answer}!", p) == 1.0  # no answer line
        assert not check("no idea", p)
    finally:
        del FAMILIES["reverse"]


def test_load_problems_quarantines_bad_rows(tmp_path):
    rows = [json.dumps({"prompt": "What is 2 + 3?", "answer": "5"}), "{broken", json.dumps({"prompt": "hi"}),
            json.dumps({"prompt": "What is 6 * 7?", "answer": 42}), json.dumps({"prompt": "  ", "answer": "1"}),
            json.dumps([1]), json.dumps({"prompt": ["x"], "answer": "1"})]
    path = tmp_path / "problems.jsonl"
    path.write_text("\n".join(rows) + "\n")
    found, quarantine = load_problems(path)
    assert [(p.prompt, p.answer, p.family) for p in found] == [("What is 2 + 3?", "5", "data"),
                                                               ("What is 6 * 7?", "42", "data")]
    assert [(q["line"], q["reason"]) for q in quarantine] == [(2, "invalid-json"), (3, "missing-field"),
                                                              (5, "empty-content"), (6, "not-an-object"),
                                                              (7, "wrong-type")]
    assert check("6 * 7\nAnswer: 42", found[1]) and not check("Answer: 41", found[1])


def test_warmup_rows_teach_the_answer_format_from_the_train_split():
    rows = warmup_rows(["arithmetic", "word_problems"], 50, seed=0)
    held = {p.prompt for p in problems(["arithmetic", "word_problems"], 500, 0, "heldout")}
    assert len(rows) == 50
    for row in rows:
        user, assistant = row["messages"]
        assert user["role"] == "user" and assistant["role"] == "assistant" and user["content"] not in held
        answer = final_answer(assistant["content"])
        assert answer is not None and assistant["content"].splitlines()[-1] == f"{FINAL_MARK} {answer}"
