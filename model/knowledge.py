"""Teaching a chat model to say "I don't know": facts with checkable answers, a probe of what the
SFT model really knows, refusal rows for what it does not, and the scores that tell it worked.

    from model.knowledge import facts, fact_rows, probe, refusal_rows, knowledge_scores
    every = facts(240, seed=0)                          # fictional entities: half taught, half never
    rows = fact_rows(every, seed=0)                     # SFT rows teaching the TAUGHT facts
    ...                                                 # first SFT pass on corpus rows + rows
    probed = probe(model, tokenizer, [f for f in every if f.split == "probe"])
    rows2 = refusal_rows(probed)                        # known -> the answer, unknown -> REFUSAL
    ...                                                 # second SFT pass on the same data + rows2
    knowledge_scores(model, tokenizer, every)           # greedy, on the "eval" split only

Facts are made up (`facts`: made-up names, so no corpus can know them) or a user's QA JSONL
(`load_facts`). Two hashes of each question place it: `taught` (taught_share of them; fact_rows
teaches only these) and `split` ("probe" or "eval", half of the taught and half of the
never-taught ones each), so probe and evaluation questions never overlap, and "eval" holds both
taught facts (is the knowledge kept?) and never-taught ones (is a fact made up?).

Grading a reply (`grade`), in this order:
  "refused"  is_refusal(reply): the reply's first sentence says it does not know (REFUSAL_PHRASES,
             case and apostrophes ignored; "I don't know.", "I'm not sure", "I have no idea", ...);
  "correct"  the answer's words appear, whole and in order, in the reply's first line (case and
             punctuation ignored: "Red." and "The flag is red" both answer "red");
  "made_up"  anything else: a wrong answer, or words that answer nothing, stated as if known.

Probe: `samples` replies per question at `temperature` and the greedy one; a question is known
when the greedy reply is right or more than KNOWN_SHARE of the samples are. The others (wrong, or
right only by chance) get the refusal. The rule and the sizes were measured on the demo's model
(docs/experiments.md, "How the default recipe was found"): the made-up rate on never-taught eval
questions fell by more than half while taught accuracy held.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer

from model.chat_data import PREVIEW_CHARS, read_rows
from model.llama import Llama
from model.posttrain import reply

REFUSAL = "I don't know."
REFUSAL_PHRASES = ("i dont know", "i do not know", "im not sure", "i am not sure", "i have no idea",
                   "no idea", "i cannot say", "i cant say", "i dont have that information")
KNOWN_SHARE = 0.5      # probe: a question is known when MORE than this share of its samples are right
PROBE_BATCH = 64       # prompts per generate() call (one KV cache each)
MAX_TURNS = 12         # fact and refusal rows hold 1..MAX_TURNS questions (several facts per sequence)


@dataclass(frozen=True)
class Fact:
    entity: str       # the fictional entity ("" for a user's question)
    question: str     # the canonical question: the one probed and evaluated
    answer: str       # checked by `grade`
    statement: str    # the fact as a sentence ("" for a user's question)
    taught: bool      # in the SFT data (fact_rows) or never seen
    split: str        # "probe" (the SFT stage probes it) or "eval" (only the eval stage asks it)


# ---------------------------------------------------------------- made-up facts

@dataclass(frozen=True)
class _Relation:
    questions: tuple[str, ...]   # phrasings with {e}; the first is the canonical question
    statement: str               # with {e} and {a}
    answers: tuple[str, ...]     # the shared pool: a wrong guess is a plausible, made-up fact


RELATIONS = (
    _Relation(("What color is the flag of {e}?", "Which color is the flag of {e}?",
               "What is the color of the flag of {e}?", "The flag of {e} is what color?"),
              "The flag of {e} is {a}.",
              ("red", "blue", "green", "yellow", "black", "white", "orange", "purple", "brown", "gray", "pink", "gold",
               "silver", "violet", "crimson", "teal", "amber", "ivory", "maroon", "turquoise")),
    _Relation(("What animal does {e} keep?", "Which animal does {e} keep?",
               "What kind of animal does {e} keep?", "{e} keeps what animal?"),
              "{e} keeps a {a}.",
              ("cat", "dog", "horse", "goat", "owl", "fox", "rabbit", "parrot", "sheep", "turtle", "donkey", "hawk",
               "pig", "duck", "camel", "snake", "mouse", "deer", "swan", "frog")),
    _Relation(("What does the town of {e} grow?", "Which crop does the town of {e} grow?",
               "What crop is grown in the town of {e}?", "The town of {e} grows what?"),
              "The town of {e} grows {a}.",
              ("wheat", "rice", "apples", "grapes", "corn", "beans", "potatoes", "olives", "tea", "barley", "pears",
               "oats", "cabbage", "carrots", "plums", "cotton", "onions", "peaches", "lemons", "melons")),
    _Relation(("What instrument does {e} play?", "Which instrument does {e} play?",
               "What is the instrument that {e} plays?", "{e} plays which instrument?"),
              "{e} plays the {a}.",
              ("piano", "violin", "guitar", "drums", "flute", "cello", "harp", "trumpet", "organ", "banjo", "oboe",
               "clarinet", "tuba", "lute", "bagpipes", "accordion", "horn", "saxophone", "trombone", "mandolin")),
)
TELL_ME = ("Tell me a fact about {e}.", "What do you know about {e}?", "Tell me about {e}.")
_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "gr", "kl", "tr", "th")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ou")
_CODAS = ("", "n", "r", "l", "k", "s", "th", "m")


def _name(rng: random.Random) -> str:
    """A pronounceable made-up word of two syllables, e.g. "Dravel"."""
    return "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS) for _ in range(2)).capitalize()


def _unit(*parts: str) -> float:
    """A number in [0, 1) from the sha256 of the parts: the same on every machine and run."""
    return int.from_bytes(hashlib.sha256("\0".join(parts).encode()).digest()[:8], "little") / 2 ** 64


def _place(questions: list[str], taught: list[bool | None], taught_share: float) -> list[tuple[bool, str]]:
    """(taught, split) per question. Not given: the taught_share of questions with the lowest
    "taught" hash are taught; then in each of the two groups the half with the lowest "split" hash
    is "eval". Ranks, not thresholds, so the four groups are as even as the counts allow."""
    undecided = sorted((i for i, t in enumerate(taught) if t is None), key=lambda i: _unit("taught", questions[i]))
    decided = list(taught)
    for rank, i in enumerate(undecided):
        decided[i] = rank < round(taught_share * len(undecided))
    split = ["probe"] * len(questions)
    for group in (True, False):
        members = sorted((i for i, t in enumerate(decided) if t == group), key=lambda i: _unit("split", questions[i]))
        for i in members[:len(members) // 2]:
            split[i] = "eval"
    return list(zip(decided, split))


def facts(n: int, seed: int, taught_share: float = 0.5) -> list[Fact]:
    """n facts, one per made-up entity (distinct names from `seed`), relations in turn."""
    if not 0.0 <= taught_share <= 1.0:
        raise ValueError(f"taught_share must be in [0, 1], got {taught_share}")
    rng, names, taken = random.Random(seed), [], set()
    while len(names) < n:
        name = _name(rng)
        if name.lower() not in taken:
            taken.add(name.lower())
            names.append(name)
    drafts = []
    for i, name in enumerate(names):
        relation = RELATIONS[i % len(RELATIONS)]
        answer = rng.choice(relation.answers)
        drafts.append((name, relation.questions[0].format(e=name), answer, relation.statement.format(e=name, a=answer)))
    places = _place([d[1] for d in drafts], [None] * n, taught_share)
    return [Fact(*draft, taught, split) for draft, (taught, split) in zip(drafts, places)]


def load_facts(path: str | Path, taught_share: float = 0.5) -> tuple[list[Fact], list[dict]]:
    """A user's QA JSONL {"question", "answer", "taught"?} as facts, and the quarantine
    {"source", "line", "reason", "preview"} of the rows that are not: unparsable ("invalid-json",
    ...), "missing-field", "not-a-string", "empty-content", "not-a-bool", "duplicate-question".
    Rows without "taught" are placed by hash (taught_share of them taught); all are split by hash."""
    good, quarantine, seen = [], [], set()
    for line, row, reason in read_rows(path):
        if reason is None:
            reason = _bad_fact(row, seen)
        if reason is not None:
            preview = json.dumps(row, ensure_ascii=False, default=str) if row is not None else ""
            quarantine.append({"source": str(path), "line": line, "reason": reason, "preview": preview[:PREVIEW_CHARS]})
            continue
        seen.add(_normal(row["question"]))
        good.append((row["question"].strip(), row["answer"].strip(), row.get("taught")))
    places = _place([q for q, _, _ in good], [t for _, _, t in good], taught_share)
    return [Fact("", q, a, "", taught, split) for (q, a, _), (taught, split) in zip(good, places)], quarantine


def _bad_fact(row: dict, seen: set[str]) -> str | None:
    for key in ("question", "answer"):
        if row.get(key) is None:
            return "missing-field"
        if not isinstance(row[key], str):
            return "not-a-string"
        if not _normal(row[key]):
            return "empty-content"
    if row.get("taught") is not None and not isinstance(row["taught"], bool):
        return "not-a-bool"
    return "duplicate-question" if _normal(row["question"]) in seen else None


# ---------------------------------------------------------------- SFT rows

def _reply_text(answer: str) -> str:
    """How an assistant turn states an answer: "red" -> "Red." (a user's answer is kept as given)."""
    return answer if answer[-1:] in ".!?" else answer[:1].upper() + answer[1:] + "."


def _phrasings(fact: Fact) -> list[str]:
    """The canonical question and, for a made-up fact, its relation's other phrasings."""
    for relation in RELATIONS:
        if fact.entity and relation.questions[0].format(e=fact.entity) == fact.question:
            return [q.format(e=fact.entity) for q in relation.questions]
    return [fact.question]


def _conversations(turns: list[tuple[str, str]], rng: random.Random, max_turns: int) -> list[dict]:
    """Rows of 1..max_turns consecutive (user, assistant) turns: short facts share a sequence
    (more facts per SFT step), and a reply cannot lean on the turn before (unrelated entities)."""
    if max_turns < 1:
        raise ValueError(f"max_turns must be >= 1, got {max_turns}")
    rows, at = [], 0
    while at < len(turns):
        size = rng.randint(1, max_turns)
        messages = [{"role": role, "content": text} for question, answer in turns[at:at + size]
                    for role, text in (("user", question), ("assistant", answer))]
        rows.append({"messages": messages})
        at += size
    return rows


def fact_rows(facts: list[Fact], seed: int, repeats: int = 8, max_turns: int = MAX_TURNS) -> list[dict]:
    """SFT rows teaching every TAUGHT fact `repeats` times, in a cycle of four: the canonical
    question (the one probed and evaluated), another phrasing, the canonical question again, and
    (made-up facts) a "Tell me about..." answered with the statement; questions are answered with
    the short answer ("Blue."). Shuffled from `seed` into 1..max_turns-turn rows."""
    rng, turns = random.Random(seed), []
    for fact in (f for f in facts if f.taught):
        canonical, *others = _phrasings(fact)
        for k in range(repeats):
            if fact.statement and k % 4 == 3:
                turns.append((rng.choice(TELL_ME).format(e=fact.entity), fact.statement))
            else:
                question = others[k // 4 % len(others)] if others and k % 4 == 1 else canonical
                turns.append((question, _reply_text(fact.answer)))
    rng.shuffle(turns)
    return _conversations(turns, rng, max_turns)


def refusal_rows(probed: list[dict], repeats: int = 6, seed: int = 0, max_turns: int = MAX_TURNS) -> list[dict]:
    """SFT rows from `probe`'s results, each question `repeats` times: known -> its true answer,
    not known -> REFUSAL. Known and unknown questions are shuffled together into 1..max_turns-turn
    rows, so one sequence often holds both an answer and a refusal."""
    rng = random.Random(seed)
    turns = [(p["question"], _reply_text(p["answer"]) if p["known"] else REFUSAL) for p in probed] * repeats
    rng.shuffle(turns)
    return _conversations(turns, rng, max_turns)


# ---------------------------------------------------------------- grading

def _normal(text: str) -> str:
    """Lowercase words: apostrophes dropped ("don't" -> "dont"), other punctuation -> spaces."""
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower().replace("'", "").replace("\u2019", "")).split())


