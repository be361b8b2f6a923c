"""The bundled sample site: prose pages built from installed packages, served on 127.0.0.1."""

from __future__ import annotations

import importlib
import logging
import re
import socket
import textwrap
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import lxml.html
import pytest
import trafilatura

from tasks.sample_site import ROBOTS_TXT, build_site, page_urls, prose_paragraphs, serve_site

REAL_PACKAGES = ["sqlalchemy", "pandas"]  # installed with the project (pandas comes with mlflow)
MAX_MB = 0.3


def files_of(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status, response.read()


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    return build_site(tmp_path_factory.mktemp("site"), REAL_PACKAGES, MAX_MB)


def prose(topic: str, sentences: int = 12) -> str:
    return " ".join(f"Sentence {i} about {topic} is long enough to be kept as prose." for i in range(sentences))


@pytest.fixture
def toy_package(tmp_path, monkeypatch):
    """A real package on sys.path with public, private, tiny and test modules."""
    pkg = tmp_path / "src" / "toypkg"
    (pkg / "tests").mkdir(parents=True)
    (pkg / "_internal").mkdir()
    long_doc = "\n\n".join(prose(f"part {i} of the long class", 2) for i in range(700))
    (pkg / "__init__.py").write_text(f'"""{prose("the toy package")}"""\n')
    (pkg / "core.py").write_text(textwrap.dedent(f'''
        """{prose("the core module")}"""

        class Widget:
            """A widget is a small thing that the toy package builds for its users.

            Parameters
            ----------
            size : int
                The size of the widget, measured in toy units of length.

            Examples
            --------
            >>> Widget(3)
            """

            def grow(self):
                """Grow the widget by one unit, which takes a little while to finish."""

            def _shrink(self):
                """Private: this method is never shown on any page of the site."""

        class _Hidden:
            """Private: this class is never shown on any page of the site at all."""

    ''') + f'\nclass Long:\n    """{long_doc}"""\n')
    (pkg / "_helpers.py").write_text(f'"""{prose("the helpers, kept as their folder is public")}"""\n')
    (pkg / "tiny.py").write_text('"""Private: too little prose for a page that passes quality filters."""\n')
    (pkg / "_internal" / "deep.py").write_text(f'"""Private: {prose("a private folder")}"""\n')
    (pkg / "tests" / "test_core.py").write_text(f'"""Private: {prose("the tests")}"""\n')
    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    importlib.invalidate_caches()
    return "toypkg"


def test_prose_paragraphs_keeps_sentences_and_strips_markup():
    doc = '''Compute the widget size from the given inputs in a single pass.

    It uses ``numpy`` arrays, :func:`numpy.sum` and :class:`~pandas.DataFrame`, see
    :ref:`the user guide <guide>` [1]_ and *emphasised* or **bold** words.

    .. note::

        The note body is prose, so it is kept as a paragraph of its own.

    Parameters
    ----------
    x : int
        The value to process, which is described in a full sentence.

    Notes
    -----
    The notes section holds prose, which the builder keeps for the page.

    - A list item that is a full sentence with enough words in it.
    - Another list item with enough words
      that goes on over a second line.

    Too short to keep.

    This paragraph has many words but does not end like a sentence

    Example::

        total = widget.size + other.size  # code is never prose at all.

    >>> widget.compute(1, 2)
    3

    The value is :math:`x^2` which is math and has to be dropped here.

    Examples
    --------
    Prose in the examples section is dropped even when it is long enough.
    '''
    dropped = Counter()
    assert prose_paragraphs(doc, dropped) == [
        "Compute the widget size from the given inputs in a single pass.",
        "It uses numpy arrays, numpy.sum and DataFrame, see the user guide and emphasised or bold words.",
        "The note body is prose, so it is kept as a paragraph of its own.",
        "The notes section holds prose, which the builder keeps for the page.",
        "A list item that is a full sentence with enough words in it.",
        "Another list item with enough words that goes on over a second line.",
    ]
    assert dropped["section"] == 2 and dropped["doctest"] == 1 and dropped["math"] == 1
    assert dropped["short"] == 2 and dropped["no-sentence-end"] == 1 and dropped["indented"] == 1


def test_toy_package_pages_skip_private_and_tests_and_split_long_modules(toy_package, tmp_path):
    site = build_site(tmp_path / "site", [toy_package], max_mb=5)
    assert site.pages[:2] == ["pages/toypkg-1.html", "pages/toypkg._helpers-1.html"]
    core_parts = [p for p in site.pages if p.startswith("pages/toypkg.core-")]
    assert len(core_parts) >= 2, "a ~100 KB module is split into parts"
    text = "".join((site.root / p).read_text(encoding="utf-8") for p in site.pages)
    assert "Private:" not in text  # private objects, private folders, tests, tiny modules
    assert "<h2>Widget</h2>" in text and "<h2>Widget.grow</h2>" in text
    assert "toy units" not in text and "&gt;&gt;&gt;" not in text  # Parameters and Examples dropped
    for page in core_parts:
        article = lxml.html.fromstring((site.root / page).read_bytes()).find(".//article")
        assert sum(len(p.text_content()) for p in article.iter("p")) <= 60_000
    assert site.html_bytes == sum((site.root / p).stat().st_size for p in site.pages)


def test_build_is_deterministic(site, tmp_path):
    again = build_site(tmp_path / "again", REAL_PACKAGES, MAX_MB)
    assert again.pages == site.pages and again.html_bytes == site.html_bytes
    assert files_of(again.root) == files_of(site.root)


def test_max_mb_is_respected_and_smaller_budgets_give_a_prefix(site, tmp_path):
    assert 0.5 * MAX_MB * 2**20 < site.html_bytes <= MAX_MB * 2**20
    assert site.html_bytes == sum((site.root / p).stat().st_size for p in site.pages)
    small = build_site(tmp_path / "small", REAL_PACKAGES, 0.05)
    assert small.html_bytes <= 0.05 * 2**20
    assert 0 < len(small.pages) < len(site.pages) and site.pages[: len(small.pages)] == small.pages
    assert {p.split(".")[0] for p in site.pages} == {"pages/sqlalchemy", "pages/pandas"}  # taken in turn


def test_pages_hold_no_code_or_rst_markup(site):
    bad = re.compile(r"&gt;&gt;&gt;|``|:\w+:`|\.\. \w+::|<p>\w+ : |<p>\.\.\.|<p>:param|\{|\}")
    for page in site.pages:
        body = (site.root / page).read_text(encoding="utf-8")
        assert not bad.search(body), (page, bad.search(body))


def test_every_page_is_an_article_that_trafilatura_extracts_as_prose(site):
    for page in site.pages:
        data = (site.root / page).read_bytes()
        tree = lxml.html.fromstring(data)
        assert tree.find(".//head/meta[@charset='utf-8']") is not None and tree.findtext(".//title")
        assert tree.find(".//nav") is not None and tree.find(".//footer") is not None
        assert len(tree.findall(".//article/h1")) == 1 and tree.findall(".//article/p")
        text = trafilatura.extract(data.decode("utf-8"), favor_precision=True)
        assert text and len(text.split()) >= 50, page
        assert "All pages" not in text and "Copyright" not in text, page  # nav and footer stripped
        # FineWeb's line rules at datatrove's default thresholds (also crawl2model's defaults)
        lines = [line for line in text.splitlines() if line.strip()]
        assert sum(line.endswith((".", "!", "?", '"', "'")) for line in lines) / len(lines) >= 0.12, page
        assert sum(len(line) <= 30 for line in lines) / len(lines) <= 0.67, page
        assert len(set(lines)) == len(lines) and "{" not in text, page  # duplicate lines; C4's curly bracket


def test_index_robots_and_private_page(site):
    assert (site.root / "robots.txt").read_text() == ROBOTS_TXT == "User-agent: *\nDisallow: /private/\n"
    index = lxml.html.fromstring((site.root / "index.html").read_bytes())
    links = [a.get("href") for a in index.iter("a")]
    assert [link for link in links if link.startswith("pages/")] == site.pages
    assert "private/drafts.html" in links and (site.root / "private" / "drafts.html").is_file()


def test_serve_site_serves_pages_and_robots_on_localhost_and_stops(site):
    with serve_site(site.root) as base_url:
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/", base_url)
        urls = page_urls(site, base_url)
        assert len(urls) == len(site.pages) and urls[0] == base_url + site.pages[0]
        status, body = get(urls[0])
        assert status == 200 and body == (site.root / site.pages[0]).read_bytes()
        assert get(base_url + "robots.txt") == (200, ROBOTS_TXT.encode())
        with serve_site(site.root) as second:  # the first holds the fixed port: the second gets another
            assert second != base_url and get(second + "robots.txt")[0] == 200
        port = int(base_url.rsplit(":", 1)[1].strip("/"))
    with pytest.raises(urllib.error.URLError):
        get(base_url + "robots.txt")
    with socket.socket() as s:  # the port is closed, not just unanswered
        assert s.connect_ex(("127.0.0.1", port)) != 0


def test_package_not_installed_is_skipped_and_logged(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="tasks.sample_site"):
        site = build_site(tmp_path / "site", ["no_such_package_c2m", "sqlalchemy"], 0.05)
    assert "no_such_package_c2m" in caplog.text and "not installed" in caplog.text
    assert site.pages and all(p.startswith("pages/sqlalchemy") for p in site.pages)
    empty = build_site(tmp_path / "empty", ["no_such_package_c2m"], 0.05)
    assert empty.pages == [] and empty.html_bytes == 0 and (empty.root / "robots.txt").is_file()
