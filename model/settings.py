"""The trainers' settings, the one schema of each: pretraining (TrainConfig, model/train.py), SFT
and DPO (PosttrainConfig, model/posttrain.py) and GRPO (RlConfig, model/grpo.py). Each field
carries its type, default, meaning and bounds; the pipeline's config sections `pretrain`, `sft`,
`dpo` and `rl` are made from these dataclasses (crawl2model/config.py), so `crawl2model config
show` lists every field and `key=value` sets it. Torch-free: the config imports this module.

    from model.settings import TrainConfig, PosttrainConfig, RlConfig, STAGE_DEFAULTS
    TrainConfig(manifest="shards/x/manifest.json", out="checkpoints/run1", max_steps=20)
    PosttrainConfig.from_dict({**STAGE_DEFAULTS["sft"], "kind": "sft", "base": ..., "out": ..., "data": ...})

One trainer, one stage: TrainConfig's and RlConfig's defaults are the default run's. SFT and DPO
share PosttrainConfig: its own defaults are a plain start for a user's data, and STAGE_DEFAULTS
holds what the default run's `sft` and `dpo` stages use instead (the pipeline's section defaults).
Bounds are `ge`, `gt`, `le`, `lt` (pydantic's names); a `Literal[...]` type lists the values allowed.
"""

from __future__ import annotations

import operator
import typing
from dataclasses import MISSING, Field, dataclass, field, fields
from typing import Any, Literal

BOUNDS = {"ge": (operator.ge, ">="), "gt": (operator.gt, ">"), "le": (operator.le, "<="), "lt": (operator.lt, "<")}


def setting(default: Any = MISSING, help: str = "", **bounds: float) -> Any:
    """A config field with its meaning and bounds; a callable default is a factory (for lists, dicts)."""
    unknown = set(bounds) - set(BOUNDS)
    if unknown:
        raise TypeError(f"unknown bounds {sorted(unknown)}; known: {', '.join(BOUNDS)}")
    metadata = {"help": help, **bounds}
    if callable(default):
        return field(default_factory=default, metadata=metadata)
    return field(default=default, metadata=metadata)


def default_of(f: Field) -> Any:
    return f.default_factory() if f.default_factory is not MISSING else f.default


def check_settings(cfg: Any) -> None:
    """ValueError naming the first field of a trainer config outside its bounds or choices."""
    hints = typing.get_type_hints(type(cfg))
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if value is None:
            continue
        if typing.get_origin(hints[f.name]) is Literal and value not in typing.get_args(hints[f.name]):
            raise ValueError(f"{f.name} must be one of {', '.join(map(repr, typing.get_args(hints[f.name])))}, "
                             f"got {value!r}")
        for key, (holds, symbol) in BOUNDS.items():
            if key in f.metadata and not holds(value, f.metadata[key]):
                raise ValueError(f"{f.name} must be {symbol} {f.metadata[key]}, got {value!r}")


def from_known_fields(cls, values: dict):
    """cls(**values) for a dataclass, refusing unknown keys by name (a typo is an error, not ignored)."""
    known = {f.name for f in fields(cls)}
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields {sorted(unknown)}; known: {', '.join(sorted(known))}")
    return cls(**values)


class Settings:
    """Checked on creation; `from_dict` refuses unknown keys."""

    def __post_init__(self) -> None:
        check_settings(self)

    @classmethod
    def from_dict(cls, values: dict):
        return from_known_fields(cls, values)


Device = Literal["auto", "cpu", "cuda"]
Resume = Literal["auto", "never"]
Schedule = Literal["cosine", "wsd"]
LOSS_TYPES = ("sigmoid", "ipo")
LORA_TARGETS = ("wq", "wk", "wv", "wo", "w1", "w2", "w3")  # model.llama's Linear layers
# Peak learning rates for small models: (kind, LoRA?) -> lr. LoRA's low-rank updates start from
# zero and need a larger step; DPO moves a model that already answers, so it steps gently.
DEFAULT_LR = {("sft", False): 3e-4, ("sft", True): 2e-3, ("dpo", False): 1e-5, ("dpo", True): 1e-4}
DEFAULT_PROMPTS = ["What is this website about?", "Write two sentences about the internet."]