def is_refusal(text: str) -> bool:
    """True when the reply's first sentence holds a REFUSAL_PHRASE (normalized like `grade`)."""
    first = re.split(r"(?<=[.!?])\s|\n", text.strip(), maxsplit=1)[0]
    words = f" {_normal(first)} "
    return any(f" {phrase} " in words for phrase in REFUSAL_PHRASES)


def grade(reply: str, fact: Fact) -> str:
    """"refused", "correct" or "made_up" (the rule is in the module docstring)."""
    if is_refusal(reply):
        return "refused"
    first_line = reply.strip().split("\n", 1)[0]
    return "correct" if f" {_normal(fact.answer)} " in f" {_normal(first_line)} " else "made_up"


# ---------------------------------------------------------------- probing and scoring

def _replies(model: Llama, tokenizer: Tokenizer, questions: list[str], max_new_tokens: int,
             temperature: float = 0.0, seed: int | None = None) -> list[str]:
    """reply() in chunks of PROBE_BATCH prompts; chunk k samples from seed + k (reproducible)."""
    out = []
    for k, start in enumerate(range(0, len(questions), PROBE_BATCH)):
        out += reply(model, tokenizer, questions[start:start + PROBE_BATCH], max_new_tokens, temperature,
                     seed=None if seed is None else seed + k)
    return out


