"""The user-facing text of the repository stands on its own: it never points at files outside
the repository (the protocol notes the project was built from) or cites them by section."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: README, the docs site (pages and config), the changelog and the examples.
SCANNED = sorted(
    [ROOT / "README.md", ROOT / "mkdocs.yml", ROOT / "CHANGELOG.md",
     *(ROOT / "docs").rglob("*.md"), *(ROOT / "examples").glob("*.py"),
     *(ROOT / "examples").glob("*.md"),
     # the package's docstrings and comments (the API pages are built from them)
     *(ROOT / "kugelwire").rglob("*.py"), *(ROOT / "kugelwire").rglob("*.html")]
)
OUTSIDE = re.compile(r"shared/|REFERENCE(\.md| ?§)|DECISIONS(\.md| [0-9]| \"|\b rule)|§ ?[0-9]")


@pytest.mark.parametrize("path", SCANNED, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_reference_outside_the_repository(path: Path) -> None:
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        assert not OUTSIDE.search(line), f"{path.relative_to(ROOT)}:{number}: {line.strip()}"


def test_rulings_and_protocol_anchors_exist() -> None:
    """Every `rulings.md#...` / `protocol.md#...` link in the docs names an anchor of its page
    (mkdocs --strict checks this too; this is the fast, dependency-free check)."""
    anchors = {
        page: set(re.findall(r"\{ #([\w-]+) \}", (ROOT / "docs" / page).read_text("utf-8")))
        for page in ("protocol.md", "rulings.md")
    }
    assert {f"ruling-{n}" for n in range(1, 27)} <= anchors["rulings.md"]
    for path in (ROOT / "docs").rglob("*.md"):
        for page, anchor in re.findall(r"\((protocol\.md|rulings\.md)#([\w-]+)\)",
                                       path.read_text("utf-8")):
            assert anchor in anchors[page], f"{path.name}: {page}#{anchor}"
        for anchor in re.findall(r"\]\(#([\w-]+)\)", path.read_text("utf-8")):
            if path.name in anchors:
                assert anchor in anchors[path.name], f"{path.name}: #{anchor}"


def test_the_package_cites_anchors_that_exist() -> None:
    """``docs/protocol.md#...`` / ``docs/rulings.md#...`` in the package name real anchors."""
    anchors = {
        page: set(re.findall(r"\{ #([\w-]+) \}", (ROOT / "docs" / page).read_text("utf-8")))
        for page in ("protocol.md", "rulings.md")
    }
    cited = 0
    for path in (ROOT / "kugelwire").rglob("*.py"):
        for page, anchor in re.findall(r"(protocol\.md|rulings\.md)#([\w-]+)",
                                       path.read_text("utf-8")):
            cited += 1
            assert anchor in anchors[page], f"{path.relative_to(ROOT)}: {page}#{anchor}"
    assert cited > 20