@dataclass
class TrainConfig(Settings):
    """Pretraining (model.train); the pipeline's `pretrain.*` keys."""
    manifest: str = setting("", "token shard manifest.json (the pipeline: the newest shards)")
    out: str = setting("", "folder for step-NNNNNN checkpoints (the pipeline: checkpoints/<id>)")
    # The default trains `small` on ~0.45M tokens, ~3/4 of a pass over the bundled sample, in ~3
    # minutes on 2 cores; SFT's corpus text rows go on from there (the default run's 12 minutes).
    preset: Literal["tiny", "small", "124m", "350m"] = setting("small", "model size (model/config.py)")
    model_overrides: dict = setting(dict, "ModelConfig fields that differ from the preset, e.g. {n_layers: 4}")
    seq_len: int | None = setting(None, "default: the preset's context length", ge=8)
    micro_batch: int = setting(16, "sequences per forward/backward per process", ge=1)
    tokens_per_step: int = setting(4096, "global batch in tokens (gradient accumulation makes up the rest)", ge=1)
    max_steps: int = setting(110, ge=1)
    lr: float = setting(3e-3, "peak learning rate", gt=0)
    min_lr_ratio: float = setting(0.1, "the rate decays to lr * this", ge=0, le=1)
    warmup_steps: int = setting(15, ge=0)
    schedule: Schedule = setting("cosine", "wsd: warmup, stable, then linear decay over decay_fraction")
    decay_fraction: float = setting(0.2, "wsd: the share of the steps spent decaying", gt=0, le=1)
    weight_decay: float = setting(0.1, "on matrices only", ge=0)
    beta1: float = setting(0.9, "AdamW", ge=0, lt=1)
    beta2: float = setting(0.95, "AdamW", ge=0, lt=1)
    grad_clip: float = setting(1.0, "gradient norm clip", gt=0)
    eval_every: int = setting(55, "val loss and samples: half way and at the end (each ~3.5 s on 2 cores)", ge=1)
    eval_batches: int = setting(20, ge=1)
    checkpoint_every: int = setting(55, ge=1)
    seed: int = setting(0)
    resume: Resume = setting("auto", "auto: from the latest complete checkpoint in `out`; never: start over")
    device: Device = setting("auto")
    compile: bool | None = setting(None, "torch.compile; default: on CUDA only")
    bf16: bool | None = setting(None, "bf16 autocast; default: on CUDA only")
    sample_prompts: list = setting(lambda: ["The ", "This function ", "Returns"],
                                   "continued at each evaluation: text (the manifest's tokenizer), or token id lists")


@dataclass
class PosttrainConfig(Settings):
    """SFT and DPO (model.posttrain); the pipeline's `sft.*` and `dpo.*` keys, with STAGE_DEFAULTS."""
    kind: Literal["sft", "dpo"] = setting("sft", "the pipeline sets it: its stage")
    base: str = setting("", "checkpoint to start from: pretrained (SFT) or SFT (DPO); the pipeline: the stage before")
    out: str = setting("", "folder for step-NNNNNN checkpoints (the pipeline: checkpoints/<stage>-<id>)")
    data: Any = setting("", "JSONL / JSONL.gz / Parquet files (model.chat_data formats), read in order")
    held_out_fraction: float = setting(0.1, "examples held out for eval metrics, by a hash of their content",
                                       ge=0, lt=1)
    max_steps: int = setting(60, ge=1)
    micro_batch: int = setting(8, "sequences (SFT, packed rows with pack) or pairs (DPO) per step", ge=1)
    grad_accumulation: int = setting(1, "micro-batches per optimizer step", ge=1)
    lr: float | None = setting(None, "default: SFT 3e-4, DPO 1e-5; with LoRA 2e-3, 1e-4", gt=0)
    min_lr_ratio: float = setting(0.1, "the rate decays to lr * this", ge=0, le=1)
    warmup_steps: int = setting(5, ge=0)
    schedule: Schedule = setting("cosine", "wsd: warmup, stable, then linear decay (model.train.learning_rate)")
    decay_fraction: float = setting(0.2, gt=0, le=1)
    weight_decay: float = setting(0.0, ge=0)
    beta1: float = setting(0.9, ge=0, lt=1)
    beta2: float = setting(0.95, ge=0, lt=1)
    grad_clip: float = setting(1.0, gt=0)
    seq_len: int | None = setting(None, "default: the base model's context length", ge=8)
    pack: bool = setting(False, "SFT: several examples per row (most rows are a few dozen tokens)")
    beta: float = setting(0.1, "DPO: strength of the pull towards the reference", gt=0)
    loss_type: Literal["sigmoid", "ipo"] = setting("sigmoid", "DPO loss")
    label_smoothing: float = setting(0.0, "DPO: conservative DPO (sigmoid only)", ge=0, lt=0.5)
    lora_rank: int = setting(0, "0: tune all weights; else LoRA adapters of this rank (peft)", ge=0)
    lora_alpha: float = setting(16, gt=0)
    lora_dropout: float = setting(0.0, ge=0, lt=1)
    lora_targets: list = setting(lambda: list(LORA_TARGETS), "model.llama Linear names that get adapters")
    eval_every: int = setting(20, ge=1)
    checkpoint_every: int = setting(20, ge=1)
    eval_batches: int = setting(10, "held-out and pretraining-val batches per evaluation", ge=1)
    seed: int = setting(0)
    sample_prompts: list = setting(lambda: list(DEFAULT_PROMPTS), "user turns answered before and after tuning")
    sample_tokens: int = setting(48, "reply tokens of the sample prompts", ge=1)
    resume: Resume = setting("auto", "auto: the latest checkpoint in `out`; never: start over")
    device: Device = setting("auto")
    bf16: bool | None = setting(None, "bf16 autocast; default: on CUDA only")

    def __post_init__(self) -> None:
        super().__post_init__()
        self.lora_targets = list(self.lora_targets)
        if self.lr is None:
            self.lr = DEFAULT_LR[(self.kind, self.lora_rank > 0)]


