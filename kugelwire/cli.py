"""The ``kugelwire`` command line (also ``python -m kugelwire``).

* ``kugelwire serve`` — a local KugelAudio-compatible server (eSpeak NG voice or the tone engine).
* ``kugelwire say TEXT`` — stream TEXT word by word like an LLM, one flush at the end, into a WAV.
* ``kugelwire stream`` — the same for tokens read from stdin as they arrive.
* ``kugelwire demo`` — a server in this process plus ``say`` with a built-in paragraph.
* ``kugelwire voices`` — list a server's voices (``GET /v1/voices``).

``say`` and ``stream`` work against the real service too (``--url wss://api.kugelaudio.com``
with ``--api-key`` or ``KUGELAUDIO_API_KEY``). Errors are one line on stderr starting with
``kugelwire:``, exit status 1 (2 for a bad flag). Ctrl-C stops any command at once with exit
status 130; ``say``, ``stream`` and ``demo`` first save the audio received so far.

Output files: ``--out NAME.wav`` writes a WAV file (PCM16, or G.711 µ-law / A-law with their
WAV format tags 7 / 6); ``--raw``, or a name ending in one of :data:`RAW_SUFFIXES`, writes the
audio bytes as they came off the wire, with no header.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import codecs
import contextlib
import logging
import math
import os
import re
import signal
import socket
import ssl
import struct
import sys
import textwrap
import threading
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import IO, Any, NoReturn, TextIO
from urllib.parse import urlsplit

from . import __version__
from .errors import AuthenticationError, ConnectionFailed, KugelwireError, RateLimitError
from .protocol.config import OUTPUT_FORMATS, SAMPLE_RATES
from .protocol.errors import LocalProtocolError
from .protocol.events import (
    AudioChunk,
    ClientEvent,
    ContextClosed,
    ErrorCode,
    Interrupted,
    RequestFinal,
    ServerError,
    TurnClosed,
    WordTimestamps,
)
from .protocol.messages import Usage, WordTimestamp
from .protocol.ws import ENDPOINT_KINDS
from .synth import Engine, ToneEngine

__all__ = [
    "CLI_OUTPUT_FORMATS",
    "DEMO_TEXT",
    "RAW_SUFFIXES",
    "SpeakResult",
    "main",
    "make_engine",
    "speak",
    "tokenize",
    "wav_header",
]

DEFAULT_URL = "ws://127.0.0.1:8765"
#: How long a Ctrl-C lets open connections and engine work wind down before they are aborted.
_INTERRUPT_GRACE_S = 0.5
DEMO_TEXT = (
    "Hello! This is kugelwire, speaking through a local KugelAudio compatible server. "
    "Every word you hear was streamed as a token, the way a language model writes, and the "
    "server started speaking before the paragraph was finished. "
    "You can write to <spell>hi@kugel.dev</spell>. Goodbye!"
)


class CliError(Exception):
    """A failure reported as one line on stderr (exit status 1)."""


class _Interrupted(Exception):
    """Ctrl-C: reported as one line on stderr (exit status 130)."""


# -- engines --------------------------------------------------------------------------------------
def make_engine(name: str, *, quiet: bool = False) -> Engine:
    """``espeak`` (needs the ``voice`` extra), ``tone``, or ``auto`` (eSpeak when installed)."""
    if name == "tone":
        return ToneEngine()
    try:
        from .synth import EspeakEngine
    except ImportError as exc:
        if name == "espeak":
            raise CliError(
                f"the eSpeak voice is not installed ({exc}); "
                "run: python -m pip install 'kugelwire[voice]'"
            ) from None
        if not quiet:
            print(
                "kugelwire: eSpeak voice not installed (pip install 'kugelwire[voice]'); "
                "using the tone engine",
                file=sys.stderr,
            )
        return ToneEngine()
    engine = EspeakEngine()
    warm_up = getattr(engine, "warm_up", None)
    if callable(warm_up):
        warm_up()
    return engine


# -- tokens ---------------------------------------------------------------------------------------
_TOKEN = re.compile(r"\s*\S+")


def tokenize(text: str) -> list[str]:
    """Split text into LLM-like tokens: each word with the whitespace before it."""
    tokens = _TOKEN.findall(text)
    tail = text[sum(map(len, tokens)) :]
    if tail and tokens:
        tokens[-1] += tail
    return tokens


async def _paced(tokens: Iterable[str], delay_s: float) -> AsyncIterator[str]:
    for i, token in enumerate(tokens):
        if i and delay_s > 0:
            await asyncio.sleep(delay_s)
        yield token


async def _stdin_tokens(stream: TextIO) -> AsyncIterator[str]:
    """Yield text from stdin as soon as it arrives (not line by line).

    A daemon thread does the blocking reads, so a Ctrl-C never waits for stdin to close (a
    worker of the loop's executor would keep the process alive until it did).
    """
    loop = asyncio.get_running_loop()
    fd = stream.fileno()
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    chunks: asyncio.Queue[bytes] = asyncio.Queue()

    def read() -> None:
        while True:
            try:
                data = os.read(fd, 4096)
            except OSError:
                data = b""
            try:
                loop.call_soon_threadsafe(chunks.put_nowait, data)
            except RuntimeError:  # the loop is closed: nobody is listening any more
                return
            if not data:
                return

    threading.Thread(target=read, name="kugelwire-stdin", daemon=True).start()
    while True:
        data = await chunks.get()
        text = decoder.decode(data, final=not data)
        if text:
            yield text
        if not data:
            return


# -- the client run -------------------------------------------------------------------------------
@dataclass
class SpeakResult:
    """What one ``say``/``stream`` run produced."""

    pcm: bytearray = field(default_factory=bytearray)
    sample_rate: int = 0
    #: the wire encoding of the audio (``pcm_s16le``, ``mulaw`` or ``alaw``); "" before any
    encoding: str = ""
    #: the audio as it came off the wire when it is not PCM16 (G.711 bytes); PCM is in ``pcm``
    encoded: bytearray = field(default_factory=bytearray)
    chunks: int = 0
    first_token_at: float | None = None
    flush_at: float | None = None
    first_audio_at: float | None = None
    last_audio_at: float | None = None
    usage: Usage | None = None
    words: list[WordTimestamp] = field(default_factory=list)
    turns: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def audio_seconds(self) -> float:
        return len(self.pcm) / 2 / self.sample_rate if self.sample_rate else 0.0

    @property
    def rms(self) -> float:
        """Root mean square of the PCM16 audio (0 for silence)."""
        if len(self.pcm) < 2:
            return 0.0
        samples = array.array("h")
        samples.frombytes(bytes(self.pcm[: len(self.pcm) // 2 * 2]))
        if sys.byteorder == "big":  # pragma: no cover
            samples.byteswap()
        return math.sqrt(sum(s * s for s in samples) / len(samples))


class _Progress:
    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def update(self, result: SpeakResult) -> None:
        if self.enabled:
            sys.stderr.write(
                f"\r  {result.audio_seconds:6.2f} s of audio, {result.chunks} chunks"
            )
            sys.stderr.flush()

    def done(self) -> None:
        if self.enabled:
            sys.stderr.write("\r" + " " * 40 + "\r")
            sys.stderr.flush()


#: Errors that refuse the turn itself (a missing or unknown voice or model).
_REFUSED = frozenset({ErrorCode.MISSING_VOICE_ID, ErrorCode.NOT_FOUND})


def _on_event(ev: ClientEvent, result: SpeakResult, progress: _Progress, now: float) -> None:
    if isinstance(ev, AudioChunk):
        if result.first_audio_at is None:
            result.first_audio_at = now
        result.last_audio_at = now
        result.sample_rate = result.sample_rate or ev.sample_rate
        result.encoding = result.encoding or ev.encoding
        if ev.encoding != "pcm_s16le":
            result.encoded += ev.data
        result.pcm += ev.pcm16()
        result.chunks += 1
        progress.update(result)
    elif isinstance(ev, WordTimestamps):
        result.words.extend(ev.turn_words)
    elif isinstance(ev, TurnClosed | RequestFinal | ContextClosed):
        if ev.usage is not None:
            prev = result.usage
            result.usage = ev.usage if prev is None else Usage(
                round(prev.audio_seconds + ev.usage.audio_seconds, 6),
                (prev.characters or 0) + (ev.usage.characters or 0),
                ev.usage.cost_cents, ev.usage.currency, ev.usage.cost_unavailable,
                ev.usage.model_id,
            )
    elif isinstance(ev, ServerError):
        if ev.error_code in _REFUSED:  # the turn never started on the server: nothing will come
            raise CliError(f"the server refused the request: {ev.error_code.value}: {ev.message}"
                           + (" (list the voices with: kugelwire voices)"
                              if ev.error_code is ErrorCode.NOT_FOUND else ""))
        result.errors.append(f"{ev.code.value}: {ev.message}")
    elif isinstance(ev, Interrupted):
        result.errors.append("the turn was interrupted")


async def speak(
    url: str,
    tokens: AsyncIterator[str],
    *,
    api_key: str | None = None,
    endpoint: str = "stream",
    progress: bool = False,
    result: SpeakResult | None = None,
    **config: Any,
) -> SpeakResult:
    """Stream ``tokens`` to ``url`` on one endpoint, one flush at the end; gather the audio.

    Sending and receiving run concurrently: a token is sent the moment it arrives, whatever the
    audio is doing. The audio is gathered into ``result`` (a new one by default), so a caller
    that is cancelled midway still has what arrived.
    """
    from .transports.asyncio import connect_multi, connect_stream, connect_tts

    loop = asyncio.get_running_loop()
    result = SpeakResult() if result is None else result
    bar = _Progress(progress)

    async def consume(events: AsyncIterator[ClientEvent]) -> None:
        async for ev in events:
            _on_event(ev, result, bar, loop.time())

    try:
        if endpoint == "stream":
            async with await connect_stream(url, api_key=api_key, **config) as stream:
                turns: asyncio.Queue[Any] = asyncio.Queue()

                async def consume_turns() -> None:
                    while (turn := await turns.get()) is not None:
                        await consume(turn)

                consumer = asyncio.create_task(consume_turns())
                try:
                    current: Any = None
                    async for token in tokens:
                        if current is None and not token.strip():
                            continue  # leading whitespace would start a turn with no words
                        turn = await stream.send_text(token)
                        if result.first_token_at is None and turn is not None:
                            result.first_token_at = loop.time()
                        if turn is not None and turn is not current:
                            current = turn  # a new turn (the client's idle guard ended the last)
                            result.turns += 1
                            turns.put_nowait(turn)
                    if current is None:
                        raise CliError("no text to speak")
                    result.flush_at = loop.time()
                    with contextlib.suppress(LocalProtocolError):  # idle guard flushed it already
                        await stream.flush()
                    turns.put_nowait(None)
                    await consumer
                finally:
                    await _reap(consumer)
        elif endpoint == "multi":
            async with await connect_multi(url, api_key=api_key, **config) as multi:
                ctx = await multi.create_context("kugelwire-cli", voice_id=config.get("voice_id"))
                consumer = asyncio.create_task(consume(ctx))
                try:
                    async for token in tokens:
                        if result.first_token_at is None and token.strip():
                            result.first_token_at = loop.time()
                        await ctx.send_text(token)
                    if result.first_token_at is None:
                        raise CliError("no text to speak")
                    result.flush_at = loop.time()
                    await ctx.flush()
                    await ctx.close()
                    result.turns = 1
                    await consumer
                finally:
                    await _reap(consumer)
        elif endpoint == "tts":
            text = "".join([t async for t in tokens])
            if not text.strip():
                raise CliError("no text to speak")
            async with await connect_tts(url, api_key=api_key, **config) as tts:
                result.first_token_at = result.flush_at = loop.time()
                result.turns = 1
                await consume(tts.synthesize(text))
        else:
            raise CliError(f"unknown endpoint {endpoint!r} (stream, multi or tts)")
    finally:
        bar.done()
    return result


async def _reap(task: asyncio.Task[None]) -> None:
    """End a helper task on every way out, and retrieve its outcome.

    On the normal path the task was awaited already; when the caller fails or is cancelled
    (Ctrl-C) the task is cancelled and awaited here, so its exception (the connection closed
    under it) is never left for asyncio to report as "Task exception was never retrieved".
    """
    if not task.done():
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task


# -- output files ---------------------------------------------------------------------------------
#: ``--output-format`` values: PCM at every sample rate of the protocol, and G.711 at 8 kHz.
CLI_OUTPUT_FORMATS: tuple[str, ...] = (
    *(f"pcm_{rate}" for rate in sorted(SAMPLE_RATES)),
    *(name for name, (enc, _) in OUTPUT_FORMATS.items() if enc != "pcm_s16le"),
)
#: ``--out`` names ending in one of these are written as raw audio bytes (no WAV header).
RAW_SUFFIXES: tuple[str, ...] = (".raw", ".pcm", ".ulaw", ".alaw", ".ul", ".al")
#: wire encoding -> (WAV format tag, bits per sample)
_WAV_FORMATS = {"pcm_s16le": (1, 16), "mulaw": (7, 8), "alaw": (6, 8)}


def wav_header(encoding: str, sample_rate: int, data_bytes: int) -> bytes:
    """The RIFF/WAVE header of a mono file of ``data_bytes`` audio bytes in ``encoding``.

    PCM16 gets the classic 16-byte ``fmt `` chunk (format tag 1). G.711 (``mulaw``: tag 7,
    ``alaw``: tag 6) gets the 18-byte ``fmt `` chunk of non-PCM formats and a ``fact`` chunk
    with the sample count, as the WAVE specification asks; the stdlib ``wave`` module cannot
    write those. An odd-sized ``data`` chunk is followed by one pad byte (counted in the RIFF
    size, not in the data size): write ``header + data + b"\0" * (data_bytes % 2)``.
    """
    tag, bits = _WAV_FORMATS[encoding]
    block = bits // 8
    if tag == 1:
        fmt = struct.pack("<HHIIHH", tag, 1, sample_rate, sample_rate * block, block, bits)
        fact = b""
    else:
        fmt = struct.pack("<HHIIHHH", tag, 1, sample_rate, sample_rate * block, block, bits, 0)
        fact = b"fact" + struct.pack("<II", 4, data_bytes // block)
    chunks = b"fmt " + struct.pack("<I", len(fmt)) + fmt + fact
    riff_size = 4 + len(chunks) + 8 + data_bytes + data_bytes % 2
    return (b"RIFF" + struct.pack("<I", riff_size) + b"WAVE" + chunks
            + b"data" + struct.pack("<I", data_bytes))


def _is_raw(path: str, raw: bool = False) -> bool:
    return raw or path.lower().endswith(RAW_SUFFIXES)


def _is_stdout(path: str) -> bool:
    return path == "-"


def _shown(path: str) -> str:
    return "stdout" if _is_stdout(path) else path


def _open_output(path: str) -> IO[bytes]:
    """Open ``--out`` for writing before anything is synthesised (a bad path fails first);
    ``-`` is stdout."""
    if _is_stdout(path):
        return sys.stdout.buffer
    if os.path.isdir(path):
        raise CliError(f"cannot write {path}: it is a directory (give a file name with --out)")
    try:
        # append mode: an existing file is only replaced once there is something to write
        return open(path, "ab")  # closed by _write_wav
    except OSError as exc:
        raise CliError(f"cannot write {path}: {exc.strerror or exc} (choose another --out)"
                       ) from None


def _write_wav(
    path: str, result: SpeakResult, out: IO[bytes] | None = None, *, raw: bool = False,
    encoding: str = "pcm_s16le", sample_rate: int = 24000,
) -> None:
    """Write ``result``'s audio to ``out`` (or ``path``): a WAV file, or raw bytes.

    ``encoding`` and ``sample_rate`` are what was asked for; the audio's own (from its frames)
    win when any arrived, so an empty file is still a valid file of the requested format.
    """
    encoding = result.encoding or encoding
    rate = result.sample_rate or sample_rate
    data = bytes(result.pcm) if encoding == "pcm_s16le" else bytes(result.encoded)
    own = out is None
    if out is None:
        out = _open_output(path)
    try:
        with contextlib.suppress(OSError):  # a pipe or a device (--out /dev/stdout) has no size
            out.truncate(0)
        if _is_raw(path, raw):
            out.write(data)
        else:
            out.write(wav_header(encoding, rate, len(data)) + data + b"\0" * (len(data) % 2))
    finally:
        if out is sys.stdout.buffer:
            out.flush()
        elif own or not out.closed:
            out.close()


def _report(result: SpeakResult, out_path: str, show_words: bool) -> None:
    # the audio itself may be going to stdout (--out -): then the report goes to stderr
    file = sys.stderr if _is_stdout(out_path) else sys.stdout

    ms = 1000.0
    enc = "" if result.encoding in ("", "pcm_s16le") else f" {result.encoding}"
    print(f"wrote {_shown(out_path)}: {result.audio_seconds:.2f} s of{enc} audio at "
          f"{result.sample_rate} Hz "
          f"({result.chunks} chunks, {result.turns} turn{'s' if result.turns != 1 else ''})",
          file=file)
    if result.first_audio_at is not None and result.first_token_at is not None:
        line = f"time to first audio: {(result.first_audio_at - result.first_token_at) * ms:.0f} ms"
        line += " after the first token"
        if result.flush_at is not None:
            delta = (result.first_audio_at - result.flush_at) * ms
            line += (f", {delta:.0f} ms after the flush" if delta >= 0
                     else f", {-delta:.0f} ms before the flush (sentence-boundary chunking)")
        print(line, file=file)
    if result.last_audio_at is not None and result.first_token_at is not None:
        wall = result.last_audio_at - result.first_token_at
        if result.audio_seconds:
            print(f"real-time factor: {wall / result.audio_seconds:.2f} "
                  f"({wall:.2f} s wall for {result.audio_seconds:.2f} s of audio)", file=file)
    if result.usage is not None:
        u = result.usage
        cost = "n/a" if u.cost_cents is None else f"{u.cost_cents} cents"
        print(f"usage: {u.audio_seconds:.2f} audio seconds, {u.characters} characters, "
              f"cost {cost}", file=file)
    if show_words and result.words:
        print("word timestamps (ms from the start of the audio):", file=file)
        for w in result.words:
            print(f"  {w.start_ms:8.0f} {w.end_ms:8.0f}  {w.word}", file=file)
    for err in result.errors:
        print(f"warning: {err}", file=sys.stderr)


# -- commands -------------------------------------------------------------------------------------
def _audio_format(args: argparse.Namespace) -> tuple[str, int]:
    """(wire encoding, sample rate) asked for by ``--output-format`` / ``--sample-rate``."""
    fmt = args.output_format
    if fmt is None:
        return "pcm_s16le", args.sample_rate or 24000
    kind, rate_text = fmt.rsplit("_", 1)
    rate = int(rate_text)
    if args.sample_rate is not None and args.sample_rate != rate:
        raise CliError(f"--sample-rate {args.sample_rate} contradicts --output-format {fmt} "
                       f"({rate} Hz): give only one of them")
    return {"pcm": "pcm_s16le", "ulaw": "mulaw", "alaw": "alaw"}[kind], rate


def _check_url(url: str) -> None:
    """Reject a malformed ``--url`` before connecting, naming it and what is wrong."""
    example = f"e.g. {DEFAULT_URL} or wss://api.kugelaudio.com"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError when out of range or not a number
    except ValueError as exc:
        reason = str(exc).replace("Port", "port")
        raise CliError(f"bad --url {url!r}: {reason} ({example})") from None
    if parts.scheme not in ("ws", "wss", "http", "https"):
        raise CliError(f"bad --url {url!r}: the scheme must be ws, wss, http or https ({example})")
    if not parts.hostname:
        raise CliError(f"bad --url {url!r}: no host name ({example})")


def _client_config(args: argparse.Namespace) -> dict[str, Any]:
    _, rate = _audio_format(args)
    config: dict[str, Any] = {"sample_rate": rate, "language": args.language}
    if args.output_format is not None and args.output_format in OUTPUT_FORMATS:
        config["output_format"] = args.output_format
    if args.voice is not None:
        config["voice_id"] = int(args.voice) if args.voice.isdigit() else args.voice
    if args.word_timestamps:
        config["word_timestamps"] = True
    return config


async def _run_client(args: argparse.Namespace, tokens: AsyncIterator[str]) -> int:
    api_key = args.api_key or os.environ.get("KUGELAUDIO_API_KEY")
    _check_url(args.url)
    config = _client_config(args)
    encoding, rate = _audio_format(args)
    existed = _is_stdout(args.out) or os.path.exists(args.out)
    out = _open_output(args.out)  # a bad --out fails now, before anything is synthesised
    result = SpeakResult()
    try:
        await speak(
            args.url, tokens, api_key=api_key, endpoint=args.endpoint,
            progress=sys.stderr.isatty(), result=result, **config,
        )
    except asyncio.CancelledError:  # Ctrl-C: keep what arrived
        _write_wav(args.out, result, out, raw=args.raw, encoding=encoding, sample_rate=rate)
        raise _Interrupted(_saved(args.out, result)) from None
    except BaseException:
        if out is not sys.stdout.buffer:
            out.close()
        if not existed:  # nothing to keep: do not leave an empty file behind
            with contextlib.suppress(OSError):
                os.unlink(args.out)
        raise
    _write_wav(args.out, result, out, raw=args.raw, encoding=encoding, sample_rate=rate)
    _report(result, args.out, args.word_timestamps)
    if not result.pcm:
        raise CliError("no audio came back")
    return 0


def _saved(path: str, result: SpeakResult) -> str:
    return (f"interrupted; wrote {_shown(path)} with the {result.audio_seconds:.2f} s of audio "
            "received so far")


async def _cmd_say(args: argparse.Namespace) -> int:
    if not args.text.strip():  # known before connecting: say so without needing a server
        raise CliError("no text to speak (TEXT is empty)")
    return await _run_client(args, _paced(tokenize(args.text), args.token_delay_ms / 1000))


async def _cmd_stream(args: argparse.Namespace) -> int:
    return await _run_client(args, _stdin_tokens(sys.stdin))


class _Stderr(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to ``sys.stderr`` as it is when a record is emitted, not as it was when the
    handler was made (a program, or a test, may replace it later)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def _log_to_stderr() -> None:
    """The server's log lines (warnings and up) on stderr, prefixed like every CLI line."""
    logger = logging.getLogger("kugelwire")
    if not logger.handlers:
        handler = _Stderr()
        handler.setFormatter(logging.Formatter("kugelwire: %(message)s"))
        logger.addHandler(handler)
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.WARNING)


