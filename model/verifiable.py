"""Problems whose final answer a program checks: built-in families (what kind of thing a word
names, multi-digit arithmetic, short word problems) generated from a seed, your own families (a generator plus an optional checker) or
JSONL problems; the SFT warm-up rows that teach the answer format; greedy held-out accuracy.

    from model.verifiable import problems, reward, warmup_rows, accuracy, register_family
    train = problems(["category"], 512, seed=0, split="train")      # "What kind of thing is a fox?"
    train = problems(["arithmetic", "word_problems"], 512, seed=0, split="train")
    held = problems(["arithmetic", "word_problems"], 64, seed=0, split="heldout")   # never in train
    reward(completion, train[0])                    # 1.1 right, 0.1 well-formed but wrong, 0 malformed
    rows = warmup_rows(["arithmetic"], 800, seed=0) # {"messages": [user, assistant]} for model.posttrain sft
    accuracy(model, tokenizer, held, max_new_tokens=64)

Answer format: a worked solution (none for `category`), then ONE last line `Answer: <final
answer>` (FINAL_MARK).

`category` is the pipeline's default, sized to what the demo's model (5M parameters, minutes of
pretraining) can partly do: name the category (color, animal, fruit, instrument, vehicle) of one
of 30 words. Its held-out problems are asked in phrasings that no training row uses. Tried and
dropped for the demo (docs/experiments.md): tasks that need reading digits or picking a word
out of the prompt (the largest of three numbers, parity, last digit, yes/no comparisons) stayed
at chance after 200 SFT steps: that model cannot yet read a given position of its prompt.
The default run's SFT and DPO models answer 20-75% of the held-out problems (it varies with the
SFT recipe), and GRPO adds 11-17 points (BENCHMARKS.md).

The arithmetic families ask for a sum or difference of two two-digit numbers; their solutions work
column by column, right to left, each column line `top op bottom op carry=result`:

    What is 47 + 38?            ones: 7+8+0=15          Compute 52 - 17.        ones: 12-7-0=5
                                tens: 4+3+1=8                                   tens: 5-1-1=3
                                Answer: 85                                      Answer: 35

so a tiny model needs the one-digit tables and where each digit of the prompt is (this
tokenizer keeps most digits one token each), not a two-digit table. Two digits because that is
the most the `small` preset has learned in minutes of SFT: about 900 packed steps of these rows
alone took an earlier demo's pretrained model to 31% held-out accuracy (with three-digit
operands or the word problems mixed in it stayed under 5% at 1100 steps), while the current
demo's pretrained model stayed at 1-2% after 500 steps, still reading the wrong digits from the
prompt. Pretrained 600 steps instead of 150, 6,000 of these rows alone took it from 6% at step 800
to 22% at 900, 49% at 1,000 and 91% at 1,500: learning to copy the digits is a phase change. A
harder family is a `register_family` away.

final_answer() reads that line: None when the mark is missing, appears twice (no hedging) or is
not on the last non-empty line, or nothing follows it; numbers are normalized ("1,234", "1 2 3 4"
and "01234" are "1234"), other text is case-folded with single spaces and no trailing period.
check() is the family's checker (default: normalized equality with the reference answer);
reward() is 1 when right plus `format_reward` when well-formed (so 0, format_reward, 1 + it).

Splits: a problem is held out when the sha256 of its worked solution (its prompt when it has
none) falls below HELDOUT_FRACTION, so train and held-out never share a problem, for any seed,
and one computation asked in two wordings stays on one side. A family with `split_by_phrasing`
(category) makes each split itself, from disjoint phrasings, so no held-out prompt is ever trained on.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from model.chat_data import PREVIEW_CHARS, _read

FINAL_MARK = "Answer:"
HELDOUT_FRACTION = 0.2   # of every family's problem space
COLUMNS = ["ones", "tens", "hundreds", "thousands"]


@dataclass(frozen=True)
class Problem:
    prompt: str
    answer: str
    solution: str   # worked steps ending in the final-answer line; "" for problems given without one
    family: str


# ---------------------------------------------------------------- answers

_NUMBER = re.compile(r"[+-]?\d+(\.\d+)?")


def normalize(answer: str) -> str:
    """A canonical form: numbers without spaces, commas or leading zeros; other text case-folded,
    single-spaced, without a trailing period."""
    text = " ".join(str(answer).split()).rstrip(".").strip()
    compact = text.replace(",", "").replace(" ", "")
    if _NUMBER.fullmatch(compact):
        if "." in compact:
            return compact.rstrip("0").rstrip(".")
        return str(int(compact))
    return text.casefold()


def final_answer(text: str) -> str | None:
    """The normalized final answer of a completion; None when absent or malformed (see the module doc)."""
    if text.count(FINAL_MARK) != 1:
        return None
    lines = [line for line in text.splitlines() if line.strip()]
    last = lines[-1].strip() if lines else ""
    if not last.startswith(FINAL_MARK):
        return None
    value = normalize(last[len(FINAL_MARK):])
    return value or None


def _default_check(completion: str, problem: Problem) -> bool:
    return final_answer(completion) == normalize(problem.answer)


def check(completion: str, problem: Problem) -> bool:
    """Whether the completion's final answer is right, by the problem's family checker."""
    family = FAMILIES.get(problem.family)
    return (family.check if family and family.check else _default_check)(completion, problem)


def reward(completion: str, problem: Problem, format_reward: float = 0.1) -> float:
    """1 when the answer checks, plus format_reward when the completion ends in one well-formed
    final-answer line (right or wrong): a malformed reply earns nothing."""
    return float(check(completion, problem)) + (format_reward if final_answer(completion) is not None else 0.0)


# ---------------------------------------------------------------- built-in families

def column_solution(a: int, op: str, b: int) -> str:
    """Worked column addition or subtraction (a >= b) of non-negative integers, right to left,
    ending in the answer line. A column line is `<column>: top op bottom op carry=result`, carry
    the carry (or borrow) of the column before; a subtraction that borrows adds 10 to its top digit."""
    width = len(str(max(a, b)))
    if width > len(COLUMNS):
        raise ValueError(f"column_solution works up to {len(COLUMNS)} digits, got {max(a, b)}")
    digits_a, digits_b = str(a).zfill(width)[::-1], str(b).zfill(width)[::-1]
    lines, carry = [], 0
    for name, x, y in zip(COLUMNS, map(int, digits_a), map(int, digits_b)):
        if op == "+":
            lines.append(f"{name}: {x}+{y}+{carry}={x + y + carry}")
            carry = (x + y + carry) // 10
        else:
            top = x + 10 if x - y - carry < 0 else x
            lines.append(f"{name}: {top}-{y}-{carry}={top - y - carry}")
            carry = int(top > x)
    result = a + b if op == "+" else a - b
    return "\n".join(lines + [f"{FINAL_MARK} {result}"])


def _two_numbers(rng: random.Random) -> tuple[int, str, int]:
    """(a, op, b): two-digit numbers, + or -, never a negative result."""
    a, b, op = rng.randint(10, 99), rng.randint(10, 99), rng.choice("+-")
    return (b, op, a) if op == "-" and b > a else (a, op, b)


# Every prompt ends in the sum and one punctuation mark: the digits sit just before the reply.
ARITHMETIC_PROMPTS = ("What is {a} {op} {b}?", "Compute {a} {op} {b}.", "Calculate {a} {op} {b}.",
                      "Work out {a} {op} {b}.")


def arithmetic(rng: random.Random) -> Problem:
    """Addition or subtraction of two-digit numbers."""
    a, op, b = _two_numbers(rng)
    prompt = rng.choice(ARITHMETIC_PROMPTS).format(a=a, op=op, b=b)
    return Problem(prompt, str(a + b if op == "+" else a - b), column_solution(a, op, b), "arithmetic")


NAMES = ("Ana", "Ben", "Carla", "Dev", "Emma", "Farid", "Grace", "Hugo", "Ines", "Jon", "Kemal", "Lena")
ITEMS = ("apples", "stamps", "marbles", "books", "coins", "cards", "shells", "pencils")
MORE = ("{name} has {a} {items} and gets {b} more. How many {items} does {name} have now?",
        "{name} had {a} {items}. A friend gave {name} {b} more. How many {items} does {name} have?",
        "There are {a} {items} in a box and {b} in a bag. How many {items} are there in all?")
LESS = ("{name} has {a} {items} and gives away {b}. How many {items} are left?",
        "{name} had {a} {items} and lost {b} of them. How many {items} does {name} have now?",
        "A shop had {a} {items} and sold {b}. How many {items} does the shop have left?")


def word_problem(rng: random.Random) -> Problem:
    """A one-step story about gaining (+) or losing (-) a two-digit amount, worked like arithmetic."""
    a, op, b = _two_numbers(rng)
    template = rng.choice(MORE if op == "+" else LESS)
    prompt = template.format(name=rng.choice(NAMES), items=rng.choice(ITEMS), a=a, b=b)
    return Problem(prompt, str(a + b if op == "+" else a - b), column_solution(a, op, b), "word_problems")


CATEGORIES = {"color": ("red", "blue", "green", "yellow", "black", "white"),
              "animal": ("cat", "dog", "horse", "fox", "sheep", "duck"),
              "fruit": ("apple", "pear", "plum", "grape", "lemon", "peach"),
              "instrument": ("piano", "violin", "guitar", "drum", "flute", "harp"),
              "vehicle": ("car", "bus", "truck", "train", "boat", "bike")}
# (openers, cores) per split: held-out problems are asked only in phrasings no training row uses
# (as model.identity does), about the same words; the word ends all but one phrasing.
CATEGORY_PHRASINGS = {
    "train": (("", "Quick question: ", "Hey, ", "I wonder: "),
              ("What kind of thing is {a}{word}?", "What is {a}{word}?", "Which category does this belong to: {word}?",
               "Tell me what {a}{word} is?", "What category is the word {word}?", "Is it a color, an animal, a fruit, "
               "an instrument or a vehicle: {word}?")),
    "heldout": (("", "Please tell me: ", "Hi! "),
                ("What sort of thing is {a}{word}?", "Name the category of the word {word}?",
                 "What type of thing is {a}{word}?", "Classify the word {word}?"))}


def word_category(rng: random.Random, split: str) -> Problem:
    """What kind of thing a word names (color, animal, fruit, instrument or vehicle), answered
    directly ("What kind of thing is a fox?" -> "Answer: animal"), in the split's phrasings."""
    kind = rng.choice(sorted(CATEGORIES))
    word = rng.choice(CATEGORIES[kind])
    openers, cores = CATEGORY_PHRASINGS[split]
    article = "" if kind == "color" else "an " if word[0] in "aeiou" else "a "
    core = rng.choice(cores).format(a=article, word=word)
    opener = rng.choice(openers)
    prompt = opener + (core[0].lower() + core[1:] if opener.endswith((", ", ": ")) else core)
    return Problem(prompt, kind, f"{FINAL_MARK} {kind}", "category")


