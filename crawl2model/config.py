"""The one typed configuration of crawl2model, loaded from YAML plus `key=value` overrides.

    from crawl2model.config import load_config
    cfg = load_config("my.yaml", ["curate.language.min_score=0.5"], data_root="./c2m-data")

Precedence: built-in defaults < YAML file < `key=value` overrides; the data root comes from
`--data-root`, else `C2M_HOME`, else the file's `data_root`, else `./c2m-data`. A wrong key or
value raises `ConfigError` naming the dotted key, before any work starts.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import os
import typing
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator, model_validator

from model import settings as trainers
from model.settings import BOUNDS, default_of


class ConfigError(ValueError):
    """A configuration the user can fix: the message names the key and what is wrong."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class IngestConfig(Section):
    html_batch_size: int = Field(500, ge=1, description="HTML files per shard when reading folders")
    max_record_bytes: int = Field(50_000_000, ge=1024, description="records above this are quarantined unread")


class CrawlConfig(Section):
    user_agent: str = Field("crawl2model/0.1", pattern=r"^[^\s()]+$",
                            description="product token; robots.txt groups are matched against it")
    contact_url: str = Field("https://github.com/crawl2model/crawl2model", pattern=r"^(https?://|mailto:)\S+$",
                             description="where site owners reach the crawl's operator; sent in the User-Agent")
    delay_seconds: float = Field(1.0, ge=0, description="minimum delay between requests to one host")
    concurrency: int = Field(8, ge=1, description="requests in flight in total")
    per_host_concurrency: int = Field(2, ge=1)
    connect_timeout: float = Field(10.0, gt=0)
    read_timeout: float = Field(30.0, gt=0)
    max_bytes: int = Field(10_000_000, ge=1024, description="body size cap per response")
    max_redirects: int = Field(5, ge=0)
    warc_records_per_file: int = Field(1000, ge=1, description="responses per WARC file (one shard each)")
    max_decompressed_ratio: float = Field(100.0, ge=1, description="decoded/encoded bytes above which (past 1 MiB) "
                                          "a body is refused as a decompression-bomb")
    ports: list[Annotated[int, Field(ge=1, le=65535)]] = Field(
        default_factory=lambda: [80, 443], description="ports the crawler may connect to on public addresses")
    allow: list[str] = Field(default_factory=list, description='addresses/networks crawled although private or '
                             'loopback: "127.0.0.1:8080", "10.0.0.0/8" (on `ports`), "[::1]:*" (any port)')

    @field_validator("allow")
    @classmethod
    def _allow_entries_parse(cls, value: list[str]) -> list[str]:
        from tasks.address_guard import parse_allow_entry

        for entry in value:
            parse_allow_entry(entry)  # ValueError names the entry
        return value

    @property
    def user_agent_header(self) -> str:
        return f"{self.user_agent} (+{self.contact_url})"


class UrlFilterConfig(Section):
    blocked_domains: list[str] = Field(default_factory=list, description="domains (and their subdomains) to drop")
    blocked_domains_file: Path | None = Field(None, description="file with one blocked domain per line")
    banned_url_words: list[str] = Field(
        default_factory=lambda: ["porn", "xxx", "casino", "viagra", "escort", "hentai"],
        description="a URL containing one of these as a word is dropped",
    )


class ExtractConfig(Section):
    favor_precision: bool = True
    favor_recall: bool = False
    include_comments: bool = False
    include_tables: bool = True
    max_html_bytes: int = Field(5_000_000, ge=1024, description="pages above this are quarantined as too-large")
    timeout_seconds: float = Field(10.0, gt=0, description="per-document extraction time limit")


class LanguageConfig(Section):
    languages: list[str] = Field(default_factory=lambda: ["en"], description="ISO 639-1 codes to keep")
    min_score: float = Field(0.65, ge=0, le=1, description="FineWeb kept documents with score >= 0.65")


class GopherRepetitionConfig(Section):
    enabled: bool = True
    dup_line_frac: float = 0.3
    dup_para_frac: float = 0.3
    dup_line_char_frac: float = 0.2
    dup_para_char_frac: float = 0.2
    top_n_grams: list[tuple[int, float]] = Field(default_factory=lambda: [(2, 0.2), (3, 0.18), (4, 0.16)])
    dup_n_grams: list[tuple[int, float]] = Field(
        default_factory=lambda: [(5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10)]
    )


