"""The rule checks on a real server: clients that break each rule on purpose, one that follows
all four. Real sockets (loopback), the tone engine, the library's clients and raw frames."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from kugelwire.conformance._client import RawConnection
from kugelwire.lint import Finding, Linter, LintThresholds, Rule
from kugelwire.protocol import ServerLimits
from kugelwire.server import ThreadedServer, run_in_thread
from kugelwire.synth import ToneEngine
from kugelwire.transports.sync import connect_multi, connect_stream

pytestmark = pytest.mark.timeout(60)

KEY = "lint-key"
CONFIG = {"voice_id": 1, "language": "en"}
#: shorter than the defaults so the tests do not sleep long; the rules are the same
FAST = LintThresholds(mid_reply_gap_s=0.3, cold_text_s=0.1)
PAUSE = 0.45  # longer than FAST.mid_reply_gap_s: a "next user turn"
WARM = 0.25  # longer than FAST.cold_text_s: "pre-connected"


@pytest.fixture
def linter() -> Linter:
    return Linter(FAST, on_summary=None)


@pytest.fixture
def server(linter: Linter) -> Iterator[ThreadedServer]:
    limits = ServerLimits(idle_flush_s=0.3, context_timeout_s=0.4)
    with run_in_thread(engine=ToneEngine(), api_key=KEY, limits=limits, lint=linter) as srv:
        yield srv


def settled(linter: Linter, timeout: float = 5.0) -> list[Finding]:
    """The findings once every watched connection has closed."""
    deadline = time.monotonic() + timeout
    while linter.open_connections and time.monotonic() < deadline:
        time.sleep(0.01)
    assert linter.open_connections == 0
    return linter.findings


def rules(findings: list[Finding]) -> list[Rule]:
    return [f.rule for f in findings]


def raw(server: ThreadedServer, endpoint: str) -> RawConnection:
    return RawConnection(server.url, endpoint, api_key=KEY, timeout=5)


def turn_done(msgs: list[dict[str, object]], n: int = 1) -> bool:
    return sum(1 for m in msgs if m.get("session_closed")) >= n


# -- rule 2/3: flush per sentence --------------------------------------------------------------
def test_flush_per_sentence_with_the_library_client(server: ThreadedServer, linter: Linter) -> None:
    with connect_stream(server.url, api_key=KEY, **CONFIG) as stream:
        time.sleep(WARM)
        for sentence in ["Hello there.", "How are you today?", "I hope well."]:
            list(stream.send_text(sentence, flush=True))  # waits for the turn's audio
    found = settled(linter)
    assert rules(found) == [Rule.FLUSH_PER_SENTENCE]  # one finding for the whole reply
    f = found[0]
    assert f.turn == 2 and f.endpoint == "/ws/tts/stream" and f.connection.startswith("c")
    assert "turn 1 was flushed" in f.evidence and f.latency_ms is not None
    assert "flush once" in f.instead


def test_flush_per_sentence_sent_ahead(server: ThreadedServer, linter: Linter) -> None:
    conn = raw(server, "/ws/tts/stream")
    time.sleep(WARM)
    conn.send({"text": "First sentence. ", "flush": True, **CONFIG})
    conn.send({"text": "Second sentence. ", "flush": True})
    conn.receive_until(lambda m: turn_done(m, 2), 10)
    conn.close()
    found = settled(linter)
    assert rules(found) == [Rule.FLUSH_PER_SENTENCE]
    assert "before its audio was all out" in found[0].evidence


def test_second_flush_for_one_turn(server: ThreadedServer, linter: Linter) -> None:
    conn = raw(server, "/ws/tts/stream")
    time.sleep(WARM)
    conn.send_together({"text": "One turn only.", "flush": True, **CONFIG}, {"flush": True})
    conn.receive_until(turn_done, 10)
    time.sleep(PAUSE)
    conn.send({"text": "A later turn.", "flush": True})
    conn.receive_until(lambda m: turn_done(m, 2), 10)
    conn.close()
    found = settled(linter)
    assert rules(found) == [Rule.FLUSH_PER_SENTENCE]
    assert "second flush for turn 1" in found[0].evidence and found[0].turn == 1


# -- rule 1: one session per turn ---------------------------------------------------------------
def test_connection_per_sentence(server: ThreadedServer, linter: Linter) -> None:
    for sentence in ["Hello there.", "How are you?", "Nice weather.", "Goodbye."]:
        with connect_stream(server.url, api_key=KEY, **CONFIG) as stream:
            list(stream.send_text(sentence, flush=True))
    found = settled(linter)
    assert rules(found) == [Rule.NO_PRECONNECT, Rule.SESSION_PER_SENTENCE]
    series = found[1]
    assert series.turn is None and "2 connections in a row (c1, c2)" in series.evidence
    assert series.connection == "c2"


def test_context_per_sentence(server: ThreadedServer, linter: Linter) -> None:
    conn = raw(server, "/ws/tts/multi")
    time.sleep(WARM)
    for i, sentence in enumerate(["Hello there.", "How are you?", "Fine, thanks."]):
        cid = f"s{i}"
        conn.send({"text": sentence, "context_id": cid, "flush": True,
                   "voice_settings": {"voice_id": 1}, "language": "en"})
        conn.send({"context_id": cid, "close_context": True})
        conn.receive_until(
            lambda m, c=cid: any(x.get("context_closed") and x.get("context_id") == c
                                 for x in m), 10)
    conn.close()
    found = settled(linter)
    assert rules(found) == [Rule.CONTEXT_PER_SENTENCE]
    assert "2 contexts in a row ('s0', 's1')" in found[0].evidence
    assert found[0].context_id == "s1" and found[0].turn is None


# -- rule 4: pre-connect -------------------------------------------------------------------------
def test_no_preconnect(server: ThreadedServer, linter: Linter) -> None:
    with connect_stream(server.url, api_key=KEY, **CONFIG) as stream:
        list(stream.send_text("The first answer, sent at once.", flush=True))
    found = settled(linter)
    assert rules(found) == [Rule.NO_PRECONNECT]
    assert "ms after the handshake" in found[0].evidence and found[0].turn is None


def test_no_preconnect_on_a_connection_kept_for_later_turns(
    server: ThreadedServer, linter: Linter
) -> None:
    with connect_stream(server.url, api_key=KEY, **CONFIG) as stream:  # opened lazily
        list(stream.send_text("The first answer, sent at once.", flush=True))
        time.sleep(PAUSE)
        list(stream.send_text("The second answer, on the same connection.", flush=True))
    found = settled(linter)
    assert rules(found) == [Rule.NO_PRECONNECT] and found[0].connection == "c1"


def test_several_clients_in_a_row_that_preconnect_are_no_series(
    server: ThreadedServer, linter: Linter
) -> None:
    for _ in range(3):  # one short turn each, but every one pre-connected
        with connect_stream(server.url, api_key=KEY, **CONFIG) as stream:
            time.sleep(WARM)
            list(stream.send_text("Just one sentence.", flush=True))
    assert settled(linter) == []


# -- never flushing, spell, close, contexts -------------------------------------------------
def test_never_flush_ends_by_idle_auto_flush(server: ThreadedServer, linter: Linter) -> None:
    conn = raw(server, "/ws/tts/stream")
    time.sleep(WARM)
    for token in ["This ", "turn ", "is ", "never ", "flushed"]:
        conn.send({"text": token, **CONFIG})
    assert conn.receive_until(turn_done, 10)
    conn.close()
    found = settled(linter)
    assert rules(found) == [Rule.IDLE_AUTO_FLUSH]
    f = found[0]
    assert f.turn == 1 and f.latency_ms is not None and 250 <= f.latency_ms < 2000


def test_never_flush_then_disconnect(server: ThreadedServer, linter: Linter) -> None:
    conn = raw(server, "/ws/tts/stream")
    time.sleep(WARM)
    for token in ["Tokens ", "that ", "are ", "never ", "flushed"]:
        conn.send({"text": token, **CONFIG})
    conn.close()  # before the idle auto-flush: the tail is never spoken
    found = settled(linter)
    assert rules(found) == [Rule.NEVER_FLUSHED]
    assert "29 characters" in found[0].evidence and found[0].turn == 1


@pytest.mark.parametrize(
    ("config", "problem"),
    [({"voice_id": 1}, 'no "language"'),
     ({"voice_id": 1, "language": "en", "normalize": False}, '"normalize" is off')],
)
def test_spell_without_language(
    server: ThreadedServer, linter: Linter, config: dict[str, object], problem: str
) -> None:
    with connect_stream(server.url, api_key=KEY, **config) as stream:
        time.sleep(WARM)
        list(stream.send_text("My code is <spell>AB12</spell>.", flush=True))
        time.sleep(PAUSE)
        list(stream.send_text("And <spell>CD34</spell> again.", flush=True))
    found = settled(linter)
    assert rules(found) == [Rule.SPELL_WITHOUT_LANGUAGE] * 2  # once per turn
    assert problem in found[0].evidence and [f.turn for f in found] == [1, 2]


def test_spell_without_language_on_tts(server: ThreadedServer, linter: Linter) -> None:
    conn = raw(server, "/ws/tts")
    time.sleep(WARM)
    conn.send({"text": "Spell <spell>XY</spell> please.", "voice_id": 1})
    conn.receive_until(lambda m: any(x.get("final") for x in m), 10)
    conn.send({"text": "Spell <spell>XY</spell> please.", "voice_id": 1, "language": "en"})
    conn.receive_until(lambda m: sum(1 for x in m if x.get("final")) == 2, 10)
    conn.close()
    found = settled(linter)
    assert rules(found) == [Rule.SPELL_WITHOUT_LANGUAGE] and found[0].turn == 1


def test_text_after_close_socket(server: ThreadedServer, linter: Linter) -> None:
    conn = raw(server, "/ws/tts/stream")
    time.sleep(WARM)
    conn.send_together({"text": "Goodbye for now.", **CONFIG}, {"close_socket": True},
                       {"text": "One more thing."})
    conn.receive_until(lambda m: False, 3)  # until the server closes
    found = settled(linter)
    assert rules(found) == [Rule.TEXT_AFTER_CLOSE]
    assert "after close_socket" in found[0].evidence


def test_text_after_close_context(server: ThreadedServer, linter: Linter) -> None:
    conn = raw(server, "/ws/tts/multi")
    time.sleep(WARM)
    ctx = {"context_id": "a", "voice_settings": {"voice_id": 1}, "language": "en"}
    conn.send_together({"text": "A whole reply, sent as tokens.", **ctx},
                       {"context_id": "a", "close_context": True},
                       {"context_id": "a", "text": "Too late."})
    conn.receive_until(lambda m: any(x.get("context_closed") for x in m), 10)
    conn.close()
    found = settled(linter)
    assert rules(found) == [Rule.TEXT_AFTER_CLOSE] and found[0].context_id == "a"


def test_context_left_open_until_timeout(server: ThreadedServer, linter: Linter) -> None:
    conn = raw(server, "/ws/tts/multi")
    time.sleep(WARM)
    conn.send({"text": "A reply that is flushed but never closed.", "context_id": "x",
               "voice_settings": {"voice_id": 1}, "language": "en", "flush": True})
    assert conn.receive_until(lambda m: any(x.get("context_timeout") for x in m), 10)
    conn.close()
    found = settled(linter)
    assert rules(found) == [Rule.CONTEXT_TIMEOUT] and found[0].context_id == "x"


# -- the clean client ---------------------------------------------------------------------------
def test_a_client_that_follows_all_four_rules(server: ThreadedServer, linter: Linter) -> None:
    with connect_stream(server.url, api_key=KEY, **CONFIG) as stream:  # pre-connect at startup
        time.sleep(WARM)
        for reply in ["Sure! The weather is fine today. Code <spell>AB1</spell>.",
                      "You are welcome. Anything else I can do?"]:
            for token in reply.split(" "):  # tokens as the LLM writes them, unflushed
                stream.send_text(token + " ")
            list(stream.flush())  # one flush at the end of the turn
            time.sleep(PAUSE)  # the user answers
    with connect_multi(server.url, api_key=KEY, language="en") as multi:
        time.sleep(WARM)
        for n in range(2):  # one context per LLM turn, flushed once, closed
            ctx = multi.create_context(f"turn-{n}", voice_id=1)
            for token in ["One ", "context ", "per ", "turn. ", "Closed ", "after."]:
                ctx.send_text(token)
            ctx.close()
            list(ctx)
            time.sleep(PAUSE)
    assert settled(linter) == []
    summaries = linter.summaries
    assert [s.units for s in summaries] == [2, 2] and all(not s.findings for s in summaries)
