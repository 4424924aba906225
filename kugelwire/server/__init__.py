"""Run a KugelAudio-compatible TTS server (``/ws/tts``, ``/ws/tts/stream``, ``/ws/tts/multi``)
on a TCP port, on the event loop (or threads) of your choice.

Every backend is a thin adapter over one sans-IO core (:mod:`kugelwire.server._core`): it only
moves bytes, sleeps until the core's next deadline and runs the engine in worker threads::

    async with serve("127.0.0.1", 0, engine=ToneEngine(), api_key="secret") as server:
        print(server.url)            # ws://127.0.0.1:PORT
        await server.shutdown(1012)  # graceful rolling restart

    async with serve(backend="anyio") as server: ...  # anyio, on asyncio or trio
    async with trio_serve(...) as server: ...         # native trio (needs ``trio``)
    with serve(backend="sync") as server: ...         # blocking sockets + threads, no event loop

    with run_in_thread(api_key="secret") as handle:   # any backend, for sync code / fixtures
        print(handle.url)

Every keyword argument is a field of :class:`ServerOptions` (defined once; ``kugelwire serve``
derives its flags from it). A plain HTTP ``GET /`` answers the browser playground
(:func:`playground_handler`); pass your own ``http_handler`` to replace it. For ASGI servers
(uvicorn, hypercorn) and Starlette/FastAPI mounts see :mod:`kugelwire.server.asgi`.
"""

from __future__ import annotations

import dataclasses
import inspect
import queue
import threading
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

from ._asyncio import ServerHandle
from ._core import ServerOptions, SocketAction
from ._faults import Fault, FaultPlan, FaultyConnection
from ._metrics import Metrics
from ._playground import playground_handler

if TYPE_CHECKING:
    from ..lint import Linter
    from ._adapter import HandleBase
    from ._sync import SyncServerHandle
    from ._trio import TrioServerHandle

__all__ = ["BACKENDS", "Backend", "Fault", "FaultPlan", "FaultyConnection", "Metrics",
           "ServerHandle", "ServerOptions", "SocketAction", "ThreadedServer",
           "playground_handler", "run_in_thread", "serve", "trio_serve"]

Backend = Literal["asyncio", "trio", "anyio", "sync"]
#: The backends ``serve()``, ``run_in_thread()`` and ``kugelwire serve --backend`` accept.
BACKENDS: tuple[str, ...] = ("asyncio", "trio", "anyio", "sync")


def _async_serve(backend: str, host: str, port: int,
                 options: ServerOptions) -> AbstractAsyncContextManager[Any]:
    if backend == "asyncio":
        from . import _asyncio as module
    elif backend == "trio":
        from . import _trio as module  # type: ignore[no-redef]
    elif backend == "anyio":
        from . import _anyio as module  # type: ignore[no-redef]
    else:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
    return module.serve(host, port, options)


def serve(host: str = "127.0.0.1", port: int = 0, *, backend: Backend = "asyncio",
          **options: Any) -> Any:
    """Serve the three endpoints on ``host:port`` for the ``async with`` block (``with`` for
    ``backend="sync"``); the handle has ``url``, ``port``, ``connections``, ``peak_buffered``,
    ``stats()`` and ``shutdown(code, timeout)``.

    Keyword arguments are the fields of :class:`ServerOptions`: ``engine`` defaults to
    :class:`~kugelwire.synth.ToneEngine`, ``api_key=None`` accepts any key, ``limits`` are the
    core's :class:`ServerLimits`, ``write_buffer_limit`` bounds each connection's unsent bytes
    (above it that connection's synthesis pauses until the socket drains), a connection silent
    for ``ping_interval`` seconds is pinged and closed (1011) when the pong does not come within
    ``ping_timeout``. Leaving the block shuts down gracefully (1012), aborting what is still
    open after ``shutdown_timeout`` seconds. Every limit and its default: ``docs/limits.md``.
    """
    opts = ServerOptions.from_kwargs(**options)
    if backend == "sync":
        from . import _sync

        return _sync.serve(host, port, opts)
    return _async_serve(backend, host, port, opts)


def _signature() -> inspect.Signature:
    params = [inspect.Parameter("host", inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                default="127.0.0.1"),
              inspect.Parameter("port", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=0),
              inspect.Parameter("backend", inspect.Parameter.KEYWORD_ONLY, default="asyncio")]
    for f in dataclasses.fields(ServerOptions):
        default = None if f.name == "engine" else f.default
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=default))
    return inspect.Signature(params)


serve.__signature__ = _signature()  # type: ignore[attr-defined]


def trio_serve(
    host: str = "127.0.0.1", port: int = 0, **kwargs: Any
) -> AbstractAsyncContextManager[TrioServerHandle]:
    """:func:`serve` for trio (same keyword arguments and handle attributes; needs ``trio``)."""
    return serve(host, port, backend="trio", **kwargs)  # type: ignore[no-any-return]