@dataclass(frozen=True)
class Family:
    generate: Callable[[random.Random], Problem]
    check: Callable[[str, Problem], bool] | None = None   # None: normalized final-answer equality
    # True: generate(rng, split) makes a problem of that split itself (held-out problems asked in
    # phrasings never used in training); False: problems are split by a hash (split_of)
    split_by_phrasing: bool = False


FAMILIES: dict[str, Family] = {"arithmetic": Family(arithmetic), "word_problems": Family(word_problem),
                               "category": Family(word_category, split_by_phrasing=True)}


def register_family(name: str, generate: Callable[[random.Random], Problem], check=None) -> None:
    """Add (or replace) a task family: `generate(rng)` returns a Problem whose family is `name`;
    `check(completion, problem) -> bool` defaults to final-answer equality."""
    FAMILIES[name] = Family(generate, check)


# ---------------------------------------------------------------- splits

def split_of(problem: Problem) -> str:
    key = problem.solution or problem.prompt
    score = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little") / 2 ** 64
    return "heldout" if score < HELDOUT_FRACTION else "train"


def problems(families: list[str], n: int, seed: int, split: str) -> list[Problem]:
    """n distinct problems of one split ("train" or "heldout"), the families taking turns; the
    same arguments give the same list."""
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    unknown = [f for f in families if f not in FAMILIES]
    if unknown or not families:
        raise ValueError(f"unknown task families {unknown}; known: {', '.join(FAMILIES)}")
    rngs = {f: random.Random(f"{seed}:{split}:{f}") for f in families}  # a string seed hashes stably
    found: list[Problem] = []
    seen: set[str] = set()
    misses = 0
    while len(found) < n:
        family = families[len(found) % len(families)]
        maker = FAMILIES[family]
        problem = maker.generate(rngs[family], split) if maker.split_by_phrasing else maker.generate(rngs[family])
        if (maker.split_by_phrasing or split_of(problem) == split) and problem.prompt not in seen:
            seen.add(problem.prompt)
            found.append(problem)
            misses = 0
        else:
            misses += 1
            if misses > 10_000:
                raise ValueError(f"family {family!r} yields no new {split} problem: "
                                 f"its problem space is too small for n={n}")
    return found


