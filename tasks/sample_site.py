"""The bundled sample: a small website of English prose, built offline from installed packages.

    from tasks.sample_site import build_site, page_urls, serve_site, DEFAULT_PACKAGES
    site = build_site(Path("c2m-data/sample-site"), DEFAULT_PACKAGES, max_mb=12)
    with serve_site(site.root) as base_url:      # e.g. "http://127.0.0.1:48123/"
        urls = page_urls(site, base_url)         # crawl these while the server runs

    python -m tasks.sample_site OUT_DIR [MAX_MB]  # build it from the shell, then serve it until Ctrl-C

`crawl2model run` with no input crawls this site, so the demo needs no internet. The text is
the prose of docstrings (module, class, function and method) of Python packages installed on
this machine, read with `ast` (never imported). Only paragraphs of sentences are kept: numpydoc
sections such as Parameters or Examples, doctests, parameter tables, directives, code, math and
tables are dropped, rst markup is stripped, and paragraphs under 8 words or not ending a
sentence are skipped, so that the pages pass the curate stage's quality filters.

Each module with enough prose becomes one article page (or several parts of at most ~60 KB of
text) with the usual boilerplate around it (nav, footer) for the extractor to strip; modules of
the packages are taken in turn until the pages reach `max_mb`. Private objects, private folders
and tests are skipped; private files in public folders are read, since that is where sklearn
and scipy document their public classes. `index.html` links to every page, `robots.txt`
disallows `/private/`, which holds one page a polite crawler skips. The same installed
packages and arguments give byte-identical files.
"""

from __future__ import annotations

import ast
import html
import importlib.util
import inspect
import logging
import os
import re
import sys
import threading
import warnings
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from itertools import zip_longest
from multiprocessing import get_context
from pathlib import Path
from typing import Iterator
from urllib.parse import urljoin

log = logging.getLogger(__name__)

DEFAULT_PACKAGES = ["pandas", "sklearn", "scipy", "matplotlib", "torch", "sqlalchemy", "numpy"]
DEFAULT_PORT = 48123  # tried first, so that URLs stay the same across runs
MAX_PAGE_TEXT = 60_000  # characters of prose per page; longer modules are split into parts
MIN_WORDS = 8  # per paragraph
MIN_PAGE_WORDS = 80  # per module: FineWeb-style filters reject documents under 50 words
ROBOTS_TXT = "User-agent: *\nDisallow: /private/\n"
SKIP_DIRS = {"tests", "test"}

# numpydoc / Google sections that hold no prose (lower case). Notes, Warnings etc. are kept.
NON_PROSE_SECTIONS = {
    "parameters", "other parameters", "arguments", "args", "keyword arguments", "kwargs",
    "returns", "return", "yields", "yield", "receives", "raises", "warns", "attributes",
    "methods", "examples", "example", "see also", "references", "shape", "properties",
}
ADMONITIONS = {"note", "warning", "tip", "important", "hint", "attention", "caution", "danger"}

_RULE = re.compile(r"^\s*([-=~^*#+`'\"])\1{2,}\s*$")  # a section title's under/overline
_TABLE = re.compile(r"^\s*(=+( +=+)+|\+[-=+]+\+|\|)|\S {3,}\S")  # table borders, rows, aligned columns
_PARAM_LINE = re.compile(r"^\s*\*{0,2}\w[\w.\[\]]*(\s*,\s*\*{0,2}\w+)*\s+:(\s|$)")  # "x, y : int"
_FIELD = re.compile(r"^\s*:[\w ()*.,|-]*:(\s|$)")  # ":param x:", ":returns:"
_BULLET = re.compile(r"^\s*([-*+•]|\d+[.)]|#\.|\(\d+\)|[a-z][.)])\s+")
_ROLE = re.compile(r"(?::[\w.+-]+)+:`([^`]+)`")  # :func:`y`, :py:meth:`~a.b`
_LITERAL = re.compile(r"``([^`]+)``")
_LINK = re.compile(r"`([^`<]*?)\s*(?:<[^`>]*>)?`_{0,2}")  # `text <url>`_, `name`_, `x`
_FOOTNOTE = re.compile(r"\s*\[[\w#*-]+\]_")  # [1]_
_STRONG = re.compile(r"(?<![\w*])\*\*(?=\S)([^*]+?)(?<=\S)\*\*(?![\w*])")
_EMPH = re.compile(r"(?<![\w*])\*(?=\S)([^*]+?)(?<=\S)\*(?![\w*])")
_SENTENCE_END = re.compile(r"[.!?][)\"']?$")


