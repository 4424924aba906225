"""Run a KugelAudio-compatible TTS server on a TCP port (``/ws/tts``, ``/ws/tts/stream``,
``/ws/tts/multi``).

The runners only move bytes, drive timers and run the engine in worker threads; every protocol
decision is made by the sans-IO core (:mod:`kugelwire.protocol`)::

    async with serve("127.0.0.1", 0, engine=ToneEngine(), api_key="secret") as server:
        print(server.url)            # ws://127.0.0.1:PORT
        await server.shutdown(1012)  # graceful rolling restart

    with run_in_thread(api_key="secret") as handle:   # for sync code / pytest fixtures
        print(handle.url)

    async with trio_serve(...) as server: ...       # the same under trio (needs ``trio``)

A plain HTTP ``GET /`` answers the browser playground (:func:`playground_handler`); pass your own
``http_handler`` to replace it (``http_handler=lambda path: None`` answers 404 everywhere).
"""

from __future__ import annotations

import asyncio
import threading
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

from ..lint import Linter
from ..protocol._server import ServerLimits
from ..protocol._ws import HttpHandler
from ..synth import Engine, ToneEngine
from . import _runner
from ._common import ServerOptions
from ._metrics import Metrics, metrics_handler
from ._playground import lint_handler, playground_handler
from ._runner import ServerHandle

if TYPE_CHECKING:
    from ._trio import TrioServerHandle

__all__ = ["Metrics", "ServerHandle", "ServerOptions", "ThreadedServer", "playground_handler",
           "run_in_thread", "serve", "trio_serve"]


def _options(
    *,
    engine: Engine | None = None,
    api_key: str | None = None,
    limits: ServerLimits | None = None,
    max_connections: int = 10_000,
    max_message_size: int = 2**20,
    handshake_timeout: float = 10.0,
    close_timeout: float = 5.0,
    write_buffer_limit: int = 2**20,
    auth_failure: Literal["http", "close"] = "http",
    shutdown_timeout: float = 10.0,
    http_handler: HttpHandler | None = None,
    ping_interval: float | None = 20.0,
    ping_timeout: float = 20.0,
    lint: bool | Linter = True,
    metrics: bool | Metrics = False,
) -> ServerOptions:
    linter = Linter() if lint is True else (lint or None)
    if http_handler is None:
        http_handler = (
            playground_handler if linter is None else lint_handler(linter, playground_handler)
        )
    registry = Metrics() if metrics is True else (metrics or None)
    if registry is not None:  # GET /metrics in front of the playground / the given handler
        http_handler = metrics_handler(registry, http_handler)
    return ServerOptions(
        engine=engine if engine is not None else ToneEngine(),
        api_key=api_key,
        limits=limits,
        max_connections=max_connections,
        max_message_size=max_message_size,
        handshake_timeout=handshake_timeout,
        close_timeout=close_timeout,
        write_buffer_limit=write_buffer_limit,
        auth_failure=auth_failure,
        shutdown_timeout=shutdown_timeout,
        http_handler=http_handler,
        ping_interval=ping_interval,
        ping_timeout=ping_timeout,
        lint=linter,
        metrics=registry,
    )


