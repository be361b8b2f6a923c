"""The README and docs/ link to files and headings that exist: every relative link's file, and its
#anchor as GitHub makes it from a heading of that file.

    .venv/bin/python -m pytest tests/test_docs_links.py
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", ROOT / "BENCHMARKS.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens (code blocks skipped)."""
    outside_code = re.sub(r"(?ms)^```.*?^```", "", markdown)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
            for h in re.findall(r"(?m)^#{1,6} (.+)$", outside_code)}


def links(document: Path) -> list[str]:
    return [target for target in LINK.findall(document.read_text()) if not re.match(r"[a-z]+:", target)]


def test_anchors_are_made_as_github_makes_them():
    assert anchors("# A title\n## Is this ready? `doctor`\n```\n# not a heading\n```\n## Post-training: SFT and DPO\n") == \
        {"a-title", "is-this-ready-doctor", "post-training-sft-and-dpo"}


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_reach_a_file_and_heading(document):
    broken = []
    for target in links(document):
        path, _, anchor = target.partition("#")
        file = (document.parent / path).resolve() if path else document
        if not file.exists():
            broken.append(f"{target}: no file {file}")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file.read_text()):
            broken.append(f"{target}: no heading #{anchor} in {file.name}")
    assert not broken, f"{document.name}: " + "; ".join(broken)


def test_readme_is_a_front_door():
    """Two commands, the stages, what a run produces, the layout, the links; the rest lives in docs/."""
    readme = (ROOT / "README.md").read_text()
    assert len(readme.encode()) < 20_000
    assert {"make demo", "make test"} <= set(re.findall(r"(?m)^make \w+", readme))
    for doc in ("docs/pipeline.md", "docs/cli.md", "docs/operations.md", "docs/experiments.md", "BENCHMARKS.md"):
        assert f"]({doc})" in readme