def _server_api_key(args: argparse.Namespace) -> str | None:
    """The key ``serve`` requires: ``--api-key``, else the first line of ``--api-key-file``,
    else ``KUGELWIRE_API_KEY`` (a file or the environment keep it out of ``ps``)."""
    if args.api_key is not None:
        return str(args.api_key)
    if args.api_key_file is not None:
        try:
            with open(args.api_key_file, encoding="utf-8") as f:
                key = f.readline().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise CliError(f"cannot read --api-key-file {args.api_key_file}: {exc}") from None
        if not key:
            raise CliError(f"--api-key-file {args.api_key_file} is empty")
        return key
    return os.environ.get("KUGELWIRE_API_KEY") or None


async def _cmd_serve(args: argparse.Namespace) -> int:
    from .server import ServerOptions, run_in_thread, serve

    if args.workers != 1:  # ops: several processes on one port (kugelwire/server/_workers.py)
        return await _serve_workers(args)
    _log_to_stderr()
    api_key = _server_api_key(args)
    engine = make_engine(args.engine)
    options = {f.name: getattr(args, f.name) for f in ServerOptions.cli_fields()}
    try:
        faults = _fault_plan(args.fault)
        extra = dict(api_key=api_key, lint=_serve_linter(args), lenient=args.lenient,
                     faults=faults, metrics=args.metrics, **options)
        if args.backend == "asyncio":
            server_cm: Any = serve(args.host, args.port, engine=engine, **extra)
            server = await server_cm.__aenter__()
        else:  # the other backends run on their own thread (or loop) beside this one
            server_cm = None
            server = run_in_thread(args.host, args.port, backend=args.backend, engine=engine,
                                   **extra).start()
    except OSError as exc:
        raise CliError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise CliError(str(exc)) from None
    try:
        print(f"kugelwire: serving {server.url} (/ws/tts/stream, /ws/tts/multi, /ws/tts) "
              f"with the {type(engine).__name__} ({args.backend}); Ctrl-C stops", flush=True)
        print(f"kugelwire: browser playground at http{server.url[2:]}/", flush=True)
        _print_serve_mode(args.lenient, faults)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        # SIGTERM: a graceful stop (busy turns finish first). SIGINT (Ctrl-C) is the command
        # runner's: it cancels this task, and the connections are closed at once (1001).
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGTERM, stop.set)
        try:
            await stop.wait()
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await server.shutdown(1001, timeout=_INTERRUPT_GRACE_S)
            raise _Interrupted("interrupted; the server stopped") from None
        print("kugelwire: shutting down (busy turns finish first)", flush=True)
    finally:
        if server_cm is not None:
            await server_cm.__aexit__(None, None, None)
        else:
            await loop.run_in_executor(None, server.stop)
    return 0