def _delegate(name: str, doc: str) -> Any:
    """A read-only property answered by the running backend's handle."""
    return property(lambda self: getattr(self.server, name), doc=doc)


class ThreadedServer:
    """A server of any backend running in a background thread (its own event loop, or the
    sync backend's I/O thread). Use as a context manager (or :meth:`start` / :meth:`stop`);
    attributes mirror :class:`ServerHandle` and are safe to read from any thread."""

    def __init__(self, host: str, port: int, options: ServerOptions,
                 backend: Backend = "asyncio") -> None:
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
        self._host, self._port, self._options, self.backend = host, port, options, backend
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._inbox: queue.SimpleQueue[tuple[Callable[[], Any], queue.SimpleQueue[Any]]] = (
            queue.SimpleQueue())
        self._handle: Any = None
        self._sync: AbstractContextManager[SyncServerHandle] | None = None
        self._error: BaseException | None = None

    @property
    def server(self) -> HandleBase:
        """The backend's handle (call its async methods only through :meth:`call`)."""
        if self._handle is None:
            raise RuntimeError("the server is not running")
        return self._handle  # type: ignore[no-any-return]

    url: str = _delegate("url", "``ws://host:port`` of the running server.")
    port: int = _delegate("port", "The port it listens on.")
    connections: int = _delegate("connections", "Open TCP connections.")
    peak_buffered: int = _delegate("peak_buffered", "The most unsent bytes any connection held.")

    def stats(self) -> dict[str, int]:
        """The server's live counters (see :meth:`ServerHandle.stats`)."""
        return self.server.stats()

    @property
    def linter(self) -> Linter | None:
        """The server's rule checks (:mod:`kugelwire.lint`), or None when they are off."""
        return self._options.lint

    def start(self) -> ThreadedServer:
        """Start the server and wait until it listens (re-raises startup errors)."""
        if self.backend == "sync":
            from . import _sync

            self._sync = _sync.serve(self._host, self._port, self._options)
            self._handle = self._sync.__enter__()
            return self
        self._thread = threading.Thread(target=self._main, name="kugelwire-server", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error
        return self

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn()`` (a plain or async function) on the server's thread; its result."""
        if self._sync is not None:
            return fn()
        reply: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._inbox.put((fn, reply))
        ok, value = reply.get(timeout=60)
        if not ok:
            raise value
        return value

    def shutdown(self, code: int = 1012, timeout: float | None = None) -> None:
        """Graceful shutdown (see :meth:`ServerHandle.shutdown`), blocking until done."""
        if self._handle is not None:
            handle = self._handle
            self.call(lambda: handle.shutdown(code, timeout))

    def stop(self) -> None:
        """Shut down (1012) and wait for the server to end."""
        if self._sync is not None:
            self._sync.__exit__(None, None, None)
            self._sync = None
        elif self._thread is not None:
            self._inbox.put((_STOP, queue.SimpleQueue()))
            self._thread.join()
            self._thread = None

    def __enter__(self) -> ThreadedServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def _main(self) -> None:
        if self.backend == "trio":
            import trio

            run: Callable[[Callable[[], Any]], Any] = trio.run
            sleep: Callable[[float], Any] = trio.sleep
        elif self.backend == "anyio":
            import anyio

            run, sleep = anyio.run, anyio.sleep
        else:
            import asyncio

            run, sleep = (lambda f: asyncio.run(f())), asyncio.sleep
        try:
            run(lambda: self._amain(sleep))
        except BaseException as exc:  # pragma: no cover - reported through start()
            self._error = exc
        finally:
            self._ready.set()

    async def _amain(self, sleep: Callable[[float], Any]) -> None:
        async with _async_serve(self.backend, self._host, self._port, self._options) as handle:
            self._handle = handle
            self._ready.set()
            while True:  # calls from other threads (a 10 ms poll keeps this backend-neutral)
                try:
                    fn, reply = self._inbox.get_nowait()
                except queue.Empty:
                    await sleep(0.01)
                    continue
                if fn is _STOP:
                    return
                try:
                    result = fn()
                    if inspect.isawaitable(result):
                        result = await result
                    reply.put((True, result))
                except Exception as exc:
                    reply.put((False, exc))


def _STOP() -> None:
    """The stop request of :class:`ThreadedServer`."""


def run_in_thread(host: str = "127.0.0.1", port: int = 0, *, backend: Backend = "asyncio",
                  **kwargs: Any) -> ThreadedServer:
    """A server of ``backend`` in a background thread (a context manager); keyword arguments
    as for :func:`serve`."""
    return ThreadedServer(host, port, ServerOptions.from_kwargs(**kwargs), backend)

