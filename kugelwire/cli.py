"""The ``kugelwire`` command line (also ``python -m kugelwire``).

* ``kugelwire serve`` — a local KugelAudio-compatible server (eSpeak NG voice or the tone engine).
* ``kugelwire say TEXT`` — stream TEXT word by word like an LLM, one flush at the end, into a WAV.
* ``kugelwire stream`` — the same for tokens read from stdin as they arrive.
* ``kugelwire demo`` — a server in this process plus ``say`` with a built-in paragraph.

``say`` and ``stream`` work against the real service too (``--url wss://api.kugelaudio.com``
with ``--api-key`` or ``KUGELAUDIO_API_KEY``). Errors are one line on stderr, exit status 1
(2 for a bad flag, 130 for Ctrl-C).
"""

from __future__ import annotations

import argparse
import array
import asyncio
import codecs
import contextlib
import math
import os
import re
import signal
import sys
import wave
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any, TextIO

from .errors import AuthenticationError, ConnectionFailed, KugelwireError, RateLimitError
from .protocol._errors import LocalProtocolError
from .protocol._events import (
    AudioChunk,
    ClientEvent,
    ContextClosed,
    Interrupted,
    RequestFinal,
    ServerError,
    TurnClosed,
    WordTimestamps,
)
from .protocol._messages import Usage, WordTimestamp
from .synth import Engine, ToneEngine

__all__ = ["DEMO_TEXT", "SpeakResult", "main", "make_engine", "speak", "tokenize"]

DEFAULT_URL = "ws://127.0.0.1:8765"
DEMO_TEXT = (
    "Hello! This is kugelwire, speaking through a local KugelAudio compatible server. "
    "Every word you hear was streamed as a token, the way a language model writes, and the "
    "server started speaking before the paragraph was finished. "
    "You can write to <spell>hi@kugel.dev</spell>. Goodbye!"
)


class CliError(Exception):
    """A failure reported as one line on stderr (exit status 1)."""


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
    """Yield text from stdin as soon as it arrives (not line by line)."""
    loop = asyncio.get_running_loop()
    fd = stream.fileno()
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    while True:
        data = await loop.run_in_executor(None, os.read, fd, 4096)
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


def _on_event(ev: ClientEvent, result: SpeakResult, progress: _Progress, now: float) -> None:
    if isinstance(ev, AudioChunk):
        if result.first_audio_at is None:
            result.first_audio_at = now
        result.last_audio_at = now
        result.sample_rate = result.sample_rate or ev.sample_rate
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
    **config: Any,
) -> SpeakResult:
    """Stream ``tokens`` to ``url`` on one endpoint, one flush at the end; gather the audio.

    Sending and receiving run concurrently: a token is sent the moment it arrives, whatever the
    audio is doing.
    """
    from .transports.asyncio import connect_multi, connect_stream, connect_tts

    loop = asyncio.get_running_loop()
    result = SpeakResult()
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
                current: Any = None
                async for token in tokens:
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
        elif endpoint == "multi":
            async with await connect_multi(url, api_key=api_key, **config) as multi:
                ctx = await multi.create_context("kugelwire-cli", voice_id=config.get("voice_id"))
                consumer = asyncio.create_task(consume(ctx))
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