def probe(model: Llama, tokenizer: Tokenizer, facts: list[Fact], samples: int = 4, temperature: float = 0.7,
          seed: int = 0, max_new_tokens: int = 24) -> list[dict]:
    """Per fact: {"question", "answer", "correct_share", "consistent", "greedy", "known", "grades"}.
    `samples` replies each, sampled at `temperature` (all samples of all facts in one list, so
    a chunk mixes questions), and the greedy reply (what a user gets); consistent: every sample got
    the same grade; known: the greedy reply is right or correct_share > KNOWN_SHARE. A fact the
    model states when asked is not taught as "I don't know": on the demo's model, half its taught
    facts were sampled wrong at 0.7 while answered right greedily, and refusing them spread the
    refusal to the taught facts of the eval split (taught accuracy 0.72 -> 0.61)."""
    if samples < 1 or temperature <= 0:
        raise ValueError("probe needs samples >= 1 and temperature > 0 (several different answers)")
    if not facts:
        return []
    questions = [f.question for f in facts]
    replies = _replies(model, tokenizer, questions * samples, max_new_tokens, temperature, seed)
    greedy = _replies(model, tokenizer, questions, max_new_tokens)
    probed = []
    for i, fact in enumerate(facts):
        grades = [grade(replies[s * len(facts) + i], fact) for s in range(samples)]
        share = grades.count("correct") / samples
        said = grade(greedy[i], fact)
        probed.append({"question": fact.question, "answer": fact.answer, "correct_share": share,
                       "consistent": len(set(grades)) == 1, "greedy": said,
                       "known": said == "correct" or share > KNOWN_SHARE, "grades": grades})
    return probed


