"""The protocol's invariants, checked on one connection's transcript (pure; no I/O).

Each check reads what the client sent and what the server answered, in order, and returns
:class:`Violation` s. They hold for every correct server whatever the timing: frames that may
race with a client's cancel or close (audio already in transit) are allowed where the protocol
allows them.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..protocol.config import OUTPUT_FORMATS as _FORMATS
from ..protocol.messages import SAMPLE_WIDTH as _WIDTHS
from ..protocol.ws import MULTI_ENDPOINT, STREAM_ENDPOINT, TTS_ENDPOINT
from ._client import Transcript

__all__ = ["Violation", "check_transcript"]

_TOLERANCE_S = 0.002  # rounding of audio_seconds / dur_ms
_WORD_SLACK_MS = 5.0


@dataclass(frozen=True, slots=True)
class Violation:
    """One broken invariant: its name, what was wrong, and the transcript entry (index)."""

    invariant: str
    message: str
    index: int | None = None

    def __str__(self) -> str:
        at = "" if self.index is None else f" (transcript entry {self.index})"
        return f"{self.invariant}: {self.message}{at}"


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@dataclass(slots=True)
class _Work:
    """The output of one turn / context flush cycle / request, as received so far."""

    started: set[int] = field(default_factory=set)
    completed: set[int] = field(default_factory=set)
    chunk_samples: dict[int, int] = field(default_factory=dict)
    last_chunk_id: int = -1
    idx: int = -1
    frames: int = 0
    samples: int = 0
    sr: int | None = None
    all_samples: int = 0  # multi: the whole context (usage)


class _Checker:
    def __init__(self, transcript: Transcript) -> None:
        self.t = transcript
        self.out: list[Violation] = []
        self.i: int | None = None
        self.enc: str = "pcm_s16le"
        self.sr: int = 24000
        self.word_timestamps = False

    def bad(self, invariant: str, message: str) -> None:
        self.out.append(Violation(invariant, message, self.i))

    # -- what the client asked for --------------------------------------------------------------
    def config(self, msg: Any) -> None:
        fmt = msg.get("output_format")
        if isinstance(fmt, str) and fmt in _FORMATS:
            self.enc, self.sr = _FORMATS[fmt]
        elif _is_int(msg.get("sample_rate")):
            self.enc, self.sr = "pcm_s16le", msg["sample_rate"]
        if "word_timestamps" in msg:
            self.word_timestamps = bool(msg["word_timestamps"])

    # -- frame-level checks shared by all endpoints ---------------------------------------------
    def error_frame(self, msg: Any) -> None:
        if not isinstance(msg.get("error"), str) or not msg["error"]:
            self.bad("error-frame", f"`error` must be a non-empty string: {msg!r}")
        if "error_code" in msg and not isinstance(msg["error_code"], str):
            self.bad("error-frame", f"`error_code` must be a string: {msg!r}")
        if "code" in msg and not _is_int(msg["code"]):
            self.bad("error-frame", f"`code` must be an integer: {msg!r}")
        if "error_code" not in msg or "code" not in msg:
            self.bad("error-frame", f"an error frame carries `error_code` and `code`: {msg!r}")

    def audio(self, msg: Any, work: _Work) -> Any:
        """Validate one audio frame's fields; returns its samples."""
        enc, sr, samples = msg.get("enc"), msg.get("sr"), msg.get("samples")
        if enc not in _WIDTHS:
            self.bad("audio-format", f"unknown `enc` {enc!r}")
            return 0
        if enc != self.enc or sr != self.sr:
            self.bad("audio-format",
                     f"asked for {self.enc} at {self.sr} Hz, got {enc} at {sr!r} Hz")
        if not _is_int(samples) or samples < 0:
            self.bad("audio-format", f"`samples` must be a non-negative integer: {samples!r}")
            return 0
        audio = msg.get("audio")
        if not isinstance(audio, str):
            self.bad("audio-format", "`audio` must be a base64 string")
            return samples
        try:
            data = base64.b64decode(audio, validate=True)
        except (binascii.Error, ValueError):
            self.bad("audio-format", "`audio` is not valid base64")
            return samples
        if len(data) != samples * _WIDTHS[enc]:
            self.bad("audio-format",
                     f"{len(data)} bytes of {enc} but `samples` says {samples}")
        idx = msg.get("idx")
        if not _is_int(idx):
            self.bad("idx", f"`idx` must be an integer: {idx!r}")
        elif work.idx < 0 and idx != 0:
            self.bad("idx", f"the first audio frame has idx {idx}, expected 0")
        elif work.idx >= 0 and idx <= work.idx:
            self.bad("idx", f"idx {idx} after {work.idx}: idx must strictly increase")
        if _is_int(idx):
            work.idx = idx
        work.frames += 1
        work.samples += samples
        work.all_samples += samples
        return samples

    def chunk_started(self, msg: Any, work: _Work) -> None:
        cid = msg.get("chunk_id")
        if not _is_int(cid):
            self.bad("chunk-id", f"generation_started without an integer chunk_id: {msg!r}")
            return
        if cid != work.last_chunk_id + 1:
            self.bad("chunk-id",
                     f"chunk_id {cid} after {work.last_chunk_id}: 0-based, one more each time")
        work.last_chunk_id = max(work.last_chunk_id, cid)
        work.started.add(cid)
        work.chunk_samples[cid] = 0

    def chunk_audio(self, msg: Any, work: _Work, samples: int) -> None:
        cid = msg.get("chunk_id")
        if cid is None:
            self.bad("chunk-id", "audio frame without chunk_id")
        elif cid not in work.started:
            self.bad("frame-order", f"audio for chunk {cid!r} before its generation_started")
        elif cid in work.completed:
            self.bad("frame-order", f"audio for chunk {cid} after its chunk_complete")
        else:
            work.chunk_samples[cid] += samples

    def chunk_complete(self, msg: Any, work: _Work) -> None:
        cid = msg.get("chunk_id")
        if cid not in work.started:
            self.bad("frame-order", f"chunk_complete for chunk {cid!r} that never started")
        elif cid in work.completed:
            self.bad("one-terminal", f"a second chunk_complete for chunk {cid}")
        else:
            work.completed.add(cid)
            secs = msg.get("audio_seconds")
            want = work.chunk_samples.get(cid, 0) / self.sr
            if _is_num(secs) and abs(secs - want) > _TOLERANCE_S:
                self.bad("usage", f"chunk {cid}: audio_seconds {secs} but its audio is "
                                  f"{want:.4f} s")

    def words(self, msg: Any, work: _Work) -> None:
        cid = msg.get("chunk_id")
        entries = msg.get("word_timestamps")
        if not isinstance(entries, list):
            self.bad("word-timestamps", "`word_timestamps` must be a list")
            return
        if cid is not None and cid not in work.started:
            self.bad("word-timestamps", f"timestamps for chunk {cid!r} that never started")
            return
        limit = None if cid is None else work.chunk_samples.get(cid, 0) * 1000 / self.sr
        last = -1.0
        w: Any
        for w in entries:
            if not isinstance(w, dict):
                self.bad("word-timestamps", f"an entry is not an object: {w!r}")
                continue
            start: Any = w.get("start_ms")
            end: Any = w.get("end_ms")
            if not (_is_num(start) and _is_num(end)) or not 0 <= start <= end:
                self.bad("word-timestamps", f"bad start_ms/end_ms in {w!r}")
                continue
            if start < last:
                self.bad("word-timestamps", f"start_ms {start} after {last}: not monotonic")
            last = start
            if limit is not None and end > limit + _WORD_SLACK_MS:
                self.bad("word-timestamps",
                         f"word {w.get('word')!r} ends at {end} ms, after its chunk's "
                         f"{limit:.1f} ms of audio")
            cs: Any = w.get("char_start")
            ce: Any = w.get("char_end")
            if _is_int(cs) and _is_int(ce) and not 0 <= cs <= ce:
                self.bad("word-timestamps", f"char_start/char_end out of order in {w!r}")

    def totals(self, msg: Any, work: _Work, what: str) -> None:
        secs = msg.get("total_audio_seconds")
        want = work.samples / self.sr
        if _is_num(secs) and abs(secs - want) > _TOLERANCE_S:
            self.bad("usage", f"{what}: total_audio_seconds {secs}, audio received {want:.4f} s")
        chunks = msg.get("total_audio_chunks")
        if _is_int(chunks) and chunks != work.frames:
            self.bad("usage", f"{what}: total_audio_chunks {chunks}, audio frames {work.frames}")
        text_chunks = msg.get("total_text_chunks")
        if _is_int(text_chunks) and text_chunks != len(work.started):
            self.bad("usage", f"{what}: total_text_chunks {text_chunks}, text chunks started "
                              f"{len(work.started)}")

    def usage(self, msg: Any, samples: int, what: str) -> None:
        usage = msg.get("usage")
        if usage is None:
            return
        if not isinstance(usage, dict) or not _is_num(usage.get("audio_seconds")):
            self.bad("usage", f"{what}: usage must be an object with audio_seconds: {usage!r}")
            return
        want = samples / self.sr
        if abs(usage["audio_seconds"] - want) > _TOLERANCE_S:
            self.bad("usage", f"{what}: usage.audio_seconds {usage['audio_seconds']}, audio "
                              f"received {want:.4f} s")

    def unfinished(self, work: _Work, what: str) -> None:
        open_ = sorted(work.started - work.completed)
        if open_:
            self.bad("frame-order", f"{what} ended with chunk(s) {open_} not complete")

    # -- per endpoint -------------------------------------------------------------------------
    def run(self) -> list[Violation]:
        {STREAM_ENDPOINT: self.stream, MULTI_ENDPOINT: self.multi, TTS_ENDPOINT: self.tts}[
            self.t.endpoint
        ]()
        return self.out

    def _entries(self) -> Iterable[tuple[int, str, Any]]:
        for i, e in enumerate(self.t.entries):
            self.i = i
            yield i, e.direction, e.message

    def stream(self) -> None:
        work: _Work | None = None  # the turn whose output is arriving
        after_final: dict[str, Any] | None = None
        cancels = interrupted = 0
        flushed = closed = 0  # turns ended by flush/close (sent) / graceful ends (received)
        close_socket = False
        for _, direction, msg in self._entries():
            if direction == "send":
                self.config(msg)
                cancels += bool(msg.get("cancel"))
                flushed += bool(msg.get("flush") or msg.get("close") or msg.get("close_socket"))
                close_socket = close_socket or bool(msg.get("close_socket"))
                continue
            if direction != "recv" or not isinstance(msg, dict):
                continue
            if after_final is not None and not msg.get("session_closed") and not msg.get(
                "error"
            ) and not msg.get("warning"):
                self.bad("frame-order", f"`final` must be followed by session_closed, got "
                                        f"{_kind(msg)}")
                after_final = None
            if "error" in msg:
                self.error_frame(msg)
            elif "audio" in msg:
                if work is None:
                    if interrupted:
                        self.bad("after-interrupted", "audio after `interrupted` (before a new "
                                 "turn's generation_started): a cancelled turn sends nothing more")
                    else:
                        self.bad("frame-order", "audio before any generation_started")
                    continue
                self.chunk_audio(msg, work, self.audio(msg, work))
            elif msg.get("generation_started"):
                if work is None:
                    work = _Work()
                self.chunk_started(msg, work)
            elif msg.get("chunk_complete"):
                if work is None:
                    self.bad("frame-order", "chunk_complete outside a turn")
                    continue
                self.chunk_complete(msg, work)
            elif "word_timestamps" in msg:
                if work is None:
                    self.bad("frame-order", "word_timestamps outside a turn")
                    continue
                self.words(msg, work)
            elif msg.get("final"):
                w = work or _Work()  # an empty flushed turn: final with zero audio
                self.unfinished(w, "the turn")
                self.totals(msg, w, "final")
                after_final = msg
            elif msg.get("session_closed"):
                if after_final is None and not close_socket:
                    self.bad("frame-order", "session_closed without a `final` before it")
                w = work or _Work()
                self.totals(msg, w, "session_closed")
                self.usage(msg, w.samples, "session_closed")
                if after_final is not None:
                    closed += 1
                after_final, work = None, None
            elif msg.get("interrupted"):
                interrupted += 1
                work, after_final = None, None
        self.i = None
        if interrupted != cancels:
            self.bad("one-terminal", f"{cancels} cancel(s) sent, {interrupted} `interrupted`")
        if closed > flushed:
            self.bad("one-terminal", f"{closed} turns ended gracefully, {flushed} were flushed")

    def multi(self) -> None:
        contexts: dict[str, _Work] = {}
        cycles: dict[str, _Work] = {}
        formats: dict[str, tuple[str, int]] = {}  # bound when the context is created
        gone: set[str] = set()
        sent_open: set[str] = set()  # contexts the client has not closed
        flushes: dict[str, int] = {}
        finals: dict[str, int] = {}
        close_socket = False
        session_closed = False
        cancels = interrupted = 0
        for _, direction, msg in self._entries():
            if direction == "send":
                self.config(msg)
                cid = msg.get("context_id")
                if isinstance(cid, str):
                    if cid not in sent_open and not msg.get("close_context"):
                        sent_open.add(cid)
                        formats[cid] = (self.enc, self.sr)
                    flushes[cid] = flushes.get(cid, 0) + bool(msg.get("flush"))
                    if msg.get("close_context"):
                        sent_open.discard(cid)
                        flushes[cid] += not msg.get("immediate")
                cancels += bool(msg.get("cancel"))
                if msg.get("close_socket"):
                    close_socket = True
                    for c in sent_open:  # close_socket closes every context gracefully
                        flushes[c] = flushes.get(c, 0) + 1
                    sent_open.clear()
                continue
            if direction != "recv" or not isinstance(msg, dict):
                continue
            if session_closed:
                self.bad("frame-order", f"{_kind(msg)} after session_closed")
            if "error" in msg:
                self.error_frame(msg)
                continue
            if msg.get("interrupted"):
                interrupted += 1
                target = msg.get("context_id")
                for c in [target] if isinstance(target, str) else list(cycles):
                    if c in cycles:
                        cycles[c] = _Work()
                continue
            if msg.get("session_closed"):
                if not close_socket:
                    self.bad("frame-order", "session_closed without close_socket")
                if "context_id" in msg or "usage" in msg:
                    self.bad("frame-order", "multi session_closed carries no context_id/usage")
                if contexts:
                    self.bad("one-terminal",
                             f"session_closed while contexts {sorted(contexts)} are open")
                session_closed = True
                continue
            cid = msg.get("context_id")
            if not isinstance(cid, str):
                self.bad("frame-order", f"{_kind(msg)} without a context_id on /ws/tts/multi")
                continue
            if msg.get("context_created"):
                if cid in contexts:
                    self.bad("one-terminal", f"context {cid!r} created twice")
                contexts[cid] = _Work()
                cycles[cid] = _Work()
                gone.discard(cid)
                continue
            if cid not in contexts:
                where = "after its context_closed" if cid in gone else "before context_created"
                self.bad("frame-order", f"{_kind(msg)} for context {cid!r} {where}")
                continue
            ctx, cyc = contexts[cid], cycles[cid]
            self.enc, self.sr = formats.get(cid, (self.enc, self.sr))
            if "audio" in msg:
                samples = self.audio(msg, cyc)
                ctx.all_samples += samples
                self.chunk_audio(msg, ctx, samples)
            elif msg.get("generation_started"):
                self.chunk_started(msg, ctx)
            elif msg.get("chunk_complete"):
                self.chunk_complete(msg, ctx)
            elif "word_timestamps" in msg:
                self.words(msg, ctx)
            elif msg.get("final"):
                finals[cid] = finals.get(cid, 0) + 1
                cycles[cid] = _Work()
            elif msg.get("context_closed") or msg.get("context_timeout"):
                if msg.get("context_timeout"):
                    continue  # context_closed follows
                self.usage(msg, ctx.all_samples, f"context {cid!r} context_closed")
                if finals.get(cid, 0) > flushes.get(cid, 0):
                    self.bad("one-terminal", f"context {cid!r}: {finals[cid]} finals for "
                                             f"{flushes.get(cid, 0)} flushes/closes")
                del contexts[cid]
                cycles.pop(cid, None)
                finals.pop(cid, None)
                flushes.pop(cid, None)
                gone.add(cid)
        self.i = None
        if interrupted != cancels:
            self.bad("one-terminal", f"{cancels} cancel(s) sent, {interrupted} `interrupted`")

    def tts(self) -> None:
        work: _Work | None = None
        requests = cancels = interrupted = finals = errors = updates = 0
        for _, direction, msg in self._entries():
            if direction == "send":
                if msg.get("text"):
                    requests += 1
                    self.config(msg)
                cancels += bool(msg.get("cancel"))
                updates += "update_settings" in msg  # may be answered by an error frame
                continue
            if direction != "recv" or not isinstance(msg, dict):
                continue
            if "error" in msg:
                self.error_frame(msg)
                errors += 1  # (a request's own or a settings update's: work goes on)
            elif "audio" in msg:
                if work is None:
                    work = _Work()
                self.audio(msg, work)
            elif "word_timestamps" in msg:
                if work is None:
                    self.bad("frame-order", "word_timestamps outside a request")
            elif msg.get("final"):
                finals += 1
                w = work or _Work()
                if _is_int(msg.get("chunks")) and msg["chunks"] != w.frames:
                    self.bad("usage", f"final: chunks {msg['chunks']}, audio frames {w.frames}")
                if _is_int(msg.get("total_samples")) and msg["total_samples"] != w.samples:
                    self.bad("usage", f"final: total_samples {msg['total_samples']}, audio "
                                      f"samples {w.samples}")
                dur: Any = msg.get("dur_ms")
                if _is_num(dur) and abs(dur - w.samples * 1000 / self.sr) > 1000 * _TOLERANCE_S:
                    self.bad("usage", f"final: dur_ms {dur}, audio "
                                      f"{w.samples * 1000 / self.sr:.1f} ms")
                self.usage(msg, w.samples, "final")
                work = None
            elif msg.get("interrupted"):
                interrupted += 1
                work = None
        self.i = None
        if interrupted != cancels:
            self.bad("one-terminal", f"{cancels} cancel(s) sent, {interrupted} `interrupted`")
        if finals + errors > requests + updates:
            self.bad("one-terminal", f"{finals} finals and {errors} errors for {requests} "
                                     f"requests and {updates} settings updates")


def _kind(msg: Any) -> str:
    for key in ("audio", "error", "generation_started", "chunk_complete", "word_timestamps",
                "final", "session_closed", "interrupted", "context_created", "context_closed",
                "context_timeout", "warning", "settings_updated"):
        if key in msg:
            return f"`{key}`"
    return "a frame"


def check_transcript(transcript: Transcript) -> list[Violation]:
    """Every invariant broken on one connection (empty: it conforms)."""
    return _Checker(transcript).run()