def serve(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    engine: Engine | None = None,
    api_key: str | None = None,
    limits: ServerLimits | None = None,
    max_connections: int = 10_000,
    max_message_size: int = 2**20,
    handshake_timeout: float = 10.0,
    close_timeout: float = 5.0,
    write_buffer_limit: int = 2**20,
    auth_failure: Literal["http", "close"] = "http",
    shutdown_timeout: float = 10.0,
    http_handler: HttpHandler | None = None,
    ping_interval: float | None = 20.0,
    ping_timeout: float = 20.0,
    lint: bool | Linter = True,
    metrics: bool | Metrics = False,
) -> AbstractAsyncContextManager[ServerHandle]:
    """Serve the three endpoints on ``host:port`` (asyncio) for the ``async with`` block.

    ``engine`` defaults to :class:`~kugelwire.synth.ToneEngine`. ``api_key=None`` accepts any key.
    ``limits`` are the core's :class:`ServerLimits`. ``write_buffer_limit`` bounds each
    connection's unsent bytes: above it that connection's synthesis pauses until the socket
    drains. A connection silent for ``ping_interval`` seconds is pinged and closed (1011) when
    the pong does not come within ``ping_timeout`` (``ping_interval=None``: never). Leaving the
    block shuts down gracefully (1012), aborting what is still open after ``shutdown_timeout``
    seconds. Every limit and its default: ``docs/limits.md``. ``http_handler`` answers plain
    HTTP GETs (default: the browser playground at ``/`` and the rule checks' findings at
    ``/lint/findings``, 404 elsewhere).

    ``lint`` checks how clients use the protocol (:mod:`kugelwire.lint`): True (default) for a
    new :class:`~kugelwire.lint.Linter` with default thresholds, a ``Linter`` of your own, or
    False for none. Findings are logged on ``kugelwire.lint``; read them from
    ``handle.options.lint.findings``. ``metrics=True`` (or a
    :class:`Metrics`) answers Prometheus text at ``GET /metrics`` (``docs/metrics.md``).
    """
    return _runner.serve(
        host,
        port,
        _options(
            engine=engine,
            api_key=api_key,
            limits=limits,
            max_connections=max_connections,
            max_message_size=max_message_size,
            handshake_timeout=handshake_timeout,
            close_timeout=close_timeout,
            write_buffer_limit=write_buffer_limit,
            auth_failure=auth_failure,
            shutdown_timeout=shutdown_timeout,
            http_handler=http_handler,
            ping_interval=ping_interval,
            ping_timeout=ping_timeout,
            lint=lint,
            metrics=metrics,
        ),
    )


def trio_serve(
    host: str = "127.0.0.1", port: int = 0, **kwargs: Any
) -> AbstractAsyncContextManager[TrioServerHandle]:
    """:func:`serve` for trio (same keyword arguments and handle attributes; needs ``trio``)."""
    from . import _trio

    return _trio.serve(host, port, _options(**kwargs))


class ThreadedServer:
    """An asyncio server running on its own event loop in a background thread.

    Use as a context manager (or :meth:`start` / :meth:`stop`); attributes mirror
    :class:`ServerHandle` (``url``, ``port``, ``connections``).
    """

    def __init__(self, host: str, port: int, options: ServerOptions) -> None:
        self._host, self._port, self._options = host, port, options
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._handle: ServerHandle | None = None
        self._error: BaseException | None = None

    @property
    def server(self) -> ServerHandle:
        """The asyncio handle (use its methods only from the server's loop)."""
        if self._handle is None:
            raise RuntimeError("the server is not running")
        return self._handle

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def connections(self) -> int:
        return self.server.connections

    @property
    def peak_buffered(self) -> int:
        return self.server.peak_buffered

    @property
    def linter(self) -> Linter | None:
        """The server's rule checks (:mod:`kugelwire.lint`), or None when they are off."""
        return self._options.lint

    def start(self) -> ThreadedServer:
        """Start the thread and wait until the server listens (re-raises startup errors)."""
        self._thread = threading.Thread(target=self._main, name="kugelwire-server", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error
        return self

    def shutdown(self, code: int = 1012, timeout: float | None = None) -> None:
        """Graceful shutdown (see :meth:`ServerHandle.shutdown`), blocking until done."""
        if self._loop is None or self._handle is None:
            return
        fut = asyncio.run_coroutine_threadsafe(self._handle.shutdown(code, timeout), self._loop)
        fut.result()

    def stop(self) -> None:
        """Shut down (1012) and join the thread."""
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(stop.set)
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self) -> ThreadedServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _main(self) -> None:
        try:
            asyncio.run(self._amain())
        except BaseException as exc:  # pragma: no cover - reported through start()
            self._error = exc
        finally:
            self._ready.set()

    async def _amain(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with _runner.serve(self._host, self._port, self._options) as handle:
            self._handle = handle
            self._ready.set()
            await self._stop.wait()


def run_in_thread(host: str = "127.0.0.1", port: int = 0, **kwargs: Any) -> ThreadedServer:
    """An asyncio server in a background thread (a context manager); keyword arguments as
    for :func:`serve`."""
    return ThreadedServer(host, port, _options(**kwargs))
