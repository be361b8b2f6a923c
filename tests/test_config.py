"""Config: YAML + key=value overrides, errors that name the key (and the nearest valid one),
data-root precedence, and the trainers' sections made from their one schema (model/settings.py)."""

import dataclasses
import json

import pytest

from crawl2model.config import ConfigError, described_keys, load_config
from model.settings import STAGE_DEFAULTS, PosttrainConfig, RlConfig, TrainConfig


def test_defaults_follow_fineweb(tmp_path):
    cfg = load_config(data_root=tmp_path)
    assert cfg.curate.language.min_score == 0.65
    assert cfg.curate.quality.fineweb.line_punct_thr == 0.12
    assert cfg.curate.quality.fineweb.short_line_thr == 0.67
    assert cfg.data_root == tmp_path.resolve()


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("curate:\n  language:\n    languages: [en, de]\n    min_score: 0.5\n")
    cfg = load_config(path, ["curate.language.min_score=0.8", "curate.workers=3"], data_root=tmp_path)
    assert cfg.curate.language.languages == ["en", "de"]
    assert cfg.curate.language.min_score == 0.8
    assert cfg.curate.workers == 3


@pytest.mark.parametrize("override, named", [
    ("curate.langauge.min_score=0.5", "curate.langauge"),
    ("curate.language.min_score=high", "curate.language.min_score"),
    ("curate.language.min_score=1.5", "curate.language.min_score"),
    ("curate.workers=-1", "curate.workers"),
    ("pretrain.micro_batch=0", "pretrain.micro_batch"),        # a bound written once, in model/settings.py
    ("rl.schedule=linear", "rl.schedule"),
    ("sft.lora_dropout=1", "sft.lora_dropout"),
])
def test_bad_key_or_value_names_the_key(tmp_path, override, named):
    with pytest.raises(ConfigError) as err:
        load_config(overrides=[override], data_root=tmp_path)
    assert named in str(err.value)


def test_unreadable_config_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("curate: [1, 2\n")
    with pytest.raises(ConfigError, match="cannot be read"):
        load_config(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(listy)
    with pytest.raises(ConfigError, match="key=value"):
        load_config(overrides=["curate.workers"])


def test_data_root_precedence(tmp_path, monkeypatch):
    path = tmp_path / "c.yaml"
    path.write_text(f"data_root: {tmp_path / 'from-file'}\n")
    monkeypatch.delenv("C2M_HOME", raising=False)
    assert load_config(path).data_root == (tmp_path / "from-file").resolve()
    monkeypatch.setenv("C2M_HOME", str(tmp_path / "from-env"))
    assert load_config(path).data_root == (tmp_path / "from-env").resolve()
    assert load_config(path, data_root=tmp_path / "flag").data_root == (tmp_path / "flag").resolve()


def test_fingerprint_ignores_workers_but_not_filters(tmp_path):
    base = load_config(data_root=tmp_path).curate.fingerprint()
    assert load_config(overrides=["curate.workers=7"], data_root=tmp_path).curate.fingerprint() == base
    assert load_config(overrides=["curate.language.min_score=0.7"], data_root=tmp_path).curate.fingerprint() != base


@pytest.mark.parametrize("override, suggestion", [
    ("sft.max_step=3", "did you mean sft.max_steps?"),
    ("pretrian.lr=0.1", "did you mean pretrain?"),
    ("curate.language.min_scor=0.5", "did you mean curate.language.min_score?"),
])
def test_a_misspelt_key_names_the_nearest_valid_one(tmp_path, override, suggestion):
    with pytest.raises(ConfigError, match="unknown config key") as err:
        load_config(overrides=[override], data_root=tmp_path)
    assert suggestion in str(err.value)


@pytest.mark.parametrize("section, trainer, stage_defaults", [
    ("pretrain", TrainConfig, {}), ("sft", PosttrainConfig, STAGE_DEFAULTS["sft"]),
    ("dpo", PosttrainConfig, STAGE_DEFAULTS["dpo"]), ("rl", RlConfig, {}),
])
def test_each_trainer_section_is_its_schema_passed_whole(tmp_path, section, trainer, stage_defaults):
    """Every field of the trainer the stage does not set itself is a key of the section, with the
    trainer's default (or the stage's recipe), meaning and bounds; the section builds the trainer whole."""
    cfg = load_config(data_root=tmp_path)
    part = getattr(cfg, section)
    stage_sets = type(part).stage_sets
    values = part.trainer_values()
    for f in dataclasses.fields(trainer):
        if f.name in stage_sets:
            assert f.name not in values
            continue
        default = stage_defaults.get(f.name, f.default_factory() if f.default_factory is not dataclasses.MISSING
                                     else f.default)
        assert values[f.name] == default, f.name
        assert type(part).model_fields[f.name].description == (f.metadata["help"] or None), f.name
    assert dataclasses.asdict(trainer(**values)).items() >= values.items()


def test_every_listed_key_is_settable(tmp_path):
    """What `crawl2model config show` lists, each set back as key=value, loads to the same value."""
    cfg = load_config(data_root=tmp_path)
    rows = [(key, value) for key, value, _ in described_keys(cfg) if key != "data_root"]
    assert len(rows) > 200 and {"rl.beta2", "pretrain.min_lr_ratio", "sft.grad_clip", "dpo.beta"} <= dict(rows).keys()
    overrides = [f"{key}={json.dumps(value)}" for key, value in rows if not isinstance(value, (list, dict))]
    again = dict((k, v) for k, v, _ in described_keys(load_config(overrides=overrides, data_root=tmp_path)))
    assert all(again[key] == value for key, value in rows)
    changed = load_config(overrides=["rl.beta2=0.9", "pretrain.grad_clip=0.5"], data_root=tmp_path)
    assert changed.rl.trainer_values()["beta2"] == 0.9 and changed.pretrain.trainer_values()["grad_clip"] == 0.5