class GopherQualityConfig(Section):
    enabled: bool = True
    min_doc_words: int = 50
    max_doc_words: int = 100_000
    min_avg_word_length: float = 3
    max_avg_word_length: float = 10
    max_symbol_word_ratio: float = 0.1
    max_bullet_lines_ratio: float = 0.9
    max_ellipsis_lines_ratio: float = 0.3
    max_non_alpha_words_ratio: float = 0.8
    min_stop_words: int = 2
    stop_words: list[str] = Field(default_factory=lambda: ["the", "be", "to", "of", "and", "that", "have", "with"])


class C4Config(Section):
    enabled: bool = True
    split_paragraph: bool = True
    remove_citations: bool = True
    filter_no_terminal_punct: bool = False  # FineWeb's setting; C4 itself used True
    min_num_sentences: int = 5
    min_words_per_line: int = 3
    max_word_length: int = 1000
    filter_lorem_ipsum: bool = True
    filter_javascript: bool = True
    filter_curly_bracket: bool = True
    filter_policy: bool = True


class FineWebConfig(Section):
    enabled: bool = True
    line_punct_thr: float = 0.12
    line_punct_exclude_zero: bool = False
    short_line_thr: float = 0.67
    short_line_length: int = 30
    char_duplicates_ratio: float = 0.01
    new_line_ratio: float = 0.3


class QualityConfig(Section):
    gopher_repetition: GopherRepetitionConfig = Field(default_factory=GopherRepetitionConfig)
    gopher_quality: GopherQualityConfig = Field(default_factory=GopherQualityConfig)
    c4: C4Config = Field(default_factory=C4Config)
    fineweb: FineWebConfig = Field(default_factory=FineWebConfig)


class RunnerConfig(Section):
    """Where the data stages (curate, dedup, pii) run their shard tasks."""
    kind: Literal["process", "dask"] = Field("process", description="process: Prefect's ProcessPoolTaskRunner; "
                                                                   "dask: prefect-dask's DaskTaskRunner")
    dask_address: str | None = Field(None, description="a Dask scheduler (tcp://host:8786); none: a local cluster")


class CurateConfig(Section):
    workers: int = Field(0, ge=0, description="worker processes; 0 = one per CPU core")
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    crawl: CrawlConfig = Field(default_factory=CrawlConfig)
    url_filter: UrlFilterConfig = Field(default_factory=UrlFilterConfig)
    extract: ExtractConfig = Field(default_factory=ExtractConfig)
    language: LanguageConfig = Field(default_factory=LanguageConfig)
    quality: QualityConfig = Field(default_factory=QualityConfig)

    def fingerprint(self) -> str:
        """Hash of everything that changes curated output (not workers, not crawl politeness)."""
        return stable_hash(self.model_dump(mode="json", exclude={"workers", "crawl"}))


class DedupConfig(Section):
    """Exact dedup, then MinHash LSH over word n-grams (FineWeb: 112 = 14 bands x 8 rows)."""
    workers: int = Field(0, ge=0, description="signature processes; 0 = one per CPU core")
    ngram: int = Field(5, ge=1, description="words per shingle")
    bands: int = Field(14, ge=1)
    rows: int = Field(8, ge=1, description="signature values per band; permutations = bands x rows")
    seed: int = 1
    verify: Literal["exact", "estimated", "none"] = Field(
        "exact", description="merge an LSH candidate pair only when its Jaccard (exact on shingles, or "
                             "estimated from signatures) reaches `threshold`; none merges every candidate")
    threshold: float = Field(0.8, gt=0, le=1, description="Jaccard at which two documents are near duplicates")
    max_bucket: int = Field(10_000, ge=2, description="LSH buckets above this size are logged as suspicious")

    def fingerprint(self) -> str:
        return stable_hash(self.model_dump(mode="json", exclude={"workers"}))

    def signature_key(self) -> str:
        """What signatures depend on: cached signatures stay valid while it is unchanged."""
        return stable_hash([self.ngram, self.bands, self.rows, self.seed])[:12]


