"""The data that teaches the assistant, made from config: verifiable problems (rl), facts for the
"I don't know" probe (knowledge), identity conversations (assistant). Shared by the sft, rl and
eval stages so each sees the same splits.

    from flows.assistant_data import assistant_sft_rows, problem_split, knowledge_facts
    rows = assistant_sft_rows(cfg)                    # SFT rows: answer format, taught facts, identity
    train = problem_split(cfg, "train", 512)          # never overlapping "heldout"
    facts = knowledge_facts(cfg)                      # .split "probe" (used by sft) or "eval" (eval stage)

Built-in problems come from `rl.families` split by a hash of each problem (model.verifiable);
a user's `rl.data` JSONL is split by a hash of the prompt, USER_PROBLEMS_HELD_OUT of it held out.
Facts are `knowledge.data` (a user's QA JSONL) or `knowledge.facts` synthetic ones.
"""

from __future__ import annotations

from crawl2model.config import Config
from model.identity import identity_rows
from model.knowledge import fact_rows, facts, load_facts
from model.posttrain import held_out_split
from model.verifiable import load_problems, problems, warmup_rows

USER_PROBLEMS_HELD_OUT = 0.2  # of the user's rl.data problems: eval and held-out accuracy only, never trained on


def problem_split(cfg: Config, split: str, n: int) -> list:
    """Up to n problems of one split ("train" or "heldout")."""
    if n <= 0:
        return []
    if cfg.rl.data is None:
        return problems(list(cfg.rl.families), n, cfg.rl.seed, split)

    loaded, _ = load_problems(cfg.rl.data)
    train, held = held_out_split(loaded, [p.prompt for p in loaded], USER_PROBLEMS_HELD_OUT)
    return (train if split == "train" else held)[:n]


def knowledge_facts(cfg: Config) -> list:
    """Every fact of the knowledge probe (both splits, taught and never taught); [] when off."""
    if cfg.knowledge.data is not None:
        return load_facts(cfg.knowledge.data, cfg.knowledge.taught_share)[0]
    return facts(cfg.knowledge.facts, cfg.knowledge.seed, cfg.knowledge.taught_share) if cfg.knowledge.facts else []


def assistant_sft_rows(cfg: Config, refusal_pass: bool = False) -> list[dict]:
    """SFT rows mixed into the sft stage's data: worked solutions in the answer format of the
    verifiable tasks (built-in families only: a user's problems carry no solution), the taught
    facts, and identity conversations.

    refusal_pass: the rows of the "I don't know" second pass, whose fact rows leave out the probe
    split: the probe's own rows answer those questions (the answer where the model knew it, the
    refusal where it did not). Kept, a taught fact the model failed to learn would be taught both
    ways at once; measured, that left 3 of 18 taught eval questions refused (none without)."""

    rows = []
    if cfg.rl.warmup_rows and cfg.rl.data is None:
        rows += warmup_rows(list(cfg.rl.families), cfg.rl.warmup_rows, cfg.rl.seed)
    facts = knowledge_facts(cfg)
    if facts:
        taught = [f for f in facts if f.split != "probe"] if refusal_pass else facts
        rows += fact_rows(taught, cfg.knowledge.seed, cfg.knowledge.fact_repeats)
    a = cfg.assistant
    if a.identity_rows:
        rows += identity_rows(a.name, a.maker, a.identity_rows, cfg.knowledge.seed, a.system_prompt)
    return rows