def _serve_linter(args: argparse.Namespace) -> Any:
    """``serve``'s rule checks: findings printed as they happen (False with ``--no-lint``)."""
    if args.no_lint:
        return False
    from .lint import Linter

    return Linter(on_finding=lambda f: print(f"kugelwire: lint: {f}", flush=True),
                  on_summary=None)


def _serve_flags(parser: argparse.ArgumentParser) -> None:
    """``--backend`` and one ``--flag`` per :class:`ServerOptions` field marked for the CLI."""
    from .server import BACKENDS, ServerOptions

    parser.add_argument("--backend", choices=BACKENDS, default="asyncio",
                        help="I/O backend (asyncio)")
    for f in ServerOptions.cli_fields():
        flag, default = "--" + f.name.replace("_", "-"), f.default
        kind: Any = str if default is None or isinstance(default, str) else type(default)
        if f.name in ("ping_interval", "message_timeout"):
            kind = _float_or_none
        parser.add_argument(flag, type=kind, default=default, choices=f.metadata.get("choices"),
                            help=f.metadata["help"] + ("" if default is None else f" ({default})"))


def _float_or_none(text: str) -> float | None:
    return None if text.lower() == "none" else float(text)


# -- ops: serve --workers N / --metrics -------------------------------------------------------
def _ops_serve_flags(serve: argparse.ArgumentParser) -> None:
    serve.add_argument("--workers", type=int, default=1, metavar="N",
                       help="server processes on the one port (default 1; SO_REUSEPORT)")
    serve.add_argument("--metrics", action="store_true",
                       help="answer Prometheus text at GET /metrics (no API key needed)")