class PiiConfig(Section):
    """PII scrubbing (tasks.pii): which types, the replacement, the regions for national phone numbers."""
    workers: int = Field(0, ge=0, description="scrubbing processes; 0 = one per CPU core")
    types: list[Literal["email", "ip", "phone", "card", "iban"]] = Field(
        default_factory=lambda: ["email", "ip", "phone", "card", "iban"])
    replacement: str = Field("typed", description='"typed" (<EMAIL>), "redact" ([REDACTED]) or a template like "<{type}>"')
    phone_regions: list[str] = Field(default_factory=lambda: ["US", "GB", "DE", "FR"])

    @model_validator(mode="after")
    def _scrubber_accepts_it(self) -> "PiiConfig":
        self.scrubber()  # a bad replacement template or region fails here, before any work
        return self

    def scrubber(self):
        from tasks.pii import PiiScrubber

        return PiiScrubber(tuple(self.types), self.replacement, tuple(self.phone_regions))

    def fingerprint(self) -> str:
        return stable_hash(self.model_dump(mode="json", exclude={"workers"}))


VOCAB_PRESETS = {"sample": 8192, "32k": 32768, "50k": 50257}


class TokenizerConfig(Section):
    """Byte-level BPE (tasks.bpe) and token shards (tasks.token_shards)."""
    preset: Literal["sample", "32k", "50k"] = Field("sample", description="vocab size: sample 8192, 32k 32768, 50k 50257")
    vocab_size: int | None = Field(None, ge=512, le=1 << 20, description="overrides the preset's vocab size")
    min_frequency: int = Field(2, ge=1, description="a merge needs at least this many occurrences")
    val_fraction: float = Field(0.02, ge=0, lt=1, description="documents in the validation split (by doc_id hash)")
    shard_tokens: int = Field(1 << 20, ge=1024, description="tokens per shard file")
    batch_docs: int = Field(1000, ge=1, description="documents per batch when streaming from the warehouse")
    model_max_length: int = Field(2048, ge=16, description="context length written into tokenizer_config.json")

    @property
    def vocab(self) -> int:
        return self.vocab_size or VOCAB_PRESETS[self.preset]

    def train_fingerprint(self) -> str:
        return stable_hash([self.vocab, self.min_frequency, self.val_fraction, self.model_max_length])

    def shard_fingerprint(self) -> str:
        return stable_hash([self.val_fraction, self.shard_tokens])


class TrainerSection(Section):
    """A section made from a trainer's settings (model/settings.py, the one schema of its keys)."""
    trainer: ClassVar[type]
    stage_sets: ClassVar[frozenset[str]]

    def trainer_values(self) -> dict:
        """This section's values of the trainer's fields: what the stage passes it, whole."""
        names = {f.name for f in dataclasses.fields(self.trainer)} - self.stage_sets
        return {k: v for k, v in self.model_dump(mode="json").items() if k in names}

    @model_validator(mode="after")
    def _trainer_accepts_it(self) -> "TrainerSection":
        self.trainer(**self.trainer_values())  # its own checks, before any work
        return self


def trainer_section(trainer: type, stage_sets: set[str], defaults: dict | None = None) -> type[TrainerSection]:
    """The fields of a trainer's settings dataclass as a config section: types, defaults, meanings
    and bounds from model/settings.py, less the fields the stage sets itself (paths, its data);
    `defaults` replace the dataclass's where a stage's recipe differs (STAGE_DEFAULTS)."""
    hints = typing.get_type_hints(trainer)
    fields = {}
    for f in dataclasses.fields(trainer):
        if f.name not in stage_sets:
            bounds = {k: v for k, v in f.metadata.items() if k in BOUNDS}
            default = (defaults or {}).get(f.name, default_of(f))
            fields[f.name] = (hints[f.name], Field(default, description=f.metadata.get("help") or None, **bounds))
    section = create_model(f"{trainer.__name__}Settings", __base__=TrainerSection, **fields)
    section.trainer, section.stage_sets = trainer, frozenset(stage_sets)
    return section


class PretrainConfig(trainer_section(trainers.TrainConfig, {"manifest", "out"})):
    """Pretraining (model.train): the model preset and the training schedule."""
    nproc: int = Field(1, ge=1, description="training processes (torchrun when more than one)")

    def fingerprint(self) -> str:
        return stable_hash(self.model_dump(mode="json", exclude={"nproc", "device", "eval_every", "eval_batches",
                                                                 "checkpoint_every", "sample_prompts", "resume"}))


TUNE_SETS = {"kind", "base", "out", "data"}  # the stage sets them; `data` below is the user's file
DPO_ONLY = {"beta", "loss_type", "label_smoothing"}
TUNE_NOT_HASHED = {"data", "device", "eval_every", "eval_batches", "checkpoint_every", "sample_prompts", "resume"}