@dataclass
class SampleSite:
    root: Path  # folder holding index.html, robots.txt, pages/...
    pages: list[str]  # page paths relative to root, e.g. "pages/pandas.core.frame-1.html", in order
    html_bytes: int  # total size of the pages


# ---------------------------------------------------------------- docstring -> prose paragraphs


def _role_text(match: re.Match) -> str:
    text = match.group(1).lstrip("!")
    if m := re.fullmatch(r"(.*?)\s*<[^>]*>", text, re.S):  # :ref:`title <target>`
        return m.group(1)
    return text.rsplit(".", 1)[-1] if text.startswith("~") else text


def strip_markup(text: str) -> str:
    """rst inline markup to plain text: ``x`` -> x, :func:`y` -> y, *emph* -> emph."""
    text = text.replace("\\ ", "")
    text = _ROLE.sub(_role_text, text)
    text = _LITERAL.sub(r"\1", text)
    text = _LINK.sub(r"\1", text)
    text = _FOOTNOTE.sub("", text)
    text = _STRONG.sub(r"\1", text)
    return _EMPH.sub(r"\1", text)


def _blocks(docstring: str) -> Iterator[tuple[str | None, list[str]]]:
    """Blank-line separated blocks of lines, each with the title of the section it is in."""
    lines = inspect.cleandoc(docstring).splitlines() + [""]
    section, block, i = None, [], 0
    while i < len(lines):
        line = lines[i]
        if line.strip() and not _RULE.match(line) and i + 1 < len(lines) and _RULE.match(lines[i + 1]):
            if block:  # a section title, underlined
                yield section, block
            section, block, i = line.strip().lower(), [], i + 2
        elif _RULE.match(line) or not line.strip():  # an overline, or the end of a block
            if block:
                yield section, block
            block, i = [], i + 1
        else:
            block.append(line)
            i += 1


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _candidates(docstring: str, dropped: Counter) -> Iterator[str]:
    """The blocks of a docstring that may be prose, each joined into one line; counts the others."""
    in_admonition = False  # an indented block right after ".. note::" is prose
    for section, block in _blocks(docstring):
        first = block[0]
        if section in NON_PROSE_SECTIONS:
            dropped["section"] += 1
        elif _indent(first) > 0:  # a literal block, a directive body, a parameter description
            if in_admonition:
                yield " ".join(line.strip() for line in block)
                continue
            dropped["indented"] += 1
        elif first.startswith(".. "):
            m = re.match(r"\.\. (\w+)::\s*(.*)", first)
            in_admonition = bool(m and m.group(1).lower() in ADMONITIONS)
            body = [m.group(2)] + block[1:] if in_admonition else []
            if " ".join(body).strip():
                yield " ".join(line.strip() for line in body)
            if not in_admonition:
                dropped["directive"] += 1
            continue
        elif any(line.lstrip().startswith((">>>", "...")) for line in block):
            dropped["doctest"] += 1
        elif any(_PARAM_LINE.match(line) or _FIELD.match(line) for line in block):
            dropped["parameters"] += 1
        elif any(_TABLE.search(line) for line in block):
            dropped["table"] += 1
        elif _BULLET.match(first):  # a list: each item may be a sentence
            items: list[list[str]] = []
            for line in block:
                if _BULLET.match(line) and _indent(line) == _indent(first):
                    items.append([_BULLET.sub("", line)])
                elif items:
                    items[-1].append(line.strip())
            yield from (" ".join(item) for item in items)
        elif any(_indent(line) > 0 for line in block):  # "Args:" with its indented entries
            dropped["definition"] += 1
        else:
            yield " ".join(line.strip() for line in block)
        in_admonition = False


def prose_paragraphs(docstring: str, dropped: Counter | None = None) -> list[str]:
    """The prose paragraphs of a docstring, markup stripped, one line each.

    `dropped`, when given, counts what was left out, by reason."""
    dropped = Counter() if dropped is None else dropped
    kept = []
    for text in _candidates(docstring, dropped):
        if ":math:" in text or "$" in text:
            dropped["math"] += 1
            continue
        text = " ".join(strip_markup(text).split())
        if _PARAM_LINE.match(text):  # "name : description", as in a list of parameters or functions
            dropped["parameters"] += 1
        elif any(c in text for c in "`{}\\") or "%(" in text or re.search(r":\w+:", text):
            dropped["markup"] += 1  # leftover markup, templates, code
        elif len(text.split()) < MIN_WORDS:
            dropped["short"] += 1
        elif not _SENTENCE_END.search(text):
            dropped["no-sentence-end"] += 1
        else:
            kept.append(text)
    return kept


# ---------------------------------------------------------------- packages -> modules -> sections