async def _serve_workers(args: argparse.Namespace) -> int:
    from .server import ServerOptions
    from .server._workers import _say, supervise

    if args.workers < 1:
        raise CliError("--workers must be at least 1")
    _log_to_stderr()
    make_engine(args.engine, quiet=True)  # fail here, not in every worker

    def ready(url: str, pids: list[int]) -> None:  # one write per line: the workers share stdout
        _say(f"kugelwire: serving {url} (/ws/tts/stream, /ws/tts/multi, /ws/tts) with "
             f"{len(pids)} workers (pids {' '.join(map(str, pids))}); Ctrl-C stops")
        if args.metrics:
            _say(f"kugelwire: metrics at http{url[2:]}/metrics")
        _print_serve_mode(args.lenient, faults)

    faults = _fault_plan(args.fault)  # a bad --fault fails here, before any worker starts
    # the single-process path's options, as JSON for the workers (faults as their specs)
    options = {f.name: getattr(args, f.name) for f in ServerOptions.cli_fields()}
    options.update(api_key=_server_api_key(args), lint=not args.no_lint, lenient=args.lenient,
                   faults=list(args.fault))
    try:
        ServerOptions.from_kwargs(**options)  # a bad value fails here too
        status = await supervise(args.workers, args.host, args.port, engine=args.engine,
                                 backend=getattr(args, "backend", None) or "asyncio",
                                 metrics=args.metrics, ready=ready, **options)
    except ValueError as exc:  # a bad option value, or a backend whose package is missing
        raise CliError(str(exc)) from None
    except OSError as exc:
        raise CliError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from None
    print("kugelwire: all workers stopped", flush=True)
    return status