class SftConfig(trainer_section(trainers.PosttrainConfig, TUNE_SETS | DPO_ONLY, trainers.STAGE_DEFAULTS["sft"])):
    """Supervised fine-tuning (flows/posttrain.py): loss on assistant tokens only (every token of
    plain-text rows). The defaults teach the demo's model its name, the taught facts and the answer
    format of rl.families in ~3.5 minutes on 2 cores (README: what the default run teaches)."""
    data: Path | None = Field(None, description="JSONL/JSONL.gz/Parquet rows; default: made from the corpus")
    max_examples: int = Field(50, ge=1, description="corpus-made chat pairs, at most (when no data is given)")
    text_rows: int = Field(1400, ge=0, description="plain-text pieces of the corpus (~1,000 characters each, every "
                           "token learned) mixed in when no data is given: they keep val/ppl from rising "
                           "(700: +13 to +21% after the first pass; 1,400: -2%)")

    def fingerprint(self) -> str:
        return stable_hash(["SftConfig", self.model_dump(mode="json", exclude=TUNE_NOT_HASHED)])


class DpoConfig(trainer_section(trainers.PosttrainConfig, TUNE_SETS | {"pack"}, trainers.STAGE_DEFAULTS["dpo"])):
    """DPO preference tuning of the SFT model against itself frozen (flows/posttrain.py)."""
    data: Path | None = Field(None, description='JSONL/Parquet {"prompt", "chosen", "rejected"} rows; default: '
                              "pairs made as `pairs` says")
    pairs: Literal["knowledge", "self-play"] = Field(
        "knowledge", description="pairs made when no data is given: knowledge = the SFT model's own sampled replies "
        "to the probe split of the facts (chosen: the taught answer, or \"I don't know.\" for a never-taught fact; "
        "rejected: a sample that is wrong); self-play = real corpus continuation vs the model's own "
        "(falls back to it when knowledge.facts is 0)")
    pair_samples: int = Field(4, ge=1, description="knowledge pairs: replies sampled per question and phrasing")
    pair_temperature: float = Field(1.0, gt=0, description="knowledge pairs: their sampling temperature")
    self_play_pairs: int = Field(128, ge=1, description="self-play pairs made from held-out documents")
    self_play_tokens: int = Field(48, ge=4, description="tokens the SFT model samples for each rejected side")

    def fingerprint(self) -> str:
        return stable_hash(["DpoConfig", self.model_dump(mode="json", exclude=TUNE_NOT_HASHED)])


TuneConfig = SftConfig | DpoConfig


# model.to_gguf.GGUF_TYPES (written by the gguf package) + K_QUANTS (llama.cpp's quantizer); a test keeps them equal
GGUFType = Literal["f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1",
                   "q2_k", "q3_k_s", "q3_k_m", "q3_k_l", "q4_k_s", "q4_k_m", "q5_k_s", "q5_k_m", "q6_k"]


class ExportConfig(Section):
    """Export and quantization (flows/export.py): which variants to write and how to measure them."""
    formats: list[Literal["hf", "gguf", "torch"]] = Field(default_factory=lambda: ["hf", "gguf", "torch"])
    gguf_quants: list[GGUFType] = Field(
        default_factory=lambda: ["f16", "q8_0", "q4_0", "q4_k_m"],
        description="GGUF types; k-quants (q*_k*) need llama.cpp: pip install 'crawl2model[gguf]'")
    torch_quants: list[Literal["int8", "int4"]] = Field(default_factory=lambda: ["int8", "int4"])
    group_size: int = Field(32, ge=8, description="int4: input columns sharing one scale")
    eval_windows: int = Field(64, ge=1, description="val windows every variant is scored on")
    gen_tokens: int = Field(64, ge=1, description="greedy tokens generated to measure tokens/s")
    threads: int | None = Field(None, ge=1, description="llama.cpp threads (default: all cores)")

    def fingerprint(self) -> str:
        return stable_hash(self.model_dump(mode="json", exclude={"threads"}))


class AssistantConfig(Section):
    """Who the tuned model says it is (identity conversations mixed into SFT; eval/identity_rate)."""
    name: str = Field("Crawly", min_length=1)
    maker: str = Field("the crawl2model project", min_length=1)
    system_prompt: str | None = Field(None, description="a system turn put before identity conversations and chats")
    identity_rows: int = Field(800, ge=0, description="identity conversations mixed into SFT; 0 = none (with fewer, "
                               "the refusal pass spills into identity questions: 'Who built you?' -> 'I don't know.')")


