"""Benchmark engines and a server process that runs them.

:class:`FrameEngine` makes the server cheap per frame: it ignores the text's content except for a
leading ``<n>`` (how many frames to speak; default :attr:`FrameEngine.frames`) and yields one
pre-built piece of PCM16 (the runner's single worker-thread hop per chunk, not per frame); the
core cuts it into ``ServerLimits.frame_ms`` frames.

Run a server in its own process (so its CPU is not counted with the client's)::

    python -m benchmarks._engine --engine frames --frame-ms 200   # prints "PORT <n>"
"""

from __future__ import annotations

import argparse
import asyncio
import re
import resource
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache

from kugelwire.protocol.sessions import ServerLimits, SynthesisParams
from kugelwire.protocol.text import TextChunk
from kugelwire.synth import CancelToken, SynthesisItem

__all__ = ["KEY", "FrameEngine", "ServerProcess"]

KEY = "bench-key"
_COUNT = re.compile(r"\s*(\d+)")


@lru_cache(maxsize=64)
def _pcm(samples: int) -> bytes:
    """Deterministic noise-like PCM16 (incompressible enough to look like speech)."""
    return bytes((i * 7919 + (i >> 9)) & 0xFF for i in range(samples * 2))


@dataclass
class FrameEngine:
    """Yields ``n`` frames of audio (one piece) per chunk; ``n`` from a leading number in the
    chunk's text, else :attr:`frames`."""

    frame_ms: int = 200
    frames: int = 50
    max_concurrency: int = 64
    chunks: list[int] = field(default_factory=list, repr=False)

    def synthesize(
        self, chunk: TextChunk, params: SynthesisParams, cancel: CancelToken
    ) -> Iterator[SynthesisItem]:
        m = _COUNT.match(chunk.text)
        n = int(m.group(1)) if m else self.frames
        yield _pcm(params.sample_rate * self.frame_ms // 1000 * n)


def _serve(args: argparse.Namespace) -> None:
    from kugelwire.server import serve
    from kugelwire.synth import ToneEngine

    if args.engine == "frames":
        engine: object = FrameEngine(frame_ms=args.frame_ms)
    elif args.engine == "tone":
        engine = ToneEngine(piece_ms=args.piece_ms, max_concurrency=64)
    else:
        from kugelwire.synth import EspeakEngine

        engine = EspeakEngine()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    options = dict(engine=engine, api_key=KEY, limits=ServerLimits(frame_ms=args.frame_ms),
                   max_connections=100_000, ping_interval=None, backlog=4096)
    if args.backend != "asyncio":
        _serve_other(args.backend, options)
        return

    async def main() -> None:
        async with serve("127.0.0.1", 0, **options) as server:
            print(f"PORT {server.port}", flush=True)
            loop = asyncio.get_running_loop()
            reader = asyncio.StreamReader()
            await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
            await reader.read()  # until the parent closes our stdin
            usage = resource.getrusage(resource.RUSAGE_SELF)
            print(f"USAGE {usage.ru_utime + usage.ru_stime} {usage.ru_maxrss}", flush=True)

    asyncio.run(main())


def _serve_other(backend: str, options: dict[str, object]) -> None:
    """The same server on another backend, or on the pre-core asyncio runner (``legacy``)."""
    if backend == "legacy":
        from benchmarks._legacy.common import ServerOptions as LegacyOptions
        from benchmarks._legacy.runner import serve as legacy_serve

        del options["backlog"]

        async def main() -> None:
            async with legacy_serve("127.0.0.1", 0, LegacyOptions(**options)) as server:  # type: ignore[arg-type]
                print(f"PORT {server.port}", flush=True)
                await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)

        asyncio.run(main())
    else:
        from kugelwire.server import run_in_thread

        with run_in_thread("127.0.0.1", 0, backend=backend, **options) as server:  # type: ignore[arg-type]
            print(f"PORT {server.port}", flush=True)
            sys.stdin.read()  # until the parent closes our stdin
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(f"USAGE {usage.ru_utime + usage.ru_stime} {usage.ru_maxrss}", flush=True)


class ServerProcess:
    """A kugelwire server in a child process; ``with ServerProcess(...) as s: s.url``."""

    def __init__(self, engine: str = "frames", frame_ms: int = 200, piece_ms: int = 100,
                 backend: str = "asyncio") -> None:
        self.cmd = [sys.executable, "-m", "benchmarks._engine", "--engine", engine,
                    "--frame-ms", str(frame_ms), "--piece-ms", str(piece_ms),
                    "--backend", backend]
        if engine == "replay":  # benchmarks/_replay.py: pre-encoded turns, written at once
            self.cmd = [sys.executable, "-m", "benchmarks._replay"]
        self.proc: subprocess.Popen[str] | None = None
        self.port = 0
        self.cpu_s = 0.0  # server CPU (user+sys) over its whole life, after exit
        self.maxrss_kb = 0

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def __enter__(self) -> ServerProcess:
        self.proc = subprocess.Popen(self.cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("PORT "):
            raise RuntimeError(f"server did not start: {line!r}")
        self.port = int(line.split()[1])
        return self

    def usage(self) -> tuple[float, int]:
        """Ask the server to exit; its (CPU seconds, max RSS KiB)."""
        proc = self.proc
        if proc is None:
            return self.cpu_s, self.maxrss_kb
        self.proc = None
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.close()
        for line in proc.stdout:
            if line.startswith("USAGE "):
                cpu, rss = line.split()[1:]
                self.cpu_s, self.maxrss_kb = float(cpu), int(rss)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        return self.cpu_s, self.maxrss_kb

    def __exit__(self, *exc: object) -> None:
        self.usage()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--engine", choices=("frames", "tone", "espeak"), default="frames")
    parser.add_argument("--frame-ms", type=int, default=200)
    parser.add_argument("--piece-ms", type=int, default=100)
    parser.add_argument("--backend", default="asyncio",
                        choices=("asyncio", "trio", "anyio", "sync", "legacy"))
    _serve(parser.parse_args())