async def _cmd_demo(args: argparse.Namespace) -> int:
    from .server import serve

    out = _open_output(args.out)  # a bad --out fails now, before anything is synthesised
    engine = make_engine(args.engine)
    key = "demo-key"
    result = SpeakResult()
    try:
        async with serve("127.0.0.1", 0, engine=engine, api_key=key,
                         shutdown_timeout=_INTERRUPT_GRACE_S) as server:
            print(f"kugelwire demo: local server at {server.url} with the "
                  f"{type(engine).__name__}")
            print(f"streaming: {DEMO_TEXT}")
            await speak(
                server.url, _paced(tokenize(DEMO_TEXT), args.token_delay_ms / 1000),
                api_key=key, progress=sys.stderr.isatty(), result=result, voice_id=1,
                language="en", sample_rate=24000, word_timestamps=True,
            )
    except asyncio.CancelledError:  # Ctrl-C: keep what arrived
        _write_wav(args.out, result, out)
        raise _Interrupted(_saved(args.out, result)) from None
    except BaseException:
        out.close()
        raise
    _write_wav(args.out, result, out)
    _report(result, args.out, False)
    if not result.pcm or result.rms < 50:
        raise CliError("the demo produced no audible audio")
    print(f"spoken words: {len(result.words)}; play it with: aplay {args.out}")
    return 0