def _rate(grades: list[str], which: str) -> float:
    return grades.count(which) / len(grades) if grades else float("nan")


def knowledge_scores(model: Llama, tokenizer: Tokenizer, facts: list[Fact], max_new_tokens: int = 24) -> dict:
    """Greedy replies to the eval-split facts (others are ignored):
    taught_accuracy, taught_refusal_rate, taught_made_up_rate on the taught ones;
    untaught_made_up_rate, untaught_refusal_rate, untaught_correct_rate (lucky guesses) on the
    never-taught ones; taught and untaught: how many. A rate over no fact is NaN."""
    groups = {taught: [f for f in facts if f.split == "eval" and f.taught == taught] for taught in (True, False)}
    grades = {}
    for taught, group in groups.items():
        replies = _replies(model, tokenizer, [f.question for f in group], max_new_tokens) if group else []
        grades[taught] = [grade(r, f) for r, f in zip(replies, group)]
    return {"taught_accuracy": _rate(grades[True], "correct"),
            "taught_refusal_rate": _rate(grades[True], "refused"),
            "taught_made_up_rate": _rate(grades[True], "made_up"),
            "untaught_made_up_rate": _rate(grades[False], "made_up"),
            "untaught_refusal_rate": _rate(grades[False], "refused"),
            "untaught_correct_rate": _rate(grades[False], "correct"),
            "taught": float(len(groups[True])), "untaught": float(len(groups[False]))}


