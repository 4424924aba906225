"""The documentation site builds with ``mkdocs build --strict``, offline.

Strict mode turns every warning into a failure: a broken link or anchor, a page missing from
the nav, a docstring mkdocstrings cannot render, an unknown state-diagram table. The build runs
with the proxy variables pointing at a closed port, so a plugin that tried to fetch anything
(web fonts, social cards, remote inventories) would fail it. Skipped when the ``docs`` extra is
not installed.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

import kugelwire.protocol
from kugelwire.protocol import _state

from ._blocks import DOCS

ROOT = DOCS.parent
pytestmark = pytest.mark.timeout(180)

_HAVE_MKDOCS = all(
    importlib.util.find_spec(name) is not None
    for name in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python")
)


def _nav_pages() -> list[str]:
    config = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    nav = config.split("\nnav:\n", 1)[1].split("\n\n", 1)[0]
    return re.findall(r":\s+([\w/.-]+\.md)\s*$", nav, re.MULTILINE)


def test_every_page_is_in_the_nav_and_exists() -> None:
    pages = _nav_pages()
    assert len(pages) == len(set(pages))
    on_disk = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")}
    assert on_disk <= set(pages), f"pages missing from the nav: {on_disk - set(pages)}"
    missing = [p for p in pages if not (DOCS / p).exists()]
    assert not missing, f"pages in the nav but not written: {missing}"


def test_api_page_documents_every_public_name_of_the_core() -> None:
    page = (DOCS / "api" / "protocol.md").read_text(encoding="utf-8")
    documented = re.findall(r"^::: kugelwire\.protocol\.(\w+)$", page, re.MULTILINE)
    assert len(documented) == len(set(documented))
    assert set(documented) == set(kugelwire.protocol.__all__)


@pytest.mark.skipif(not _HAVE_MKDOCS, reason="needs the docs extra (mkdocs-material, mkdocstrings)")
def test_mkdocs_build_strict(tmp_path: Path) -> None:
    site = tmp_path / "site"
    env = dict(os.environ)
    closed = "http://127.0.0.1:9"  # the discard port: nothing listens there
    env.update(
        HTTP_PROXY=closed, HTTPS_PROXY=closed, http_proxy=closed, https_proxy=closed,
        NO_PROXY="", no_proxy="", NO_MKDOCS_2_WARNING="1",
    )
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"),
         "-d", str(site)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=170,
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stdout + result.stderr
    print(f"mkdocs build --strict: {elapsed:.1f} s")

    for page in _nav_pages():
        out = site / (page[: -len(".md")] + "/index.html" if page != "index.md" else "index.html")
        assert out.exists(), f"{page} was not rendered"

    concepts = (site / "concepts" / "index.html").read_text(encoding="utf-8")
    # one diagram per machine of the registry (six once the client request machine is in)
    assert concepts.count('class="mermaid"') == len(_state.MACHINES) >= 5
    assert "kugelwire:state-diagram" not in concepts
    assert "OPEN --&gt; FLUSHED : flush, close, idle_warning" in concepts

    api = (site / "api" / "protocol" / "index.html").read_text(encoding="utf-8")
    for name in kugelwire.protocol.__all__:
        assert f'id="kugelwire.protocol.{name}"' in api, name
    assert ":class:" not in api and ":meth:" not in api  # Sphinx roles are rendered as code

    for html in site.rglob("*.html"):
        text = html.read_text(encoding="utf-8")
        assert "fonts.googleapis.com" not in text and "fonts.gstatic.com" not in text, html