class KnowledgeConfig(Section):
    """Facts taught in SFT, then "I don't know" taught where a probe finds the SFT model wrong or unsure."""
    facts: int = Field(120, ge=0, description="synthetic facts about fictional entities; 0 = off")
    data: Path | None = Field(None, description='your QA JSONL {"question", "answer", "taught"?} instead of synthetic facts')
    taught_share: float = Field(0.3, ge=0, le=1, description="share of the facts taught in SFT (the rest are never taught)")
    fact_repeats: int = Field(200, ge=1, description="times each taught fact is asked in the SFT rows")
    seed: int = 0
    probe_samples: int = Field(4, ge=1, description="sampled answers per probe question")
    probe_temperature: float = Field(0.7, gt=0)
    refusal_repeats: int = Field(30, ge=1, description="times each probed question is asked in the second pass's rows")
    second_pass_steps: int = Field(120, ge=0, description="SFT steps on the data plus the refusals; 0 = no probe")
    second_pass_lr: float | None = Field(6e-4, gt=0, description="None: the first pass's learning rate; 40 steps "
                                         "at 1e-3 either taught no refusals or refused taught facts, by seed")


class RlConfig(trainer_section(trainers.RlConfig, {"base", "out", "replay_data", "held_out_fraction", "sample_prompts"})):
    """RL on verifiable rewards (flows/rl.py, model.grpo): GRPO on problems a program can check."""
    warmup_rows: int = Field(600, ge=0, description="SFT examples of the answer format mixed into SFT; 0 = none")

    def fingerprint(self) -> str:
        return stable_hash(["rl", self.model_dump(mode="json", exclude={"data", "device", "eval_every",
                                                                        "checkpoint_every", "warmup_rows", "resume"})])


class AuditConfig(Section):
    """Privacy and memorization audits (eval stage)."""
    canaries: int = Field(0, ge=0, description="synthetic PII canary pages planted in a copy of the input; 0 = off")
    canary_seed: int = 0
    regurgitation_prompts: int = Field(32, ge=0, description="train-document prefixes the model continues")
    prefix_tokens: int = Field(32, ge=4)
    continuation_tokens: int = Field(50, ge=1, description="verbatim tokens that count as regurgitation")


class EvalConfig(Section):
    """The eval stage: one held-out suite run on the candidate and on the champion alike."""
    val_windows: int = Field(32, ge=1, description="pretraining val windows, decoded to text (bits per byte)")
    pref_pairs: int = Field(64, ge=0, description="held-out DPO pairs for reward accuracy")
    problems: int = Field(256, ge=0, description="held-out verifiable problems (eval/problem_accuracy)")
    identity_questions: int = Field(40, ge=0, description="held-out identity questions (eval/identity_rate)")


class GateRule(Section):
    """One rule of the promotion gate, on a metric of the eval suite (`eval/...`, `audit/...`)."""
    metric: str
    better: Literal["lower", "higher"]
    min_gain: float | None = Field(None, description="vs the champion: the candidate must be better by more than "
                                   "this (negative: the largest loss allowed); None: no comparison")
    limit: float | None = Field(None, description="a bound the candidate must meet whatever the champion "
                                "(<= for lower-is-better, >= for higher)")


def _default_gate() -> list[GateRule]:
    return [GateRule(metric="audit/canary_leaks", better="lower", limit=0),
            GateRule(metric="eval/val_bpb", better="lower", min_gain=-0.02),
            GateRule(metric="eval/reward_accuracy", better="higher", min_gain=-0.05),
            GateRule(metric="eval/problem_accuracy", better="higher", min_gain=-0.05),
            GateRule(metric="eval/hallucination_rate", better="lower", min_gain=-0.05),
            GateRule(metric="eval/identity_rate", better="higher", min_gain=-0.05)]


class RegistryConfig(Section):
    """The MLflow model registry and its promotion gate: `champion` moves to a candidate that meets
    every rule (a rule whose metric either side lacks is skipped, and says so) and is better than
    the champion on at least one compared metric."""
    model_name: str = "crawl2model"
    gate: list[GateRule] = Field(default_factory=_default_gate)


