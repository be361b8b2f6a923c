"""Config: YAML + key=value overrides, errors that name the key, data-root precedence."""

import pytest

from crawl2model.config import ConfigError, load_config


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
