"""The playground shows the rule checks' findings (headless Chromium, asyncio runner)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import pytest

from kugelwire.conformance._client import RawConnection
from kugelwire.server import ThreadedServer, run_in_thread
from kugelwire.synth import ToneEngine

CHROMIUM = "/usr/bin/chromium"
if not os.path.exists(CHROMIUM):
    pytest.skip(
        f"{CHROMIUM} is missing: run .ci/install-chromium (Debian chromium) for the browser tests",
        allow_module_level=True,
    )
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")

pytestmark = pytest.mark.timeout(40)

ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
KEY = "lint-browser-key"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, timeout=15_000)
        yield b
        b.close()


def open_page(browser: Any, server: ThreadedServer) -> tuple[Any, list[str]]:
    page = browser.new_page()
    page.set_default_timeout(15_000)
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"pageerror: {exc}"))
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.goto(server.url.replace("ws://", "http://") + "/")
    return page, problems


def lint_state(page: Any) -> dict[str, Any]:
    return dict(page.evaluate("() => JSON.parse(JSON.stringify(window.kugelwirePlayground.lint))"))


def test_findings_appear_in_the_page(browser: Any) -> None:
    with run_in_thread(engine=ToneEngine(), api_key=KEY) as server:
        page, problems = open_page(browser, server)
        page.wait_for_function("() => window.kugelwirePlayground.lint.enabled === true")
        assert "No findings" in page.inner_text("#lint-status")
        # a client that opens a connection for one turn and sends at once: no pre-connect
        conn = RawConnection(server.url, "/ws/tts/stream", api_key=KEY, timeout=5)
        conn.send({"text": "Hello <spell>AB</spell>.", "flush": True, "voice_id": 1})
        conn.receive_until(lambda m: any(x.get("session_closed") for x in m), 10)
        conn.close()
        page.wait_for_function("() => window.kugelwirePlayground.lint.findings.length >= 2")
        state = lint_state(page)
        assert [f["rule"] for f in state["findings"]] == ["no-preconnect",
                                                          "spell-without-language"]
        text = page.inner_text("#findings")
        assert "no-preconnect" in text and "Instead: connect at startup" in text
        assert "2 finding(s)" in page.inner_text("#lint-status")
        time.sleep(1.2)  # another poll: nothing shown twice
        assert page.locator("#findings li").count() == 2
        assert problems == []
        page.close()


def test_the_page_says_when_rule_checks_are_off(browser: Any) -> None:
    with run_in_thread(engine=ToneEngine(), api_key=KEY, lint=False) as server:
        page, _ = open_page(browser, server)  # (the 404 of /lint/findings is logged)
        page.wait_for_function("() => window.kugelwirePlayground.lint.enabled === false")
        assert "off" in page.inner_text("#lint-status")
        page.close()