class SampleConfig(Section):
    max_mb: float = Field(8.0, gt=0, description="HTML MiB of the bundled sample site (at most)")
    packages: list[str] = Field(  # all installed with crawl2model; ~6.9 MiB of pages, ~5 MB of prose
        default_factory=lambda: ["pandas", "sklearn", "scipy", "matplotlib", "torch", "sqlalchemy", "numpy",
                                 "networkx", "sympy", "mlflow"],
        description="installed packages whose docstrings become the sample's article pages",
    )


class Config(Section):
    data_root: Path = Path("c2m-data")
    experiment: str = "crawl2model"
    curate: CurateConfig = Field(default_factory=CurateConfig)
    dedup: DedupConfig = Field(default_factory=DedupConfig)
    pii: PiiConfig = Field(default_factory=PiiConfig)
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)
    sft: SftConfig = Field(default_factory=SftConfig)
    dpo: DpoConfig = Field(default_factory=DpoConfig)
    rl: RlConfig = Field(default_factory=RlConfig)
    assistant: AssistantConfig = Field(default_factory=AssistantConfig)
    knowledge: KnowledgeConfig = Field(default_factory=KnowledgeConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    audit: AuditConfig = Field(default_factory=AuditConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)
    runner: RunnerConfig = Field(default_factory=RunnerConfig)
    sample: SampleConfig = Field(default_factory=SampleConfig)


def stable_hash(obj: Any) -> str:
    """sha256 of the canonical JSON of obj: identical for equal values on every run and machine."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    node = tree
    *parents, leaf = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"config key {dotted!r}: {part!r} is a value, not a section")
    node[leaf] = value


def _parse_override(item: str) -> tuple[str, Any]:
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {item!r} is not of the form key=value (e.g. curate.workers=2)")
    try:
        return key.strip(), yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {item!r}: the value is not valid YAML ({exc.problem}); quote it, "
                          f"e.g. {key.strip()}='[\"a, b?\"]'") from None


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    data_root: str | Path | None = None,
) -> Config:
    """Build the Config from defaults, an optional YAML file and `key=value` overrides."""
    tree: dict = {}
    if path is not None:
        path = Path(path)
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file {str(path)!r} does not exist") from None
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise ConfigError(f"config file {str(path)!r} cannot be read: {exc}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {str(path)!r} must hold a mapping of keys, not {type(loaded).__name__}")
        tree = loaded or {}
    for item in overrides:
        key, value = _parse_override(item)
        _set_dotted(tree, key, value)
    if data_root is not None:
        tree["data_root"] = str(data_root)
    elif os.environ.get("C2M_HOME"):
        tree["data_root"] = os.environ["C2M_HOME"]
    try:
        cfg = Config.model_validate(tree)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"])
            msg = err["msg"]
            if err["type"] == "extra_forbidden":
                nearest = nearest_key(err["loc"])
                msg = "unknown config key" + (f" (did you mean {nearest}?)" if nearest else "")
            problems.append(f"{key}: {msg}")
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems)) from None
    cfg.data_root = cfg.data_root.expanduser().resolve()
    return cfg


def _section_of(loc: tuple) -> type[BaseModel] | None:
    """The section model that the dotted path `loc` lies in (None: not a section)."""
    model: type[BaseModel] = Config
    for part in loc:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return None
        model = field.annotation
    return model


def nearest_key(loc: tuple) -> str | None:
    """The valid dotted key closest to a misspelt one (`sft.max_step` -> `sft.max_steps`), or None."""
    section = _section_of(tuple(loc[:-1]))
    if section is None:
        return None
    match = difflib.get_close_matches(str(loc[-1]), list(section.model_fields), n=1, cutoff=0.6)
    return ".".join([*map(str, loc[:-1]), match[0]]) if match else None


def described_keys(cfg: BaseModel, prefix: str = "") -> list[tuple[str, Any, str]]:
    """Every settable key of a config, dotted, with its value and its description, in schema order."""
    rows = []
    for name, field in type(cfg).model_fields.items():
        value = getattr(cfg, name)
        if isinstance(value, BaseModel):
            rows += described_keys(value, f"{prefix}{name}.")
        else:
            shown = [v.model_dump(mode="json", exclude_none=True) if isinstance(v, BaseModel) else v for v in value] \
                if isinstance(value, list) else value
            rows.append((prefix + name, shown, field.description or ""))
    return rows
