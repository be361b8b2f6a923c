"""Ingest: every shared WARC case read or quarantined with its reason, stable shard keys."""

import gzip

import pytest

from tasks.ingest import InputError, list_input_files, plan_shards, read_shard, read_warc, resolve_inputs
from tasks.records import Page, Rejection
from tests.conftest import shared


def split(items):
    items = list(items)
    pages = [i for i in items if isinstance(i, Page)]
    rejections = [i for i in items if isinstance(i, Rejection)]
    return pages, rejections


def test_intact_warc_yields_every_response():
    pages, rejections = split(read_warc(str(shared("warc", "resiliparse-sample.warc.gz")), 50_000_000))
    assert len(pages) == 16 and not rejections  # 50 records, 16 of them responses
    assert all(p.url.startswith("http") and p.body and p.source.split("#")[1].isdigit() for p in pages)
    assert len({p.doc_id for p in pages}) == 16


def test_truncated_gzip_keeps_records_before_the_cut_and_says_so():
    pages, rejections = split(read_warc(str(shared("warc", "bad", "truncated-gzip.warc.gz")), 50_000_000))
    assert len(pages) == 7
    assert [r.reason for r in rejections] == ["truncated"] and rejections[0].quarantined


def test_truncated_record_is_quarantined_after_the_good_ones():
    pages, rejections = split(read_warc(str(shared("warc", "bad", "truncated-record.warc")), 50_000_000))
    assert len(pages) == 1
    assert [r.reason for r in rejections] == ["malformed-record"]


def test_gzip_named_file_that_is_not_gzip_is_read_by_sniffing():
    pages, rejections = split(read_warc(str(shared("warc", "bad", "malformed.warc.gz")), 50_000_000))
    assert len(pages) == 2 and not rejections


def test_wrong_chunk_sizes_are_decoded_best_effort():
    pages, rejections = split(read_warc(str(shared("warc", "bad", "wrong-chunks.warc.gz")), 50_000_000))
    assert len(pages) == 1 and b"Example Domain" in pages[0].body


def test_arc_file_is_unsupported_format():
    pages, rejections = split(read_warc(str(shared("warc", "bad", "legacy-format.arc.gz")), 50_000_000))
    assert not pages and [r.reason for r in rejections] == ["unsupported-format"]


def test_record_over_the_cap_is_quarantined_too_large():
    pages, rejections = split(read_warc(str(shared("warc", "resiliparse-sample.warc.gz")), 10_000))
    assert rejections and {r.reason for r in rejections} == {"too-large"}
    assert len(pages) + len(rejections) == 16


def test_gzipped_html_is_inflated_only_up_to_the_cap(tmp_path):
    page = tmp_path / "big.html.gz"
    page.write_bytes(gzip.compress(b"<p>" + b"a" * 5_000_000 + b"</p>"))
    shard = plan_shards([page], 10, "salt")[0]
    (rejection,) = read_shard(shard, max_record_bytes=100_000)
    assert rejection.reason == "too-large"


def test_shard_keys_depend_on_content_and_config_only(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for folder in (a, b):
        folder.mkdir()
        (folder / "x.html").write_text("<p>same</p>")
    key = lambda folder, salt="s": plan_shards(list_input_files(folder), 10, salt)[0].key
    assert key(a) == key(b)
    assert key(a) != key(a, "other-config")
    (b / "x.html").write_text("<p>changed</p>")
    assert key(a) != key(b)


def test_html_files_are_batched(tmp_path):
    for i in range(5):
        (tmp_path / f"{i}.html").write_text(f"<p>{i}</p>")
    (tmp_path / ".hidden.html").write_text("<p>hidden</p>")
    shards = plan_shards(list_input_files(tmp_path), 2, "s")
    assert [len(s.paths) for s in shards] == [2, 2, 1]


def test_resolve_inputs_errors_before_work(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        resolve_inputs([str(tmp_path / "nope.warc.gz")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="holds no files"):
        resolve_inputs([str(tmp_path / "empty")])
    urls = tmp_path / "urls.txt"
    urls.write_text("# list\nhttp://127.0.0.1:9/a\nhttp://127.0.0.1:9/b\n")
    resolved = resolve_inputs([str(urls), "https://example.org/x"])
    assert resolved.url_lists == [("urls.txt", ["http://127.0.0.1:9/a", "http://127.0.0.1:9/b"]),
                                  ("https://example.org/x", ["https://example.org/x"])]
