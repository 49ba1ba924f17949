"""The documentation's promises: its links resolve, and the README stays a short map of
the project that names every folder of the package and links every page of docs/."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from helpers import ROOT

README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]
MAX_README_LINES = 300
MAP_HEADING = "## Where things live"
# The project's top-level folders the map describes besides the package's own.
TOP_FOLDERS = ("flags/", "tests/", "bench/", "docs/", "saved_models/")

FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
CODE_SPAN = re.compile(r"(`+)(.+?)\1")
LINK = re.compile(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def prose_lines(text: str) -> list[str]:
    """The lines of a Markdown page outside fenced code blocks."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            lines.append(line)
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: its text in lowercase, punctuation dropped, spaces
    to '-' (letters, digits, '_' and '-' are kept)."""
    text = CODE_SPAN.sub(lambda m: m.group(2), heading)
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)  # A link keeps its text.
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every heading's anchor in `page`; a repeated heading gets -1, -2, ... as on GitHub."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    for line in prose_lines(page.read_text()):
        match = HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def relative_links(page: Path) -> list[str]:
    """The targets of `page`'s links that point into the repository (no URL scheme),
    outside code blocks and code spans."""
    targets = []
    for line in prose_lines(page.read_text()):
        line = CODE_SPAN.sub("", line)
        for target in LINK.findall(line):
            if not SCHEME.match(target) and not target.startswith("//"):
                targets.append(target)
    return targets


def resolve(page: Path, target: str) -> tuple[Path, str]:
    """The file a link from `page` names, and its anchor ('' if none)."""
    path, _, anchor = target.partition("#")
    return (page if not path else (page.parent / path).resolve()), anchor


def section(text: str, heading: str) -> str:
    """The part of a page from `heading` to the next heading of the same level or above."""
    lines = prose_lines(text)
    start = lines.index(heading)
    level = len(heading) - len(heading.lstrip("#"))
    end = next(
        (
            i
            for i in range(start + 1, len(lines))
            if (m := HEADING.match(lines[i])) and len(m.group(1)) <= level
        ),
        len(lines),
    )
    return "\n".join(lines[start:end])


def test_the_slug_follows_githubs_rule():
    assert slug("Data in memory (and the GPU)") == "data-in-memory-and-the-gpu"
    assert slug("`--input` (planned, not in this version)") == "--input-planned-not-in-this-version"
    assert slug("Precision, XLA and determinism") == "precision-xla-and-determinism"
    assert slug("1 and 2. Training step: `keras.Model.fit`") == "1-and-2-training-step-kerasmodelfit"


def test_there_are_docs_pages():
    assert DOCS, "docs/ holds no page"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    broken = []
    for target in relative_links(page):
        path, anchor = resolve(page, target)
        if not path.exists():
            broken.append(f"{target}: no such file")
        elif anchor and (not path.is_file() or anchor not in anchors(path)):
            broken.append(f"{target}: no heading with that anchor in {path.relative_to(ROOT)}")
    assert not broken, "\n".join(broken)


def test_the_readme_is_a_short_map():
    lines = README.read_text().splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines; keep reference in docs/"


def test_the_folder_map_names_every_package_folder_and_module():
    folder_map = section(README.read_text(), MAP_HEADING)
    package = ROOT / "krefinery"
    folders = sorted(p.name for p in package.iterdir() if p.is_dir() and (p / "__init__.py").exists())
    assert folders, "no package folder found"
    missing = [f"krefinery/{name}/" for name in folders if f"`krefinery/{name}/`" not in folder_map]
    modules = sorted(p.name for p in package.glob("*.py") if p.name != "__init__.py")
    missing += [name for name in modules if f"`{name}`" not in folder_map]
    missing += [name for name in TOP_FOLDERS if f"`{name}`" not in folder_map]
    assert not missing, f"the README's folder map ({MAP_HEADING!r}) lacks {missing}"


def test_every_docs_page_is_linked_from_the_readme():
    linked = {resolve(README, target)[0] for target in relative_links(README)}
    unlinked = [str(page.relative_to(ROOT)) for page in DOCS if page.resolve() not in linked]
    assert not unlinked, f"README.md links no {unlinked}"