# What the default run's `sft` and `dpo` stages use where PosttrainConfig's defaults would not do
# (docs/experiments.md has how they were found); `crawl2model config show sft.` lists them.
STAGE_DEFAULTS = {
    "sft": {"max_steps": 280, "micro_batch": 6, "lr": 3e-3, "warmup_steps": 10, "pack": True, "eval_every": 280,
            "checkpoint_every": 140,
            "sample_prompts": ['Write the opening of an article titled "Reading a CSV file".',
                               "What is this website about?", "Continue this passage:\nThe function returns"]},
    "dpo": {"max_steps": 30, "micro_batch": 4, "lr": 5e-5,
            "sample_prompts": ['Write the opening of an article titled "Reading a CSV file".',
                               "What is this website about?", "Continue this passage:\nThe function returns"]},
}


@dataclass
class RlConfig(Settings):
    """GRPO on verifiable rewards (model.grpo); the pipeline's `rl.*` keys."""
    base: str = setting("", "checkpoint to tune (the SFT or DPO model); the pipeline: the DPO model")
    out: str = setting("", "folder for step-NNNNNN checkpoints (the pipeline: checkpoints/rl-<id>)")
    families: list = setting(lambda: ["category"], "built-in task families (model.verifiable.FAMILIES: category, "
                             "arithmetic, word_problems); category is sized to the demo's model, arithmetic needs "
                             "a longer-trained one (docs/experiments.md)")
    data: str | None = setting(None, 'JSONL {"prompt", "answer"} problems instead of the built-in ones')
    held_out_fraction: float = setting(0.2, "of the data's problems, by a hash of the prompt (the pipeline: "
                                       "the eval stage's share)", ge=0, lt=1)
    max_steps: int = setting(40, "the pipeline: 0 skips the stage (the DPO model goes on); 32 steps gained "
                             "+17.6 / +1.2 / +12.1 points on seeds 0 / 1 / 2, 40 steps +17.2 / +12.5 / +14.8", ge=0)
    prompts_per_step: int = setting(16, ge=1)
    group_size: int = setting(8, "completions sampled per prompt", ge=2)
    max_new_tokens: int = setting(16, "reply tokens (the worked arithmetic solutions need 48)", ge=4)
    temperature: float = setting(1.0, "sampling temperature (arithmetic from an SFT model at ~23%: 0.4-0.6 "
                                 "gained most, docs/experiments.md)", gt=0)
    top_k: int | None = setting(None, ge=1)
    lr: float = setting(3e-4, "category from the demo's model: 6e-4 gained +12 points but wore down its identity "
                        "and facts; 1e-3 collapsed to one answer", gt=0)
    warmup_steps: int = setting(0, ge=0)
    min_lr_ratio: float = setting(1.0, "1: a constant rate; below: cosine down to lr * it by the last step",
                                  gt=0, le=1)
    schedule: Schedule = setting("cosine")
    decay_fraction: float = setting(0.2, gt=0, le=1)
    weight_decay: float = setting(0.0, ge=0)
    beta1: float = setting(0.9, ge=0, lt=1)
    beta2: float = setting(0.99, ge=0, lt=1)
    grad_clip: float = setting(1.0, gt=0)
    clip_eps: float = setting(0.2, "PPO clip of the probability ratio", gt=0)
    kl_beta: float = setting(0.0, "KL penalty to the starting model; 0 holds no reference copy", ge=0)
    iterations: int = setting(1, "updates per batch of replies (PPO epochs, TRL's num_iterations)", ge=1)
    micro_batch: int = setting(32, "replies per forward/backward", ge=1)
    # SFT rows replayed each step (InstructGPT's PPO-ptx, with the SFT data): their next-token loss
    # times replay_coef joins the GRPO loss, so what RL does not reward (the assistant's name,
    # "I don't know", text) is not worn down by it. 0 rows or no replay_data: off
    replay_data: list = setting(list, "SFT data files replayed (the pipeline: the SFT model's own)")
    replay_rows: int = setting(4, "packed rows of the SFT model's data replayed each step (PPO-ptx); 0 = off", ge=0)
    replay_coef: float = setting(1.0, "weight of the replayed rows' loss", ge=0)
    format_reward: float = setting(0.1, "reward of a reply in the answer format, right or wrong", ge=0)
    heldout_problems: int = setting(256, "held-out problems scored during training", ge=1)
    eval_every: int = setting(20, "steps between held-out scorings (each ~2.5 s on 2 cores)", ge=1)
    checkpoint_every: int = setting(10, ge=1)
    seed: int = setting(0)
    sample_prompts: list | None = setting(None, "answered greedily at step 0 and at the end; None: two held-out "
                                          "problems")
    resume: Resume = setting("auto", "auto: the latest checkpoint in `out`; never: start over")
    device: Device = setting("auto")
