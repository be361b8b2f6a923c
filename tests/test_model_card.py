"""The model card (flows/model_card.py) on hand-made inputs: this run's numbers, the funnel, how to load
the registered version, nothing about metrics not given, escaped untrusted text, MLflow's length limit.
The card on a real registered version: tests/test_registry.py."""

from __future__ import annotations

from flows.model_card import CardFacts, fit, model_card

FUNNEL = [{"stage": "ingest", "docs_in": 1210, "docs_out": 1203, "docs_dropped": 7, "docs_quarantined": 0,
           "bytes": 7_100_000, "seconds": 3.1},
          {"stage": "quality", "docs_in": 1203, "docs_out": 905, "docs_dropped": 290, "docs_quarantined": 8,
           "bytes": 4_900_000, "seconds": 2.0}]
EXPORTS = ["/data/exports/rl-1/gguf/model-f16.gguf", "/data/exports/rl-1/gguf/model-q8_0.gguf", "/data/exports/rl-1/hf"]


def facts(**changes) -> CardFacts:
    return CardFacts(**{"stages": ["pretrain", "sft", "dpo", "rl"], "snapshot": "snap-1", "funnel": FUNNEL,
                        "tokens": {"train": 689_402, "val": 35_118}, "vocab_size": 8192, "params": 5_308_672,
                        "context": 256, "assistant": "Crawly", "maker": "the crawl2model project", **changes})


def row(card: str, metric: str) -> str:
    return next(line for line in card.splitlines() if f"`{metric}`" in line)


def test_the_card_says_what_data_what_each_stage_taught_and_how_to_use_it():
    metrics = {"eval/identity_rate": 0.95, "eval/hallucination_rate": 0.29166, "eval/val_bpb": 1.87345,
               "audit/canary_leaks": 0.0, "eval/brand_new": 0.123456}
    card = model_card("crawl2model", "7", metrics, facts(exports=EXPORTS))

    assert row(card, "eval/identity_rate").endswith("| 0.95 |") and "who it is" in row(card, "eval/identity_rate")
    assert row(card, "eval/hallucination_rate").endswith("| 0.2917 |")
    assert row(card, "eval/val_bpb").startswith("| pretrain |") and row(card, "eval/val_bpb").endswith("| 1.873 |")
    assert row(card, "audit/canary_leaks").endswith("| 0 |")
    assert row(card, "eval/brand_new") == "| eval |  | `eval/brand_new` | 0.1235 |"  # unknown keys are shown too
    for missing in ("eval/taught_accuracy", "eval/refusal_rate", "eval/problem_accuracy", "eval/reward_accuracy"):
        assert missing not in card
    stages = card[card.index("## What each stage taught"):card.index("## Limits")]
    assert stages.index("eval/val_bpb") < stages.index("eval/identity_rate") < stages.index("audit/canary_leaks")

    assert "| ingest | 1210 | 1203 | 7 | 0 |" in card and "| quality | 1203 | 905 | 290 | 8 |" in card
    assert "689,402 train tokens and 35,118 val tokens" in card and "vocabulary of 8,192" in card
    assert "5.3M-parameter" in card and "then SFT, then DPO, then RL on verifiable rewards" in card
    assert "answer as Crawly, made by the crawl2model project" in card and "I don't know" in card

    assert 'mlflow.pyfunc.load_model("models:/crawl2model/7")' in card
    assert "crawl2model models generate 'What is your name?' --version 7" in card
    assert "crawl2model chat --alias candidate" in card and "crawl2model serve --alias candidate --port 8080" in card
    assert "crawl2model chat --gguf /data/exports/rl-1/gguf/model-q8_0.gguf" in card  # q8_0 shown first
    assert "Exported to `/data/exports/rl-1`: `gguf/model-f16.gguf`, `gguf/model-q8_0.gguf`, `hf` (" in card
    assert card.count("```") % 2 == 0


def test_a_bare_card_leaves_out_what_it_was_not_given():
    card = model_card("mine", "1", {"eval/val_bpb": 2.5}, CardFacts(stages=["pretrain", "sft"]))
    assert "then SFT." in card and "DPO" not in card
    assert "| stage | in | out |" not in card and "tokens" not in card.split("## Limits")[0]
    assert "--gguf" not in card and "Exported" not in card and "answer as" not in card
    # a model name other than the default: the commands say which model
    assert "crawl2model models --name mine generate" in card
    assert "crawl2model chat --alias candidate registry.model_name=mine" in card
    assert "No eval metrics" in model_card("mine", "1", {}, CardFacts())


def test_untrusted_text_does_not_break_the_markdown():
    card = model_card("crawl2model", "2", {"eval/odd|key": 1.0},
                      facts(assistant="Bob | <b>x</b>\n# heading", maker="*me*", alias="champion",
                            decision="promoted: a | b\n```"))
    assert row(card, "eval/odd\\|key").count(" | ") == 3  # four cells, the '|' in the key escaped
    assert "answer as Bob \\| \\<b\\>x\\</b\\> \\# heading, made by \\*me\\*" in card
    assert "\n#" not in card.replace("\n# crawl2model", "").replace("\n## ", "")  # no heading but the card's own
    assert card.count("```") % 2 == 0 and "crawl2model chat --alias champion" in card


def test_fit_cuts_a_long_card_at_a_line_and_closes_its_code_block():
    card = model_card("crawl2model", "3", {f"eval/m{i}": i / 7 for i in range(200)}, facts(exports=EXPORTS))
    assert len(card) > 5000 and fit(card, 10_000_000) == card
    cut = fit(card)
    assert len(cut) <= 5000 and cut.endswith("model_card.md)\n") and cut.count("```") % 2 == 0
    assert card.startswith(cut.split("\n\n(cut to")[0])
    tail = fit("a\n```bash\n" + "crawl2model chat\n" * 100, 200)
    assert len(tail) <= 200 and tail.count("```") == 2