def package_modules(package: str) -> list[tuple[str, Path]]:
    """(module name, source file) of the modules of an installed package, sorted; empty (and
    logged) when it is not installed or has no Python source.

    Private folders (`numpy/_core`, `torch/_inductor`) and tests are skipped, but private files
    in public folders are kept: `sklearn/linear_model/_logistic.py` is where the public
    `LogisticRegression` is documented (its public objects only, see `module_sections`)."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        log.warning("sample site: package %r is not installed; skipped", package)
        return []
    if not spec.submodule_search_locations:  # a single-file module
        if spec.origin and spec.origin.endswith(".py"):
            return [(package, Path(spec.origin))]
        log.warning("sample site: package %r has no Python source; skipped", package)
        return []
    modules = []
    for location in sorted(spec.submodule_search_locations):
        base = Path(location)
        for folder, dirs, files in os.walk(base):
            dirs[:] = sorted(d for d in dirs if not d.startswith(("_", ".")) and d not in SKIP_DIRS)
            parts = Path(folder).relative_to(base).parts
            for name in sorted(files):
                if name == "__init__.py":
                    modules.append((".".join((package, *parts)), Path(folder, name)))
                elif name.endswith(".py") and not name.startswith(("test_", "conftest")):
                    modules.append((".".join((package, *parts, name[:-3])), Path(folder, name)))
    return modules


def module_sections(path: Path, dropped: Counter | None = None) -> list[tuple[str, list[str]]]:
    """(heading, paragraphs) for a module's docstring (heading "") and its public classes,
    functions and methods, in source order; a paragraph is given once per module."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # invalid escape sequences in old code
            tree = ast.parse(path.read_bytes(), filename=str(path))
    except (SyntaxError, ValueError, OSError) as e:
        log.info("sample site: cannot parse %s: %s", path, e)
        return []
    sections: dict[str, list[str]] = {}  # a heading seen twice (overloads, redefinitions) is merged
    seen: set[str] = set()

    def add(heading: str, node: ast.AST) -> None:
        for paragraph in prose_paragraphs(ast.get_docstring(node, clean=False) or "", dropped):
            if paragraph not in seen:
                seen.add(paragraph)
                sections.setdefault(heading, []).append(paragraph)

    def visit(body: list[ast.stmt], prefix: str) -> None:
        for node in body:
            if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                if not node.name.startswith("_"):
                    add(prefix + node.name, node)
                    if isinstance(node, ast.ClassDef):
                        visit(node.body, f"{prefix}{node.name}.")

    add("", tree)
    visit(tree.body, "")
    return list(sections.items())


def _split_parts(sections: list[tuple[str, list[str]]]) -> list[list[tuple[str, list[str]]]]:
    """Sections grouped into parts of at most MAX_PAGE_TEXT characters (a long section is split)."""
    parts: list[list[tuple[str, list[str]]]] = [[]]
    size = 0
    for heading, paragraphs in sections:
        for paragraph in paragraphs:
            if size + len(paragraph) > MAX_PAGE_TEXT and parts[-1]:
                parts.append([])
                size = 0
            if not parts[-1] or parts[-1][-1][0] != heading:
                parts[-1].append((heading, []))
                size += len(heading)
            parts[-1][-1][1].append(paragraph)
            size += len(paragraph)
    return [part for part in parts if part]


# ---------------------------------------------------------------- HTML


NAV = [("../index.html", "Home"), ("../index.html#all-pages", "All pages"), ("../index.html#about", "About")]


def _page_html(title: str, body: str, package: str) -> str:
    esc = html.escape
    links = "\n".join(f'      <li><a href="{href}">{text}</a></li>' for href, text in NAV)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>{esc(title)}</title>
</head>
<body>
  <header class="site-header">
    <nav aria-label="Site">
      <ul>
{links}
      </ul>
    </nav>
  </header>
  <main>
    <article>
      <h1>{esc(title)}</h1>
{body}
    </article>
  </main>
  <footer class="site-footer">
    <p>Copyright the {esc(package)} developers. Text taken from the docstrings of the installed package.</p>
    <p>Part of the crawl2model sample site. All rights reserved.</p>
  </footer>
