"""The documentation holds together: README.md stays a first screen, every docs/
page is reachable from it, and every relative link (and #anchor) resolves.

Plain pathlib + re: no TensorFlow, no network. External links (http, https,
mailto) are not checked.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
README_MAX_LINES = 90

# [text](target) and ![alt](target), target up to the first space or ')'; an optional "title" is ignored.
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.M | re.S)
INLINE_CODE = re.compile(r"`[^`\n]*`")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$", re.M)
EXTERNAL = re.compile(r"^(?:[a-z][a-z0-9+.-]*:|//)", re.I)  # http:, https:, mailto:, ...


def markdown_files() -> list[Path]:
    files = [REPO / "README.md", *sorted(DOCS.glob("*.md"))]
    files += [REPO / name for name in ("MODEL_CARD.md", "SECURITY.md") if (REPO / name).is_file()]
    return files


def prose(text: str) -> str:
    """The text without fenced code blocks and inline code, where brackets are not links."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def links(path: Path) -> list[str]:
    return LINK.findall(prose(path.read_text(encoding="utf-8")))


def github_slug(heading: str) -> str:
    """GitHub's anchor for a heading: markup dropped, lowercase, punctuation other than
    '-' and '_' removed, each space a '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading: its text
    text = re.sub(r"[`*]", "", text).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading's slug, with GitHub's -1, -2, ... for repeated headings."""
    seen: dict[str, int] = {}
    result = set()
    for heading in HEADING.findall(FENCE.sub("", path.read_text(encoding="utf-8"))):
        slug = github_slug(heading)
        count = seen.get(slug, 0)
        result.add(slug if count == 0 else f"{slug}-{count}")
        seen[slug] = count + 1
    return result


def broken_links(path: Path, check_own_anchors: bool = True) -> list[str]:
    """Relative link targets of `path` that do not resolve. A pure `#anchor` (into the page
    itself) is checked only with check_own_anchors: on README.md and docs/, not on the
    model card and security notes, which other work owns."""
    problems = []
    for target in links(path):
        if EXTERNAL.match(target) or (target.startswith("#") and not check_own_anchors):
            continue
        file_part, _, anchor = target.partition("#")
        resolved = (path.parent / file_part).resolve() if file_part else path
        if file_part and not resolved.exists():
            problems.append(f"{target}: no such file or folder ({resolved})")
            continue
        if anchor and resolved.suffix == ".md" and resolved.is_file() and anchor not in anchors(resolved):
            problems.append(f"{target}: no heading with anchor #{anchor} in {resolved.name}")
    return problems


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(path):
    own = path == REPO / "README.md" or path.parent == DOCS
    assert broken_links(path, check_own_anchors=own) == []


def test_readme_is_a_first_screen():
    lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move reference to docs/"


def test_no_orphan_docs_page():
    linked = set()
    for index in (REPO / "README.md", DOCS / "README.md"):
        for target in links(index):
            file_part = target.partition("#")[0]
            if file_part and not EXTERNAL.match(target):
                linked.add((index.parent / file_part).resolve())
    pages = {page.resolve() for page in DOCS.glob("*.md")} - {(DOCS / "README.md").resolve()}
    assert (DOCS / "README.md").resolve() in linked, "README.md does not link docs/README.md"
    assert sorted(p.name for p in pages - linked) == []


def test_the_checks_can_fail(tmp_path):
    """The checker itself: a missing file, a missing anchor and a good link."""
    (tmp_path / "other.md").write_text("# Title\n\n## Data settings, and more\n", encoding="utf-8")
    page = tmp_path / "page.md"
    page.write_text("[ok](other.md#data-settings-and-more) [gone](missing.md) [bad](other.md#nope)\n"
                    "[web](https://example.com) [self](#top) `[code](nowhere.md)`\n# Top\n",
                    encoding="utf-8")
    problems = broken_links(page)
    assert len(problems) == 2
    assert problems[0].startswith("missing.md") and problems[1].startswith("other.md#nope")
    page.write_text("[gone](#nowhere)\n# Top\n", encoding="utf-8")
    assert len(broken_links(page)) == 1 and broken_links(page, check_own_anchors=False) == []
    assert github_slug('Recordings of any length, and "no speech"') == "recordings-of-any-length-and-no-speech"
