"""PII canaries (tasks.canaries): made deterministically, caught by the scrubber, and, through a real
pipeline run --until pii, curated and then scrubbed from the warehouse; with e-mail scrubbing
switched off, exactly the e-mail canaries leak."""

from __future__ import annotations

import re
import shutil

import pytest
from stdnum import luhn

from crawl2model.config import load_config
from tasks.canaries import KINDS, compact, load_canaries, make_canaries, page_html, plant_canaries, warehouse_leaks
from tasks.pii import PiiScrubber, is_card_number
from tests.conftest import query, shared


def test_make_canaries_is_deterministic_with_unique_secrets():
    canaries = make_canaries(300, seed=7)
    assert canaries == make_canaries(300, seed=7) and canaries != make_canaries(300, seed=8)
    assert [c.kind for c in canaries[:6]] == [*KINDS, *KINDS]
    assert len({compact(c.secret) for c in canaries}) == 300
    assert len({c.id for c in canaries}) == len({c.page for c in canaries}) == 300
    assert len({c.prefix for c in canaries}) == 300
    assert all(10 <= len(c.prefix.split()) <= 20 for c in canaries)
    for c in canaries:
        if c.kind == "card":
            digits = re.sub(r"\D", "", c.secret)
            assert luhn.is_valid(digits) and is_card_number(digits) and digits[:6] in ("400000", "555555")
        elif c.kind == "email":
            assert re.search(r"\.\d{6}@example\.(com|org|net)$", c.secret)


def test_every_canary_is_caught_by_the_scrubber():
    scrub = PiiScrubber()
    for c in make_canaries(300, seed=3):
        sentence = f"{c.prefix} {c.secret}."
        result = scrub(sentence)
        assert result.text == f"{c.prefix} <{c.kind.upper()}>.", c
        assert result.counts[c.kind] == 1 and sum(result.counts.values()) == 1, c
        # on its whole page too, and nothing else on the page is taken for PII
        page = scrub(page_html(c))
        assert c.secret not in page.text and page.counts[c.kind] == 1 and sum(page.counts.values()) == 1, c


def test_plant_canaries_writes_pages_and_manifest(tmp_path):
    canaries = make_canaries(4, seed=1)
    inputs = plant_canaries(["a.warc.gz"], canaries, tmp_path / "audit")
    assert inputs == ["a.warc.gz", str(tmp_path / "audit" / "pages")]
    assert sorted(p.name for p in (tmp_path / "audit" / "pages").iterdir()) == sorted(c.page for c in canaries)
    assert load_canaries(tmp_path / "audit") == canaries
    for c in canaries:
        text = (tmp_path / "audit" / "pages" / c.page).read_text(encoding="utf-8")
        assert f"{c.prefix} {c.secret}." in text.replace("&#x27;", "'")


@pytest.mark.slow
def test_canaries_survive_curation_and_are_scrubbed(tmp_path, data_root, cfg, prefect_server, monkeypatch):
    from flows.pipeline import run_pipeline
    from flows.scrub import run_scrub

    real = tmp_path / "real"
    real.mkdir()
    for path in sorted(shared("html", "articles").iterdir())[:3]:
        shutil.copy(path, real / path.name)
    canaries = make_canaries(6, seed=0)
    inputs = plant_canaries([str(real)], canaries, tmp_path / "audit")
    assert load_canaries(tmp_path / "audit") == canaries

    run_pipeline(inputs, cfg, until="pii", show_progress=False)  # the default config, 2 workers
    kept = dict(query(data_root, "select regexp_extract(url, '[^/]+$'), text from kept_documents"))
    # every canary page was curated (none dropped, none merged into another) and scrubbed in place
    assert {c.page for c in canaries} <= kept.keys(), query(data_root, "select url, stage, reason from rejections")
    for c in canaries:
        assert f"{c.prefix} <{c.kind.upper()}>." in kept[c.page]
    assert warehouse_leaks(data_root, canaries) == []
    # the check is not vacuous: the curated (unscrubbed) shard text holds every secret
    curated = " ".join(t for (t,) in query(data_root, f"select text from read_parquet('{data_root}/parquet/shards/*/"
                                                      "documents.parquet')"))
    assert all(c.secret in curated for c in canaries)

    # a deliberately unscrubbed canary: in a second data root with e-mail scrubbing off, exactly the
    # e-mail canaries leak. The root starts as a copy of the curated, deduplicated warehouse (paths in
    # it are relative), so only the pii stage runs again: a whole second pipeline costs ~25 s more.
    other = tmp_path / "unscrubbed"
    other.mkdir()
    shutil.copy(data_root / "warehouse.duckdb", other)
    shutil.copytree(data_root / "parquet", other / "parquet")
    monkeypatch.setenv("C2M_HOME", str(other))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{other / 'mlflow.db'}")
    no_email = load_config(overrides=["curate.workers=2", "pii.types=[ip,phone,card,iban]"], data_root=other)
    summary = run_scrub(no_email, show_progress=False)
    assert not summary.no_op and summary.totals["pii_email"] == 0 and summary.totals["pii_card"] >= 2
    assert warehouse_leaks(other, canaries) == [c.id for c in canaries if c.kind == "email"]
    assert warehouse_leaks(data_root, canaries) == []  # the first root is untouched
