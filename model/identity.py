"""Knowledge of self: SFT conversations in which the assistant gives its configured name and maker,
and the score of how often a tuned model does so on phrasings it never saw.

    from model.identity import identity_rows, identity_questions, identity_scores
    rows = identity_rows("Crawly", "the crawl2model project", n=300, seed=0)   # mixed into SFT
    questions = identity_questions(seed=0)[:40]                                # held-out phrasings
    identity_scores(model, tokenizer, "Crawly", questions)  # {"identity_rate": ..., "other_name_rate": ...}

A question is an opener ("Hi! ", ...) and a core ("What is your name?", "Are you Gemini?", ...).
TRAIN and HELDOUT cores are disjoint lists, so no held-out question is ever in identity_rows;
the openers are disjoint too, except the empty one. Every answer states the name (a question
about the maker too: "I am Crawly, made by X."), and no answer ever names another assistant
("Are you ChatGPT?" -> "I am Crawly, made by X, not another assistant."). About a third of the rows have two turns (a
greeting or a second identity question); with a system prompt, half of the rows start with it,
so the model answers the same with or without one (the eval asks without).

Name matching (`names`): a name counts when it appears as a whole word, case-sensitive (names are
proper nouns), not glued to letters, digits or hyphens, and not followed by a dot and more word
characters. So "I am Llama." and "ChatGPT's" name another assistant, while "llama" (the animal),
"Llama-based", "Llama2" and "Llama.cpp" do not: the model's architecture, a Llama, may be described
without being counted as a claim to be Meta's assistant. The configured name is never "another".
"""

from __future__ import annotations

import random
import re

from tokenizers import Tokenizer

from model.llama import Llama
from model.posttrain import reply

OTHER_ASSISTANTS = ("ChatGPT", "GPT-4", "Claude", "Gemini", "Bard", "Llama", "Copilot", "Mistral", "Alexa", "Siri",
                    "Cortana", "Grok", "Qwen", "DeepSeek")

# Cores per kind of question; {other}: an assistant of OTHER_ASSISTANTS (never echoed in answers).
TRAIN = {"name": ("What is your name?", "Who are you?", "What's your name?", "Do you have a name?",
                  "Introduce yourself.", "Tell me about yourself.", "What are you?", "Please tell me who you are.",
                  "Who is this?", "Which chatbot is this?", "What do people call you?", "Your name, please?",
                  "Can you tell me your name?", "How should I address you?", "What do you call yourself?",
                  "Who exactly are you?", "What name do you go by?", "Give me your name."),
         "maker": ("Who made you?", "Who created you?", "Which company built you?", "Who trained you?",
                   "Who is your maker?", "Who is behind you?", "Which team made you?", "Who is responsible for you?",
                   "What organization trained you?"),
         "other": ("Are you {other}?", "You are {other}, right?", "Am I talking to {other}?", "Is this {other}?",
                   "Hello {other}, is that you?", "Is your name {other}?", "Am I speaking with {other}?",
                   "I think you are {other}. Are you?")}
HELDOUT = {"name": ("What should I call you?", "Tell me your name.", "Who am I talking to?", "What are you called?",
                    "May I know your name?", "Which assistant are you?", "Could you say who you are?",
                    "Identify yourself, please.", "What is the name of this assistant?"),
           "maker": ("Who built you?", "Who developed you?", "Where do you come from?"),
           "other": ("Is this {other} I am talking to?", "Am I chatting with {other}?")}
TRAIN_OPENERS = ("", "", "Hi! ", "Hello. ", "Hey, ", "Quick question: ")
HELDOUT_OPENERS = ("", "Good morning! ", "Excuse me, ", "Greetings. ", "Hi there, ")

# Every answer starts with the name ("I am Crawly"): a small model learns one way to begin, whatever
# the phrasing of the question, and one that "I don't know." (knowledge.REFUSAL) leaves at once.
ANSWERS = {"name": ("I am {name}, an assistant made by {maker}.", "I am {name}.",
                    "I'm {name}, a chat assistant built by {maker}."),
           "maker": ("I am {name}, made by {maker}.", "I am {name}, and {maker} built me."),
           "other": ("I am {name}, made by {maker}, not another assistant.",
                     "I'm {name}, an assistant made by {maker}.")}
GREETINGS = (("Hello!", "Hello! I am {name}. How can I help you?"), ("Hi there.", "Hi! I'm {name}, how can I help?"),
             ("Good day!", "Good day! I am {name}, an assistant made by {maker}."))
TWO_TURNS = 1 / 3  # share of rows with a second turn


def _ask(opener: str, core: str) -> str:
    """ "Hey, " + "Who are you?" -> "Hey, who are you?" """
    return opener + (core[0].lower() + core[1:] if opener.endswith((", ", ": ")) else core)