</body>
</html>
"""


def _article_body(sections: list[tuple[str, list[str]]]) -> str:
    out = []
    for heading, paragraphs in sections:
        if heading:
            out.append(f"      <h2>{html.escape(heading, quote=False)}</h2>")
        out.extend(f"      <p>{html.escape(p, quote=False)}</p>" for p in paragraphs)
    return "\n".join(out)


def _module_pages(package: str, module: str, path: Path) -> list[tuple[str, str, bytes]]:
    """(page path, title, HTML) of each part of one module's article; none for a module with
    too little prose to pass the quality filters (fewer than MIN_PAGE_WORDS words)."""
    sections = module_sections(path)
    if sum(len(p.split()) for _, paragraphs in sections for p in paragraphs) < MIN_PAGE_WORDS:
        return []
    parts = _split_parts(sections)
    pages = []
    for n, part in enumerate(parts, 1):
        title = module if len(parts) == 1 else f"{module} (part {n} of {len(parts)})"
        pages.append((f"pages/{module}-{n}.html", title, _page_html(title, _article_body(part), package).encode()))
    return pages


def build_site(out_dir: Path, packages: list[str], max_mb: float) -> SampleSite:
    """Write the sample site under `out_dir`: pages from `packages` (one module of each in
    turn) until the next page would take them past `max_mb` MiB, then index.html, robots.txt
    and private/drafts.html. Old pages under `out_dir/pages` are removed first."""
    root = Path(out_dir)
    (root / "pages").mkdir(parents=True, exist_ok=True)
    (root / "private").mkdir(exist_ok=True)
    for stale in (root / "pages").glob("*.html"):
        stale.unlink()
    per_package = [[(package, *m) for m in package_modules(package)] for package in dict.fromkeys(packages)]
    modules = [m for group in zip_longest(*per_package) for m in group if m]
    budget = int(max_mb * 2**20)
    pages: list[tuple[str, str]] = []  # (path, title)
    html_bytes = 0
    # Parsing ~2,000 modules' sources is CPU work: one process per core, pages kept in module
    # order (map is ordered), so the site is the same whatever the core count. Spawned, not
    # forked: the caller may hold threads (Prefect's, MLflow's).
    workers = max(1, min(os.cpu_count() or 1, 8))
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        rendered = pool.map(_module_pages, *zip(*modules), chunksize=16) if modules else []
        for page, title, data in (page for module_pages in rendered for page in module_pages):
            if html_bytes + len(data) > budget:
                break
            (root / page).write_bytes(data)
            pages.append((page, title))
            html_bytes += len(data)
        pool.shutdown(cancel_futures=True)  # past the budget: the rest are not needed
    _write_index(root, pages)
    log.info("sample site: %d pages, %.1f MiB, in %s", len(pages), html_bytes / 2**20, root)
    return SampleSite(root=root, pages=[page for page, _ in pages], html_bytes=html_bytes)


def _write_index(root: Path, pages: list[tuple[str, str]]) -> None:
    esc = html.escape
    items = "\n".join(f'        <li><a href="{esc(page)}">{esc(title)}</a></li>' for page, title in pages)
    index = f"""<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>crawl2model sample site</title>
</head>
<body>
  <main>
    <h1>crawl2model sample site</h1>
    <p id="about">Articles made from the documentation of Python packages installed on this machine.</p>
    <section id="all-pages">
      <h2>All pages</h2>
      <ul>
{items}
      </ul>
    </section>
    <p><a href="private/drafts.html">Drafts</a></p>
  </main>
</body>
</html>
"""
    private = """<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>Drafts</title>
</head>
<body>
  <article>
    <h1>Drafts</h1>
    <p>This page is disallowed by robots.txt, so a polite crawler never fetches it.</p>
  </article>
</body>
</html>
"""
    (root / "index.html").write_text(index, encoding="utf-8", newline="\n")
    (root / "robots.txt").write_text(ROBOTS_TXT, encoding="utf-8", newline="\n")
    (root / "private" / "drafts.html").write_text(private, encoding="utf-8", newline="\n")


# ---------------------------------------------------------------- serving


def page_urls(site: SampleSite, base_url: str) -> list[str]:
    """Absolute URLs of the site's pages, in order."""
    base = base_url if base_url.endswith("/") else base_url + "/"
    return [urljoin(base, page) for page in site.pages]


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args) -> None:  # no request logging
        pass


@contextmanager
def serve_site(root: Path) -> Iterator[str]:
    """Serve `root` over HTTP on 127.0.0.1 (port 48123 when free) while the block runs; yields the base URL."""
    handler = partial(_QuietHandler, directory=str(root))
    try:
        server = ThreadingHTTPServer(("127.0.0.1", DEFAULT_PORT), handler)
    except OSError:
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, name="sample-site", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if len(sys.argv) < 2:
        sys.exit("usage: python -m tasks.sample_site OUT_DIR [MAX_MB]")
    built = build_site(Path(sys.argv[1]), DEFAULT_PACKAGES, float(sys.argv[2]) if len(sys.argv) > 2 else 12.0)
    with serve_site(built.root) as url:
        print(f"serving {len(built.pages)} pages at {url} (Ctrl-C to stop)")
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass
