"""The model card: the Markdown description a registered model version carries in MLflow.

    from flows.model_card import CardFacts, model_card, fit
    card = model_card("crawl2model", "3", eval_metrics, CardFacts(snapshot=..., funnel=wh.funnel(snapshot), ...))
    client.update_model_version(name, version, description=fit(card))

It says what the model was trained on (the snapshot's funnel, tokens, tokenizer vocab), what each
stage taught with this run's eval and audit numbers (every metric given, unknown ones too; missing
ones are left out), its limits, and how to load, chat with and serve it. The function is pure: the
register stage (flows/register.py) gathers the facts. Text from the config, paths, metric names and
the gate's verdict is escaped, so it cannot break the Markdown (a '|' does not split a table cell).
"""

from __future__ import annotations

import json
import os
import re
import shlex
from dataclasses import dataclass, field

from crawl2model.config import RegistryConfig
from flows.report import funnel_markdown

# What each known metric measures, by the stage that teaches it; shown in this order.
METRICS = {
    "eval/val_bpb": ("pretrain", "bits per byte on held-out crawl text (lower is better)"),
    "eval/val_loss": ("pretrain", "loss per token on the same text (lower is better)"),
    "eval/identity_rate": ("sft", "answers held-out questions about who it is with its configured name"),
    "eval/other_name_rate": ("sft", "gives another name (0 is right)"),
    "eval/taught_accuracy": ("sft", "answers questions about the facts taught in SFT correctly"),
    "eval/hallucination_rate": ("sft", "makes up an answer about never-taught facts (lower is better)"),
    "eval/refusal_rate": ("sft", "says \"I don't know\" about never-taught facts"),
    "eval/reward_accuracy": ("dpo", "prefers the chosen reply of held-out preference pairs"),
    "eval/problem_accuracy": ("rl", "solves held-out problems a program checks"),
    "eval/distinct_2": ("tuning", "distinct word 2-grams / all in its replies (higher: less repetitive)"),
    "eval/repetition_rate": ("tuning", "replies with a word 3-gram repeated 3+ times (lower is better)"),
    "eval/ended_rate": ("tuning", "replies that stop at their end token (higher is better)"),
    "audit/regurgitation_rate": ("audit", "train-document prefixes it continues verbatim (lower is better)"),
    "audit/canary_leaks": ("audit", "planted PII canaries it reproduces (must be 0)"),
    "audit/canaries_in_warehouse": ("audit", "canary secrets the scrubbed warehouse still holds"),
}
TUNING = {"sft": "SFT", "dpo": "DPO", "rl": "RL on verifiable rewards"}
DEFAULT_NAME = RegistryConfig().model_name
MAX_CHARS = 5000  # MLflow stores a model version's description in a VARCHAR(5000)


@dataclass
class CardFacts:
    """What the card says besides the metrics; empty fields are left out."""
    stages: list[str] = field(default_factory=list)     # the checkpoint's chain: pretrain, sft, dpo, rl
    snapshot: str = ""
    funnel: list[dict] = field(default_factory=list)    # rows of Warehouse.funnel
    tokens: dict[str, int] = field(default_factory=dict)  # split -> tokens in the shards
    vocab_size: int | None = None
    params: int | None = None
    context: int | None = None                           # tokens
    assistant: str = ""                                  # the configured name ...
    maker: str = ""                                      # ... and maker
    alias: str = "candidate"                             # the alias it got at registration
    decision: str = ""                                   # the promotion gate's verdict, short
    exports: list[str] = field(default_factory=list)     # exported files and folders (GGUF, HF)


def text(value) -> str:
    """Untrusted text inline or in a table cell: one line, Markdown and HTML characters escaped."""
    return re.sub(r"([\\`*_\[\]<>|#!~])", r"\\\1", " ".join(str(value).split()))


def code(value) -> str:
    """Untrusted text as inline code in a table cell: one line, '|' escaped, a fence longer than its backticks."""
    value = " ".join(str(value).split()).replace("|", "\\|")
    fence = "`" * (max((len(run) for run in re.findall("`+", value)), default=0) + 1)
    return f"{fence} {value} {fence}" if "`" in value else f"{fence}{value}{fence}"


def number(value) -> str:
    return f"{value:,.4g}" if isinstance(value, (int, float)) else text(value)


def _stage_table(metrics: dict) -> list[str]:
    known = [k for k in METRICS if k in metrics]
    rows = ["| stage | measures | metric | this run |", "|---|---|---|---:|"]
    for key in known + sorted(k for k in metrics if k not in METRICS):
        stage, meaning = METRICS.get(key, (key.split("/")[0] if "/" in key else "", ""))
        rows.append(f"| {text(stage)} | {meaning} | {code(key)} | {number(metrics[key])} |")
    return rows


def _usage(name: str, version: str, alias: str, exports: list[str]) -> list[str]:
    prompt = shlex.quote("What is your name?")
    models = "crawl2model models" + ("" if name == DEFAULT_NAME else f" --name {shlex.quote(name)}")
    override = "" if name == DEFAULT_NAME else f" {shlex.quote('registry.model_name=' + name)}"
    lines = ["```python", "import mlflow", "",
             f"model = mlflow.pyfunc.load_model({json.dumps(f'models:/{name}/{version}')})",
             "print(model.predict([\"What is your name?\"], params={\"max_new_tokens\": 64, \"temperature\": 0.0}))",
             "```", "", "```bash",
             f"{models} generate {prompt} --version {shlex.quote(version)}",
             f"crawl2model chat --alias {alias}{override}     # chat and serve take an alias; "
             "`crawl2model models list` shows which version each names",
             f"crawl2model serve --alias {alias} --port 8080{override}     # MLflow's model server: POST /invocations"]
    ggufs = sorted((p for p in exports if p.endswith(".gguf")), key=lambda p: not p.endswith("q8_0.gguf"))
    if ggufs:  # one file is enough to show how; the list below has them all
        lines += [f"crawl2model chat --gguf {shlex.quote(ggufs[0])}",
                  f"crawl2model serve --gguf {shlex.quote(ggufs[0])}     # llama.cpp: /v1/chat/completions"]
    lines.append("```")
    if exports:
        folder = os.path.commonpath([os.path.dirname(p) for p in exports])
        lines += ["", f"Exported to {code(folder)}: " + ", ".join(code(os.path.relpath(p, folder)) for p in exports) +
                  " (GGUF for llama.cpp, an Ollama `.Modelfile` beside each, also in this version's run artifacts "
                  "under `exports/`; `hf` for transformers)."]
    return lines


def model_card(name: str, version: str, metrics: dict, facts: CardFacts | None = None) -> str:
    """The card of registered version `version` of model `name`, with this run's eval/audit `metrics`."""
    f = facts or CardFacts()
    size = f"{f.params / 1e6:.1f}M-parameter" if f.params else "small"
    context = f", {f.context}-token context" if f.context else ""
    tokens = sum(f.tokens.values())
    history = ", then ".join(["pretrained on the crawl", *(TUNING.get(s, text(s)) for s in f.stages if s != "pretrain")])
    parts = [f"# {text(name)} version {text(version)}", "",
             f"A {size} Llama-style language model{context}, made by crawl2model from a web crawl: {history}. "
             "The numbers below are this run's, on held-out items never trained on.", ""]
    if f.decision:
        parts += [f"At registration: {text(f.decision)} (alias `{text(f.alias)}`; the gate's reasons are the "
                  "version's tag `gate.decision`).", ""]

    parts += ["## Trained on", ""]
    data = [f"snapshot {code(f.snapshot)} of the warehouse" if f.snapshot else "",
            " and ".join(f"{n:,} {split} tokens" for split, n in f.tokens.items()),
            f"a byte-level BPE tokenizer with a vocabulary of {f.vocab_size:,}" if f.vocab_size else ""]
    parts += [("; ".join(d for d in data if d) or "not recorded") + ".", ""]
    if f.funnel:
        parts += ["Documents in and out of each curation stage:", "", funnel_markdown(f.funnel)]

    parts += ["## What each stage taught", ""]
    if f.assistant:
        probed = "eval/refusal_rate" in metrics or "eval/hallucination_rate" in metrics
        parts += [f"SFT taught it to answer as {text(f.assistant)}" + (f", made by {text(f.maker)}" if f.maker else "")
                  + ("; a second SFT pass, to say \"I don't know\" where a probe found it wrong or unsure" if probed
                     else "") + ".", ""]
    parts += _stage_table(metrics) if metrics else ["No eval metrics were recorded."]

    parts += ["", "## Limits", "",
              f"- A {size} model trained for minutes on " + (f"{tokens:,} tokens of " if tokens else "") +
              "one small crawl: it writes fluent-looking text but knows little. It is not a source of facts "
              "beyond the crawl and the facts taught in SFT, and it can be confidently wrong.",
              "- It says \"I don't know\" only for the kind of question its knowledge probe covered; about "
              "anything else it may make up an answer.",
              "- Its name and maker come from tuning conversations; it had no safety tuning beyond PII scrubbing of "
              "the data and the audits above. The eval sets are small: a few points are noise.",
              "", "## Use it", "", *_usage(name, version, f.alias, f.exports)]
    return "\n".join(parts) + "\n"


def fit(card: str, limit: int = MAX_CHARS) -> str:
    """The card cut at a line to at most `limit` characters (a code block left open is closed), saying so."""
    if len(card) <= limit:
        return card
    note = "\n\n(cut to MLflow's description limit: the whole card is the register run's artifact model_card.md)\n"
    head = card[:card.rfind("\n", 0, limit - len(note) - 4)]
    if head.count("```") % 2:
        head += "\n```"
    return head + note