# -- serve --lenient / --fault ---------------------------------------------------------------------
def _fault_plan(specs: list[str] | None) -> Any:
    from .server import FaultPlan

    try:
        return FaultPlan.parse(specs or [])
    except ValueError as exc:
        raise CliError(str(exc)) from None


def _print_serve_mode(lenient: bool, faults: Any) -> None:
    from .server._workers import _say as say  # one write per line (workers may share stdout)

    if lenient:
        say("kugelwire: lenient: requests without a voice, or with an unknown voice or model, "
            "are spoken with defaults (the hosted service refuses them)")
    if faults:
        say(f"kugelwire: FAULT INJECTION ACTIVE ({len(faults.faults)} fault(s)):")
        for line in faults.describe():
            say(f"  {line}")


# -- voices ---------------------------------------------------------------------------------------
def _http_base(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise CliError(f"--url {url!r}: expected ws://, wss://, http:// or https://")
    mapped = {"ws": "http", "wss": "https", "http": "http", "https": "https"}.get(scheme.lower())
    if mapped is None:
        raise CliError(f"--url {url!r}: expected ws://, wss://, http:// or https://")
    return f"{mapped}://{rest.split('/', 1)[0]}"


def _fetch_voices(url: str, api_key: str | None) -> list[dict[str, Any]]:
    import json
    import urllib.error
    import urllib.request

    base = _http_base(url)
    headers = {"Accept": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    voices: list[dict[str, Any]] = []
    while True:
        target = f"{base}/v1/voices?limit=100&offset={len(voices)}"
        request = urllib.request.Request(target, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                body = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            detail = ""
            with contextlib.suppress(Exception):
                detail = str(json.loads(exc.read()).get("error", ""))
            if exc.code in (401, 403):
                raise CliError(f"{base} refused the API key (HTTP {exc.code}); pass --api-key "
                               "or set KUGELAUDIO_API_KEY") from None
            raise CliError(f"GET {base}/v1/voices: HTTP {exc.code} {detail}".rstrip()) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise CliError(f"cannot reach {base}: {reason} (is a server running? start one "
                           "with: kugelwire serve)") from None
        except ValueError:
            raise CliError(f"GET {base}/v1/voices: the answer is not JSON") from None
        page = body.get("voices") if isinstance(body, dict) else None
        if not isinstance(page, list):
            raise CliError(f"GET {base}/v1/voices: unexpected answer (no voices list)")
        voices += [v for v in page if isinstance(v, dict)]
        total = body.get("total")
        if not page or not isinstance(total, int) or len(voices) >= total:
            return voices


async def _cmd_voices(args: argparse.Namespace) -> int:
    api_key = args.api_key or os.environ.get("KUGELAUDIO_API_KEY")
    voices = await asyncio.to_thread(_fetch_voices, args.url, api_key)
    if not voices:
        print("no voices")
        return 0
    print(f"{'ID':>6}  {'NAME':<22} {'LANGUAGES':<18} HANDLE")
    for v in voices:
        langs = ",".join(str(x) for x in v.get("supported_languages") or [])
        print(f"{v.get('id')!s:>6}  {v.get('name', '')!s:<22} {langs[:18]:<18} "
              f"{v.get('handle') or ''}")
    return 0


def _conformance(args: argparse.Namespace) -> int:
    """``kugelwire conformance``: exit 0 when every endpoint conforms, 1 otherwise."""
    try:
        from .conformance import format_transcript, run
    except ImportError as exc:  # pragma: no cover - hypothesis is a dev dependency here
        raise CliError(str(exc)) from None
    endpoints = [ENDPOINT_KINDS[e]
                 for e in (args.endpoint or ["stream", "multi", "tts"])]
    try:
        report = run(
            args.url, api_key=args.api_key or os.environ.get("KUGELAUDIO_API_KEY"),
            endpoints=endpoints, examples=args.examples, seed=args.seed, budget=args.budget,
            rate=args.rate or None, voice_id=args.voice_id, timeout=args.timeout,
            progress=lambda line: print(f"kugelwire conformance: {line}", flush=True),
        )
    except ImportError as exc:
        raise CliError(str(exc)) from None
    for result in report.results:
        if result.error is not None:
            print(f"{result.endpoint}: could not run: {result.error}")
        elif result.transcript is not None:
            print(f"\n{result.endpoint}: FAILED after {result.examples} examples; the "
                  "shrunk failing session:")
            print(format_transcript(result.transcript, result.violations))
            if args.json:
                print(f"replay it: kugelwire conformance {args.url} --replay {args.json}")
            else:
                print("(run with --json REPORT to save it; --replay REPORT runs it again)")
    if args.json:
        import json

        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(report.to_dict(), fh, indent=1)
    verdict = "conforms" if report.passed else "does NOT conform"
    print(f"kugelwire conformance: {args.url} {verdict} ({report.seconds:.1f} s, seed "
          f"{report.seed if report.seed is not None else 'random'})")
    return 0 if report.passed else 1


def _conformance_replay(args: argparse.Namespace) -> int:
    """``--replay REPORT.json``: run the failing scripts of a report again."""
    import json

    from .conformance import format_transcript, replay

    with open(args.replay, encoding="utf-8") as fh:
        saved = json.load(fh)
    failed = False
    for result in saved.get("results", []):
        if not result.get("script"):
            continue
        transcript, violations = replay(
            args.url, result["endpoint"], result["script"],
            api_key=args.api_key or os.environ.get("KUGELAUDIO_API_KEY"), timeout=args.timeout,
        )
        print(format_transcript(transcript, violations))
        failed = failed or bool(violations)
    print(f"kugelwire conformance: replay {'still fails' if failed else 'passes'}")
    return 1 if failed else 0


async def _cmd_conformance(args: argparse.Namespace) -> int:
    fn = _conformance_replay if args.replay else _conformance
    return await asyncio.to_thread(fn, args)


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is out of range (0-65535; 0 picks a free port)")
    return port


def _voice_table() -> str:
    """The local server's voices (``--voice``), from the eSpeak engine's own table."""
    try:
        from .synth.espeak import DEFAULT_VOICE, VOICES
    except ImportError:
        return ("voices: the local server's eSpeak voices need the voice extra "
                "(pip install 'kugelwire[voice]'); the tone engine ignores --voice.")
    rows = [f"  {n:<5}{accent}+{variant}{'  (default)' if n == DEFAULT_VOICE else ''}"
            for n, (accent, variant) in VOICES.items()]
    return "\n".join([
        "voices of the local server's eSpeak engine (--voice N; for another --language the",
        "same variant of that language's voice; the server refuses other ids unless it runs",
        "with --lenient; the tone engine's voices differ in pitch; on the hosted service use",
        "its own voice ids, listed by: kugelwire voices --url ...):",
        *rows,
    ])


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``kugelwire: ...``) and a voice table computed on demand."""

    def __init__(self, *args: Any, voices_epilog: bool = False, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        for key in ("description", "epilog"):  # raw (the voice table), so wrap prose here
            if kwargs.get(key):
                kwargs[key] = textwrap.fill(kwargs[key], 79)
        super().__init__(*args, **kwargs)
        self._voices_epilog = voices_epilog

    def format_help(self) -> str:
        if self._voices_epilog and self.epilog is None:
            self.epilog = _voice_table()
        return super().format_help()

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"kugelwire: {message} (see: {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="kugelwire", description="KugelAudio streaming TTS: local server and client.",
        epilog="Ctrl-C stops any command at once (exit status 130); say, stream and demo first "
               "save the audio received so far. Errors are one line, exit status 1 (2 for a bad "
               "option).",
    )
    parser.add_argument("--version", action="version", version=f"kugelwire {__version__}",
                        help="print the version of kugelwire and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=_Parser)

    serve = sub.add_parser("serve", help="run a local KugelAudio-compatible server",
                           description="Run a local KugelAudio-compatible server (the three "
                           "endpoints and a browser playground at /).", voices_epilog=True)
    serve.add_argument("--host", default="127.0.0.1",
                       help="interface to listen on (127.0.0.1; 0.0.0.0 for every interface)")
    serve.add_argument("--port", type=_port, default=8765,
                       help="TCP port (8765; 0 picks a free one, printed at start-up)")
    serve.add_argument("--engine", choices=["auto", "espeak", "tone"], default="auto",
                       help="speech engine (auto: eSpeak NG when installed)")
    keys = serve.add_mutually_exclusive_group()
    keys.add_argument("--api-key", default=None,
                      help="require this key (default: KUGELWIRE_API_KEY, else any key; "
                           "visible in ps: prefer --api-key-file)")
    keys.add_argument("--api-key-file", default=None, metavar="PATH",
                      help="require the key on the first line of this file")
    serve.add_argument("--no-lint", action="store_true",
                       help="do not check clients against the streaming rules (on by default)")
    serve.add_argument("--lenient", action="store_true",
                       help="speak requests the hosted service refuses (no voice, unknown voice "
                            "or model) with defaults instead of refusing them")
    serve.add_argument("--fault", action="append", default=[], metavar="KIND[:ARG][,k=v...]",
                       help="misbehave on purpose (repeatable): drop, restart, stall, delay, "
                            "error, reject, slow_handshake; e.g. restart:after=3, reject:429")
    _serve_flags(serve)
    _ops_serve_flags(serve)

    def client_flags(p: argparse.ArgumentParser) -> None:
        p.add_argument("--url", default=DEFAULT_URL,
                       help=f"server base URL ({DEFAULT_URL}; wss://api.kugelaudio.com for the "
                            "hosted service)")
        p.add_argument("--api-key", default=None, help="API key (or KUGELAUDIO_API_KEY)")
        p.add_argument("--voice", default="1",
                       help="voice id (default 1; list a server's voices with: kugelwire voices; "
                            "see below)")
        p.add_argument("--language", default="en", help="ISO 639-1 language code (en)")
        p.add_argument("--endpoint", choices=["stream", "multi", "tts"], default="stream",
                       help="stream: one streamed turn (default); multi: one context of "
                            "/ws/tts/multi; tts: the whole text as one /ws/tts request")
        p.add_argument("--sample-rate", type=int, default=None,
                       choices=sorted(SAMPLE_RATES),
                       help="PCM sample rate in Hz (24000); same as --output-format pcm_RATE")
        p.add_argument("--output-format", default=None, choices=CLI_OUTPUT_FORMATS,
                       metavar="FORMAT",
                       help="audio format: " + ", ".join(CLI_OUTPUT_FORMATS)
                            + " (pcm_24000); G.711 is written as a µ-law / A-law WAV")
        p.add_argument("--out", default="out.wav",
                       help="file to write (out.wav): a WAV file, or raw audio bytes when the "
                            "name ends in " + ", ".join(RAW_SUFFIXES) + "; - for stdout (the "
                            "report then goes to stderr)")
        p.add_argument("--raw", action="store_true",
                       help="write raw audio bytes (PCM16 little-endian or G.711), no WAV header")
        p.add_argument("--word-timestamps", action="store_true", help="print word timings")

    say = sub.add_parser("say", help="stream TEXT word by word and write a WAV",
                         description="Stream TEXT to a server word by word, like an LLM writes, "
                         "flush once at the end, and write the audio.", voices_epilog=True)
    say.add_argument("text", help="the text to speak (markup such as <spell>...</spell> works)")
    client_flags(say)
    say.add_argument("--token-delay-ms", type=float, default=30.0,
                     help="pause between tokens in ms (30; 0 sends them all at once)")

    stream = sub.add_parser("stream", help="stream tokens from stdin as they arrive",
                            description="Stream text from stdin to a server the moment it "
                            "arrives (pipe a model's output in), flush once at end of input, "
                            "and write the audio.", voices_epilog=True)
    client_flags(stream)

    conf = sub.add_parser(
        "conformance", help="property-based conformance test of any KugelAudio-compatible server"
    )
    conf.add_argument("url", help="server base URL, e.g. ws://127.0.0.1:8765")
    conf.add_argument("--api-key", default=None, help="API key (or KUGELAUDIO_API_KEY)")
    conf.add_argument("--endpoint", action="append", choices=["stream", "multi", "tts"],
                      help="endpoint to test (repeatable; default: all three)")
    conf.add_argument("--examples", type=int, default=30, help="sessions per endpoint (30)")
    conf.add_argument("--seed", type=int, default=None, help="hypothesis seed (reproducible)")
    conf.add_argument("--budget", type=float, default=60.0,
                      help="seconds for generating sessions, all endpoints (60; shrinking a "
                           "failure may take longer)")
    conf.add_argument("--rate", type=float, default=2.0,
                      help="new connections per second at most (2; 0: no limit)")
    conf.add_argument("--voice-id", default=None, type=lambda v: int(v) if v.isdigit() else v,
                      help="voice_id for every session (the hosted service needs one)")
    conf.add_argument("--timeout", type=float, default=10.0,
                      help="seconds to wait for any one answer (10)")
    conf.add_argument("--json", default=None, metavar="REPORT",
                      help="write a JSON report (with the shrunk failing scripts)")
    conf.add_argument("--replay", default=None, metavar="REPORT",
                      help="run the failing scripts of a JSON report again")

    demo = sub.add_parser("demo", help="local server + a streamed paragraph into demo.wav",
                          description="Start a local server in this process and stream a "
                          "paragraph to it token by token; write demo.wav and print the "
                          "latency.")
    demo.add_argument("--out", default="demo.wav", help="WAV file to write (demo.wav)")
    demo.add_argument("--engine", choices=["auto", "espeak", "tone"], default="auto",
                      help="speech engine (auto: eSpeak NG when installed)")
    demo.add_argument("--token-delay-ms", type=float, default=30.0,
                      help="pause between tokens in ms (30)")

    voices = sub.add_parser("voices", help="list a server's voices (GET /v1/voices)",
                            description="List the voices a server offers (GET /v1/voices), "
                            "with the same API key as its sockets.")
    voices.add_argument("--url", default=DEFAULT_URL, help=f"server base URL ({DEFAULT_URL})")
    voices.add_argument("--api-key", default=None, help="API key (or KUGELAUDIO_API_KEY)")
    return parser


_COMMANDS = {"serve": _cmd_serve, "say": _cmd_say, "stream": _cmd_stream, "demo": _cmd_demo,
             "voices": _cmd_voices}
_COMMANDS["conformance"] = _cmd_conformance


async def _run_command(command: Callable[[argparse.Namespace], Any],
                       args: argparse.Namespace) -> int:
    """Run one command; the first Ctrl-C cancels it (it saves what it has and raises
    :class:`_Interrupted`), a second one ends the process at once."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    interrupts = 0

    def on_sigint() -> None:
        nonlocal interrupts
        interrupts += 1
        if interrupts > 1:
            os.write(2, b"kugelwire: interrupted again; exiting now\n")
            os._exit(130)
        if task is not None:
            task.cancel()

    installed = False
    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
        loop.add_signal_handler(signal.SIGINT, on_sigint)
        installed = True
    try:
        code: int = await command(args)
        return code
    except asyncio.CancelledError:
        if interrupts:
            raise _Interrupted("interrupted") from None
        raise
    finally:
        if installed:
            loop.remove_signal_handler(signal.SIGINT)


def _connect_reason(exc: ConnectionFailed) -> str:
    """Why a connection failed, without repeating the URL (which may hold the key)."""
    cause = exc.__cause__
    if isinstance(cause, ssl.SSLError):
        return f"TLS failed ({cause.reason or cause})"
    if isinstance(cause, socket.gaierror):
        return f"cannot resolve the host name ({cause.strerror or cause})"
    if isinstance(cause, OSError) and cause.errno is not None and cause.errno > 0:
        return os.strerror(cause.errno).lower()
    if isinstance(cause, OSError) and str(cause):
        return str(cause)
    if exc.message.startswith("timed out"):
        return "timed out"
    return re.sub(r"^cannot connect to \S+: ", "", exc.message)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``kugelwire`` console script."""
    args = _parser().parse_args(argv)
    try:
        return asyncio.run(_run_command(_COMMANDS[args.command], args))
    except (KeyboardInterrupt, asyncio.CancelledError, _Interrupted) as exc:
        # (CancelledError: a Ctrl-C that came as the command was returning; its work is done)
        print(f"kugelwire: {exc or 'interrupted'}", file=sys.stderr)
        return 130
    except CliError as exc:
        print(f"kugelwire: {exc}", file=sys.stderr)
    except ConnectionFailed as exc:
        reason = _connect_reason(exc)
        hint = ""
        if isinstance(exc.__cause__, ConnectionRefusedError) or reason == "timed out":
            hint = " (is a server running? start one with: kugelwire serve)"
        print(f"kugelwire: cannot connect to {getattr(args, 'url', '')}: {reason}{hint}",
              file=sys.stderr)
    except AuthenticationError as exc:
        print(f"kugelwire: the server refused the API key ({exc.message}); "
              "pass --api-key or set KUGELAUDIO_API_KEY", file=sys.stderr)
    except RateLimitError as exc:
        print(f"kugelwire: rate limited by the server: {exc.message}", file=sys.stderr)
    except (KugelwireError, LocalProtocolError) as exc:
        print(f"kugelwire: {exc}", file=sys.stderr)
    return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