def load_problems(path: str | Path) -> tuple[list[Problem], list[dict]]:
    """(problems, quarantine) of a JSONL file of {"prompt": str, "answer": str | number} rows
    (family "data", checked by final-answer equality); every row is one or the other."""
    found, quarantine = [], []
    for number, row, reason, raw in _read(Path(path)):
        if reason is None:
            prompt, answer = row.get("prompt"), row.get("answer")
            if prompt is None or answer is None:
                reason = "missing-field"
            elif not isinstance(prompt, str) or not isinstance(answer, (str, int, float)) or isinstance(answer, bool):
                reason = "wrong-type"
            elif not prompt.strip() or not normalize(str(answer)):
                reason = "empty-content"
            else:
                found.append(Problem(prompt.strip(), str(answer), "", "data"))
                continue
        preview = json.dumps(row, ensure_ascii=False)[:PREVIEW_CHARS] if row is not None else raw
        quarantine.append({"line": number, "reason": reason, "preview": preview})
    return found, quarantine


# ---------------------------------------------------------------- SFT warm-up and accuracy

def warmup_rows(families: list[str], n: int, seed: int) -> list[dict]:
    """n SFT rows of train-split problems answered with their worked solution."""
    return [{"messages": [{"role": "user", "content": p.prompt}, {"role": "assistant", "content": p.solution}]}
            for p in problems(families, n, seed, "train")]


def accuracy(model, tokenizer, problems: list[Problem], max_new_tokens: int, batch_size: int = 32) -> float:
    """The share of problems whose greedy reply checks (0.0 for no problems)."""
    from model.posttrain import reply  # model.posttrain imports much; only accuracy needs it

    right = 0
    for start in range(0, len(problems), batch_size):
        batch = problems[start:start + batch_size]
        replies = reply(model, tokenizer, [p.prompt for p in batch], max_new_tokens)
        right += sum(check(text, p) for text, p in zip(replies, batch))
    return right / len(problems) if problems else 0.0