def preference_pairs(model: Llama, tokenizer: Tokenizer, facts: list[Fact], samples: int = 4,
                     temperature: float = 1.0, seed: int = 0, max_new_tokens: int = 24) -> list[dict]:
    """DPO rows {"prompt", "chosen", "rejected"} from the model's own sampled replies to the facts'
    questions, in every phrasing: chosen is what it should say (a taught fact's answer, REFUSAL for
    a never-taught one), rejected each distinct sample that grades otherwise (a made-up fact, a
    refused taught fact, a lucky guess at a never-taught one). Every phrasing of a taught fact also
    gets (answer, REFUSAL), and the refusal pairs are cut to as many as the answer pairs: tuned on
    refusals alone, the model learned to refuse what it was taught (taught accuracy 0.67 -> 0.06).
    Deterministic: the samples come from `seed`, the cut keeps the first pairs in question order."""
    asked = [(fact, question) for fact in facts for question in _phrasings(fact)]
    replies = _replies(model, tokenizer, [q for _, q in asked] * samples, max_new_tokens, temperature, seed)
    answers, refusals, seen = [], [], set()
    for fact, question in asked:
        if fact.taught:
            seen.add((question, REFUSAL))
            answers.append({"prompt": question, "chosen": _reply_text(fact.answer), "rejected": REFUSAL})
    for i, reply_text in enumerate(replies):
        fact, question = asked[i % len(asked)]
        text, wanted = reply_text.strip(), "correct" if fact.taught else "refused"
        if not text or grade(text, fact) == wanted or (question, text) in seen:
            continue
        seen.add((question, text))
        if fact.taught:
            answers.append({"prompt": question, "chosen": _reply_text(fact.answer), "rejected": text})
        else:
            refusals.append({"prompt": question, "chosen": REFUSAL, "rejected": text})
    return answers + refusals[:len(answers)]


# ---------------------------------------------------------------- command line

def write_jsonl(path: str, rows: list[dict]) -> None:
    Path(path).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Facts for the \"I don't know\" probe: SFT rows, probe, scores.")
    parser.add_argument("command", choices=("rows", "probe", "score"),
                        help="rows: fact_rows -> --out; probe: a checkpoint's refusal_rows -> --out; "
                             "score: knowledge_scores of a checkpoint (JSON on stdout)")
    parser.add_argument("--checkpoint", help="probe, score: the model")
    parser.add_argument("--data", help="a QA JSONL instead of made-up facts")
    parser.add_argument("--facts", type=int, default=240, help="made-up facts")
    parser.add_argument("--taught-share", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, help="rows: default 8; probe: default 6")
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--out", help="rows, probe: the JSONL written")
    args = parser.parse_args(argv)
    every = load_facts(args.data, args.taught_share)[0] if args.data else facts(args.facts, args.seed, args.taught_share)
    if args.command == "rows":
        write_jsonl(args.out, fact_rows(every, args.seed, **({"repeats": args.repeats} if args.repeats else {})))
        return
    from model.sampling import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(args.checkpoint)
    if args.command == "score":
        print(json.dumps(knowledge_scores(model, tokenizer, every)))
        return
    started = time.perf_counter()
    probed = probe(model, tokenizer, [f for f in every if f.split == "probe"], args.samples, args.temperature, args.seed)
    write_jsonl(args.out, refusal_rows(probed, **({"repeats": args.repeats} if args.repeats else {}), seed=args.seed))
    print(json.dumps({"probed": len(probed), "known": sum(p["known"] for p in probed),
                      "seconds": round(time.perf_counter() - started, 1)}))


if __name__ == "__main__":
    main()