# -- reporting ------------------------------------------------------------------------------------
def _write_wav(path: str, result: SpeakResult) -> None:
    with wave.open(path, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(result.sample_rate or 24000)
        out.writeframes(bytes(result.pcm))


def _report(result: SpeakResult, out_path: str, show_words: bool) -> None:
    ms = 1000.0
    print(f"wrote {out_path}: {result.audio_seconds:.2f} s of audio at {result.sample_rate} Hz "
          f"({result.chunks} chunks, {result.turns} turn{'s' if result.turns != 1 else ''})")
    if result.first_audio_at is not None and result.first_token_at is not None:
        line = f"time to first audio: {(result.first_audio_at - result.first_token_at) * ms:.0f} ms"
        line += " after the first token"
        if result.flush_at is not None:
            delta = (result.first_audio_at - result.flush_at) * ms
            line += (f", {delta:.0f} ms after the flush" if delta >= 0
                     else f", {-delta:.0f} ms before the flush (sentence-boundary chunking)")
        print(line)
    if result.last_audio_at is not None and result.first_token_at is not None:
        wall = result.last_audio_at - result.first_token_at
        if result.audio_seconds:
            print(f"real-time factor: {wall / result.audio_seconds:.2f} "
                  f"({wall:.2f} s wall for {result.audio_seconds:.2f} s of audio)")
    if result.usage is not None:
        u = result.usage
        cost = "n/a" if u.cost_cents is None else f"{u.cost_cents} cents"
        print(f"usage: {u.audio_seconds:.2f} audio seconds, {u.characters} characters, "
              f"cost {cost}")
    if show_words and result.words:
        print("word timestamps (ms from the start of the audio):")
        for w in result.words:
            print(f"  {w.start_ms:8.0f} {w.end_ms:8.0f}  {w.word}")
    for err in result.errors:
        print(f"warning: {err}", file=sys.stderr)


# -- commands -------------------------------------------------------------------------------------
def _client_config(args: argparse.Namespace) -> dict[str, Any]:
    config: dict[str, Any] = {"sample_rate": args.sample_rate, "language": args.language}
    if args.voice is not None:
        config["voice_id"] = int(args.voice) if args.voice.isdigit() else args.voice
    if args.word_timestamps:
        config["word_timestamps"] = True
    return config


async def _run_client(args: argparse.Namespace, tokens: AsyncIterator[str]) -> int:
    api_key = args.api_key or os.environ.get("KUGELAUDIO_API_KEY")
    result = await speak(
        args.url, tokens, api_key=api_key, endpoint=args.endpoint,
        progress=sys.stderr.isatty(), **_client_config(args),
    )
    _write_wav(args.out, result)
    _report(result, args.out, args.word_timestamps)
    if not result.pcm:
        raise CliError("no audio came back")
    return 0


async def _cmd_say(args: argparse.Namespace) -> int:
    return await _run_client(args, _paced(tokenize(args.text), args.token_delay_ms / 1000))


async def _cmd_stream(args: argparse.Namespace) -> int:
    return await _run_client(args, _stdin_tokens(sys.stdin))


async def _cmd_serve(args: argparse.Namespace) -> int:
    from .server import serve

    if args.workers != 1:  # ops: several processes on one port (kugelwire/server/_workers.py)
        return await _serve_workers(args)
    engine = make_engine(args.engine)
    try:
        server_cm = serve(args.host, args.port, engine=engine, api_key=args.api_key,
                          metrics=args.metrics)
        server = await server_cm.__aenter__()
    except OSError as exc:
        raise CliError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from None
    try:
        print(f"kugelwire: serving {server.url} (/ws/tts/stream, /ws/tts/multi, /ws/tts) "
              f"with the {type(engine).__name__}; Ctrl-C stops", flush=True)
        print(f"kugelwire: browser playground at http{server.url[2:]}/", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        print("kugelwire: shutting down (busy turns finish first)", flush=True)
    finally:
        await server_cm.__aexit__(None, None, None)
    return 0


# -- ops: serve --workers N / --metrics -------------------------------------------------------
def _ops_serve_flags(serve: argparse.ArgumentParser) -> None:
    serve.add_argument("--workers", type=int, default=1, metavar="N",
                       help="server processes on the one port (default 1; SO_REUSEPORT)")
    serve.add_argument("--metrics", action="store_true",
                       help="answer Prometheus text at GET /metrics (no API key needed)")


async def _serve_workers(args: argparse.Namespace) -> int:
    from .server._workers import supervise

    if args.workers < 1:
        raise CliError("--workers must be at least 1")
    make_engine(args.engine, quiet=True)  # fail here, not in every worker

    def ready(url: str, pids: list[int]) -> None:
        print(f"kugelwire: serving {url} (/ws/tts/stream, /ws/tts/multi, /ws/tts) with "
              f"{len(pids)} workers (pids {' '.join(map(str, pids))}); Ctrl-C stops",
              flush=True)
        if args.metrics:
            print(f"kugelwire: metrics at http{url[2:]}/metrics", flush=True)

    try:
        status = await supervise(args.workers, args.host, args.port, engine=args.engine,
                                 backend=getattr(args, "backend", None) or "asyncio",
                                 metrics=args.metrics, api_key=args.api_key, ready=ready)
    except ValueError as exc:  # e.g. a backend the workers cannot run yet
        raise CliError(str(exc)) from None
    except OSError as exc:
        raise CliError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from None
    print("kugelwire: all workers stopped", flush=True)
    return status


async def _cmd_demo(args: argparse.Namespace) -> int:
    from .server import serve

    engine = make_engine(args.engine)
    key = "demo-key"
    async with serve("127.0.0.1", 0, engine=engine, api_key=key) as server:
        print(f"kugelwire demo: local server at {server.url} with the {type(engine).__name__}")
        print(f"streaming: {DEMO_TEXT}")
        result = await speak(
            server.url, _paced(tokenize(DEMO_TEXT), args.token_delay_ms / 1000), api_key=key,
            progress=sys.stderr.isatty(), voice_id=1, language="en", sample_rate=24000,
            word_timestamps=True,
        )
    _write_wav(args.out, result)
    _report(result, args.out, False)
    if not result.pcm or result.rms < 50:
        raise CliError("the demo produced no audible audio")
    print(f"spoken words: {len(result.words)}; play it with: aplay {args.out}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kugelwire", description="KugelAudio streaming TTS: local server and client."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run a local KugelAudio-compatible server")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8765)
    serve.add_argument("--engine", choices=["auto", "espeak", "tone"], default="auto",
                       help="speech engine (auto: eSpeak NG when installed)")
    serve.add_argument("--api-key", default=None, help="require this key (default: any key)")
    _ops_serve_flags(serve)

    def client_flags(p: argparse.ArgumentParser) -> None:
        p.add_argument("--url", default=DEFAULT_URL, help=f"server base URL ({DEFAULT_URL})")
        p.add_argument("--api-key", default=None, help="API key (or KUGELAUDIO_API_KEY)")
        p.add_argument("--voice", default=None, help="voice id")
        p.add_argument("--language", default="en")
        p.add_argument("--endpoint", choices=["stream", "multi", "tts"], default="stream")
        p.add_argument("--sample-rate", type=int, default=24000,
                       choices=[8000, 16000, 22050, 24000, 44100])
        p.add_argument("--out", default="out.wav", help="WAV file to write (out.wav)")
        p.add_argument("--word-timestamps", action="store_true", help="print word timings")

    say = sub.add_parser("say", help="stream TEXT word by word and write a WAV")
    say.add_argument("text")
    client_flags(say)
    say.add_argument("--token-delay-ms", type=float, default=30.0)

    stream = sub.add_parser("stream", help="stream tokens from stdin as they arrive")
    client_flags(stream)

    demo = sub.add_parser("demo", help="local server + a streamed paragraph into demo.wav")
    demo.add_argument("--out", default="demo.wav")
    demo.add_argument("--engine", choices=["auto", "espeak", "tone"], default="auto")
    demo.add_argument("--token-delay-ms", type=float, default=30.0)
    return parser


_COMMANDS = {"serve": _cmd_serve, "say": _cmd_say, "stream": _cmd_stream, "demo": _cmd_demo}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``kugelwire`` console script."""
    args = _parser().parse_args(argv)
    try:
        return asyncio.run(_COMMANDS[args.command](args))
    except KeyboardInterrupt:
        return 130
    except CliError as exc:
        print(f"kugelwire: {exc}", file=sys.stderr)
    except ConnectionFailed as exc:
        print(f"kugelwire: cannot connect to {getattr(args, 'url', '')}: {exc.message} "
              "(is a server running? start one with: kugelwire serve)", file=sys.stderr)
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