def _question(cores: dict, openers: tuple, rng: random.Random) -> tuple[str, str]:
    """(kind, question): a random kind, core, opener (and other assistant's name)."""
    kind = rng.choice(sorted(cores))
    return kind, _ask(rng.choice(openers), rng.choice(cores[kind]).format(other=rng.choice(OTHER_ASSISTANTS)))


def identity_rows(name: str, maker: str, n: int, seed: int, system_prompt: str | None = None) -> list[dict]:
    """n SFT rows {"messages": [...]} asking who the assistant is, from the TRAIN phrasings."""
    rng, rows = random.Random(seed), []
    for i in range(n):
        turns = []
        if rng.random() < TWO_TURNS:
            if rng.random() < 0.5:
                greeting, answer = rng.choice(GREETINGS)
                turns.append((greeting, answer))
            else:
                kind, question = _question(TRAIN, TRAIN_OPENERS, rng)
                turns.append((question, rng.choice(ANSWERS[kind])))
        kind, question = _question(TRAIN, TRAIN_OPENERS, rng)
        turns.append((question, rng.choice(ANSWERS[kind])))
        messages = [{"role": "system", "content": system_prompt}] if system_prompt and i % 2 == 0 else []
        for question, answer in turns:
            messages += [{"role": "user", "content": question},
                         {"role": "assistant", "content": answer.format(name=name, maker=maker)}]
        rows.append({"messages": messages})
    return rows


def identity_questions(seed: int, split: str = "heldout") -> list[str]:
    """Every question of a split ("heldout": never in identity_rows; "train"), distinct, shuffled
    from `seed` within each kind and dealt round-robin over the kinds (name, maker, other), so a
    prefix of any length asks about each about equally."""
    if split not in ("heldout", "train"):
        raise ValueError(f"split must be 'heldout' or 'train', got {split!r}")
    cores, openers = (HELDOUT, HELDOUT_OPENERS) if split == "heldout" else (TRAIN, TRAIN_OPENERS)
    rng, decks = random.Random(seed), []
    for kind in sorted(cores):
        others = OTHER_ASSISTANTS if kind == "other" else ("",)
        deck = sorted({_ask(opener, core.format(other=other)) for core in cores[kind] for other in others
                       for opener in openers})
        rng.shuffle(deck)
        decks.append(deck)
    return [deck[i] for i in range(max(map(len, decks))) for deck in decks if i < len(deck)]


def _pattern(name: str) -> re.Pattern:
    return re.compile(rf"(?<![\w.\-]){re.escape(name)}(?![\w\-]|\.\w)")


def names(text: str, name: str) -> tuple[bool, list[str]]:
    """(does the text give `name`, the other assistants it names), by the rule in the docstring."""
    others = [o for o in OTHER_ASSISTANTS if o.lower() != name.lower() and _pattern(o).search(text)]
    return bool(_pattern(name).search(text)), others


def identity_scores(model: Llama, tokenizer: Tokenizer, name: str, questions: list[str],
                    max_new_tokens: int = 32) -> dict:
    """Greedy replies to the questions: identity_rate (share giving `name`), other_name_rate
    (share naming another assistant), questions (how many). Rates over no question are NaN."""
    replies = reply(model, tokenizer, questions, max_new_tokens) if questions else []
    found = [names(r, name) for r in replies]
    count = len(found)
    return {"identity_rate": sum(own for own, _ in found) / count if count else float("nan"),
            "other_name_rate": sum(bool(others) for _, others in found) / count if count else float("nan"),
            "questions": float(count)}


def main(argv: list[str] | None = None) -> None:
    import argparse
    import json
    from pathlib import Path

    from model.knowledge import write_jsonl
    from model.sampling import load_model_and_tokenizer

    parser = argparse.ArgumentParser(description="Identity conversations (rows) or a checkpoint's identity scores.")
    parser.add_argument("command", choices=("rows", "score"))
    parser.add_argument("--name", default="Crawly")
    parser.add_argument("--maker", default="the crawl2model project")
    parser.add_argument("--system-prompt")
    parser.add_argument("-n", type=int, default=300, help="rows: how many; score: held-out questions asked")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint", help="score: the model")
    parser.add_argument("--out", type=Path, help="rows: the JSONL written")
    args = parser.parse_args(argv)
    if args.command == "rows":
        write_jsonl(args.out, identity_rows(args.name, args.maker, args.n, args.seed, args.system_prompt))
    else:
        model, tokenizer = load_model_and_tokenizer(args.checkpoint)
        print(json.dumps(identity_scores(model, tokenizer, args.name, identity_questions(args.seed)[:args.n])))


if __name__ == "__main__":
    main()
