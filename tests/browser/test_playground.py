"""The playground in a real headless Chromium (Playwright), against the asyncio runner on
loopback with the ToneEngine.

Needs ``/usr/bin/chromium`` (Debian's ``chromium``; CI installs it with ``.ci/install-chromium``)
and the ``playwright`` Python package (its bundled browsers are not used).
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kugelwire.server import ThreadedServer, run_in_thread
from kugelwire.synth import ToneEngine

from . import _png

CHROMIUM = "/usr/bin/chromium"
if not os.path.exists(CHROMIUM):
    pytest.skip(
        f"{CHROMIUM} is missing: run .ci/install-chromium (Debian chromium) for the browser tests",
        allow_module_level=True,
    )
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")

pytestmark = pytest.mark.timeout(30)

# the closed network refuses Chromium's background connections: keep the browser quiet
ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
]
KEY = "browser key+/é?&"  # needs URL-encoding in the upgrade's query
TEAL = (0x5E, 0xEA, 0xD4)  # the page's accent colour (only present when its CSS applied)
LONG_TEXT = " ".join(
    ["One two three four five six seven eight nine ten.", "Eleven twelve thirteen fourteen."] * 6
)


@pytest.fixture(scope="module")
def engine() -> ToneEngine:
    # generation at 0.3x real time: a turn takes long enough to barge into, and each chunk's
    # word_timestamps (sent when the chunk is complete) arrive before its audio has played
    return ToneEngine(realtime_factor=0.3)


@pytest.fixture(scope="module")
def server(engine: ToneEngine) -> Iterator[ThreadedServer]:
    with run_in_thread(engine=engine, api_key=KEY) as handle:
        yield handle


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, timeout=15_000)
        yield b
        b.close()


class Page:
    """One tab on the playground, recording console problems and WebSocket frames sent."""

    def __init__(self, browser: Any, server: ThreadedServer) -> None:
        self.page = browser.new_page(viewport={"width": 1280, "height": 800})
        self.page.set_default_timeout(15_000)
        self.problems: list[str] = []
        self.sent: list[tuple[str, dict[str, Any]]] = []  # (socket url, frame)
        self.page.on("pageerror", lambda exc: self.problems.append(f"pageerror: {exc}"))
        self.page.on(
            "console",
            lambda msg: self.problems.append(f"console {msg.type}: {msg.text}")
            if msg.type in ("error", "warning") else None,
        )
        self.page.on("websocket", self._on_websocket)
        self.page.goto(server.url.replace("ws://", "http://") + "/")

    def _on_websocket(self, ws: Any) -> None:
        ws.on("framesent", lambda payload: self.sent.append((ws.url, json.loads(payload))))

    def hooks(self) -> dict[str, Any]:
        # a function, not a string: the page's CSP forbids eval
        script = "() => JSON.parse(JSON.stringify(window.kugelwirePlayground))"
        return dict(self.page.evaluate(script))

    def wait(self, condition: str) -> None:
        script = f"() => {{ const h = window.kugelwirePlayground; return {condition}; }}"
        self.page.wait_for_function(script)

    def click_stop(self) -> tuple[int, int]:
        """Press Stop; the number of playing sources just before and right after the click."""
        before, after = self.page.evaluate(
            """() => {
                const h = window.kugelwirePlayground;
                const before = h.activeSources;
                document.getElementById("stop").click();
                return [before, h.activeSources];
            }"""
        )
        return int(before), int(after)

    def close(self) -> None:
        self.page.close()


@pytest.fixture
def page(browser: Any, server: ThreadedServer) -> Iterator[Page]:
    p = Page(browser, server)
    yield p
    p.close()


def test_stream_turn_plays_highlights_and_times(page: Page, tmp_path: Path) -> None:
    pg = page.page
    pg.fill("#api-key", KEY)
    pg.fill("#text", "Hello from the browser. Every word arrives as a token!")
    pg.fill("#rate", "25")
    assert pg.is_checked("#as-tokens")
    pg.click("#speak")
    page.wait("h.sessionClosed && h.highlightedWords >= 2")
    h = page.hooks()
    assert h["errors"] == [] and h["final"] and not h["interrupted"]
    assert h["chunksScheduled"] == h["framesReceived"] > 0
    assert h["wordTimestamps"] == 10
    assert h["usage"]["audio_seconds"] == pytest.approx(h["audioSeconds"], abs=1e-3)
    assert isinstance(h["firstAudioMs"], int) and 0 < h["firstAudioMs"] < 10_000
    assert 0 < h["rtf"] < 2
    assert re.fullmatch(r"\d+\.\d{3}", pg.inner_text("#st-rtf"))
    assert re.fullmatch(r"\d+ ms", pg.inner_text("#st-first"))
    assert pg.locator("#chunks tr").count() >= 1
    assert pg.locator("#transcript .w.spoken").count() >= 2

    # what the page sent: the key URL-encoded in the query, config (with word_timestamps) in the
    # first frame, the text token by token, one flush at the end
    urls = {url for url, _ in page.sent}
    assert len(urls) == 1
    url = urls.pop()
    assert url.startswith(page.page.url.replace("http://", "ws://").rstrip("/") + "/ws/tts/stream?")
    assert "api_key=browser%20key%2B%2F%C3%A9%3F%26" in url
    frames = [f for _, f in page.sent]
    assert frames[0]["word_timestamps"] is True and frames[0]["voice_id"] == 1
    assert frames[0]["sample_rate"] == 24000 and frames[0]["language"] == "en"
    assert frames[-1] == {"flush": True}
    assert sum(1 for f in frames if f.get("flush")) == 1
    assert "".join(f.get("text", "") for f in frames) == (
        "Hello from the browser. Every word arrives as a token!"
    )
    assert len(frames) == 11  # ten tokens, one flush

    shot = tmp_path / "playground.png"
    pg.screenshot(path=str(shot))
    seen = _png.colours(shot.read_bytes())
    assert len(seen) > 50  # not blank
    assert any(c[:3] == TEAL for c in seen)  # the page's styles applied under its CSP
    assert page.problems == []


def test_stop_barges_in_mid_turn(page: Page, engine: ToneEngine) -> None:
    pg = page.page
    pg.fill("#api-key", KEY)
    pg.fill("#text", LONG_TEXT)
    pg.uncheck("#as-tokens")
    runs_before = len(engine.runs)
    pg.click("#speak")
    # generation runs ahead of playback: wait until several chunks are queued, then press Stop
    page.wait("h.chunksScheduled >= 4")
    playing_before, playing_after = page.click_stop()
    assert playing_before >= 2
    assert playing_after == 0  # every scheduled AudioBufferSourceNode was stopped at once
    t0 = time.monotonic()
    page.wait("h.interrupted && h.turnState === 'idle'")
    assert time.monotonic() - t0 < 2.0
    scheduled = page.hooks()["chunksScheduled"]
    time.sleep(0.6)  # the turn would still be generating: nothing more may be scheduled
    h = page.hooks()
    assert h["chunksScheduled"] == scheduled
    assert h["audioAfterStop"] == 0
    assert h["audioAfterInterrupted"] == 0
    assert h["activeSources"] == 0
    assert not h["final"] and not h["sessionClosed"]
    assert h["audioSeconds"] < 3.0  # far less than the whole text (> 10 s)
    assert [f for _, f in page.sent if "cancel" in f] == [{"cancel": True}]
    # the server really stopped synthesizing: the engine saw its cancel token
    runs = list(engine.runs)[runs_before:]
    assert runs and any(run.cancelled or run.closed_early for run in runs)
    assert not all(run.finished for run in runs)
    assert pg.is_enabled("#speak") and pg.is_disabled("#stop")
    assert page.problems == []

    # the socket stays usable: the next turn plays to the end
    pg.fill("#text", "And a new turn.")
    pg.click("#speak")
    page.wait("h.sessionClosed")
    assert page.hooks()["chunksScheduled"] > 0 and not page.hooks()["interrupted"]


def test_wrong_key_is_reported(page: Page) -> None:
    pg = page.page
    pg.fill("#api-key", "not the key")
    pg.click("#speak")
    pg.wait_for_function(
        "() => document.getElementById('conn-text').textContent.includes('failed')"
    )
    page.wait("h.turnState === 'idle'")
    assert page.hooks()["framesReceived"] == 0
    assert pg.is_enabled("#speak")


def test_multi_context_two_voices_take_turns(page: Page) -> None:
    pg = page.page
    pg.fill("#api-key", KEY)
    pg.click("#tab-multi")
    assert pg.is_visible("#multi-text") and not pg.is_visible("#text")
    pg.fill("#multi-text", "First voice speaks.\nSecond voice answers.\nFirst again.\nSecond ends.")
    pg.click("#multi-speak")
    page.wait("h.multi.sessionClosed && h.multi.segmentsDone === 4")
    m = page.hooks()["multi"]
    assert m["errors"] == []
    assert sorted(m["contexts"]) == sorted(m["ids"]) and len(set(m["ids"])) == 2
    assert sorted(m["closed"]) == sorted(m["ids"])
    assert m["finals"] == 4
    # lines are scheduled strictly in order, each line's audio before the next line's
    order = m["scheduled"]
    assert order == sorted(order) and set(order) == {0, 1, 2, 3}

    assert all(url.split("?")[0].endswith("/ws/tts/multi") for url, _ in page.sent)
    frames = [f for _, f in page.sent]
    inits = [f for f in frames if "voice_settings" in f]
    assert [f["voice_settings"]["voice_id"] for f in inits] == [1, 2]
    a, b = (f["context_id"] for f in inits)
    texts = [f for f in frames if f.get("flush")]
    assert [f["context_id"] for f in texts] == [a, b, a, b]
    assert [f["text"].strip() for f in texts] == [
        "First voice speaks.", "Second voice answers.", "First again.", "Second ends."
    ]
    assert page.problems == []


def test_audio_in_transit_after_stop_is_dropped(page: Page) -> None:
    """Audio frames of the cancelled turn that arrive before (or after) ``interrupted`` are never
    played (REFERENCE §7.1). A WebSocket route relays the real server and replays one audio
    frame right before and right after the ``interrupted`` ack."""
    if not hasattr(page.page, "route_web_socket"):
        pytest.skip("needs playwright >= 1.48 (Page.route_web_socket)")
    audio: list[str] = []

    def relay(ws: Any) -> None:
        upstream = ws.connect_to_server()
        ws.on_message(upstream.send)

        def from_server(message: str | bytes) -> None:
            assert isinstance(message, str)
            if '"interrupted"' in message and audio:
                ws.send(audio[0])  # still in transit when the ack was sent
                ws.send(message)
                ws.send(audio[0])  # a server bug: audio after the ack
                return
            if '"audio"' in message:
                audio.append(message)
            ws.send(message)

        upstream.on_message(from_server)

    page.page.route_web_socket(re.compile(r"/ws/tts/stream"), relay)
    pg = page.page
    pg.fill("#api-key", KEY)
    pg.fill("#text", LONG_TEXT)
    pg.uncheck("#as-tokens")
    pg.click("#speak")
    page.wait("h.chunksScheduled >= 2")
    page.click_stop()
    page.wait("h.interrupted && h.turnState === 'idle'")
    scheduled = page.hooks()["chunksScheduled"]
    time.sleep(0.3)
    h = page.hooks()
    assert h["framesDiscarded"] >= 1
    assert h["audioAfterInterrupted"] == 1
    assert h["audioAfterStop"] == 0
    assert h["chunksScheduled"] == scheduled
    assert h["activeSources"] == 0
