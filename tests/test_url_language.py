"""URL filter and language ID: each rule with a case that passes and one that is dropped."""

from crawl2model.config import LanguageConfig, UrlFilterConfig
from tasks.extract import Extractor
from tasks.ingest import read_html_file
from tasks.language import LanguageFilter
from tasks.records import Page
from tasks.url_filter import UrlFilter, domain_of
from tests.conftest import shared


def page(url, source="crawl.warc.gz#10"):
    return Page(url=url, source=source, body=b"<p>x</p>")


def verdict(check, url, **kw):
    rejection = check(page(url, **kw))
    return rejection.reason if rejection else None


def test_url_rules(tmp_path):
    blocklist = tmp_path / "block.txt"
    blocklist.write_text("# ads\nads.example\n")
    check = UrlFilter(UrlFilterConfig(blocked_domains=["bad.example"], blocked_domains_file=blocklist))
    assert verdict(check, "https://good.example/article") is None
    assert verdict(check, "ftp://good.example/file") == "not-http"
    assert verdict(check, "mailto:someone@good.example") == "not-http"
    assert verdict(check, "http:///nohost") == "invalid-url"
    assert verdict(check, "http://good.example:99999/") == "invalid-url"
    assert verdict(check, "http://bad.example/") == "blocked-domain"
    assert verdict(check, "http://www.bad.example/page") == "blocked-domain"
    assert verdict(check, "http://notbad.example/page") is None  # a suffix is not a subdomain
    assert verdict(check, "http://cdn.ads.example/x") == "blocked-domain"
    assert verdict(check, "http://good.example/free-casino-bonus") == "banned-word"
    assert verdict(check, "http://good.example/casinoroyale-review") is None  # words, not substrings
    assert verdict(check, "https://good.example/article") == "duplicate-url"


def test_local_files_pass_the_scheme_check():
    check = UrlFilter(UrlFilterConfig())
    assert verdict(check, "file:///data/page.html", source="/data/page.html") is None
    assert verdict(check, "file:///data/page.html", source="crawl.warc.gz#10") == "not-http"


def test_domain_of():
    assert domain_of("https://News.Example.COM./a?b") == "news.example.com"
    assert domain_of("not a url") == ""


def _text(name):
    (p,) = read_html_file(str(shared("html", "bad", name)), 10_000_000)
    return Extractor.__call__(Extractor(__import__("crawl2model.config").config.ExtractConfig()), p).text


def test_german_dropped_for_english_kept_when_configured():
    text = _text("german.html")
    lang, score, rejection = LanguageFilter(LanguageConfig())(text)
    assert lang == "de" and rejection.reason == "wrong-language"
    assert LanguageFilter(LanguageConfig(languages=["en", "de"]))(text)[2] is None


def test_low_score_is_dropped():
    text = _text("latin1-no-charset.html")  # French and English mixed
    lang, score, rejection = LanguageFilter(LanguageConfig(min_score=1.0))(text)
    assert rejection is not None and rejection.reason == "low-language-score"
    assert LanguageFilter(LanguageConfig(min_score=0.5))(text)[2] is None
