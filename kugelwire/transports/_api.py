"""The application-facing objects of every client adapter, written once.

The adapters (:mod:`~kugelwire.transports.asyncio`, :mod:`~kugelwire.transports.trio`,
:mod:`~kugelwire.transports.anyio`, :mod:`~kugelwire.transports.sync`) only provide a *driver*:
a clock, a socket, a reader, a timer and a way to wait. Everything the application touches is
defined here on top of a driver and the sans-IO :class:`~kugelwire.transports._core.ClientCore`:

* the ``connect_*`` functions (:func:`connector`: one signature for every adapter and endpoint;
  :class:`Scoped` for anyio's task-group scoped connections);
* the async API (:class:`AsyncStream`, :class:`AsyncMulti`, :class:`AsyncTTS` and their turn /
  request / context handles), shared by asyncio, trio and anyio;
* the blocking API (:class:`Stream`, :class:`Multi`, :class:`TTS`...), the same without ``await``;
* :class:`SignalDriver`: the waiting logic both async drivers share (one "something changed"
  event, replaced each time it fires).
"""

from __future__ import annotations

import contextlib
import inspect
import ssl as _ssl
import weakref
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, fields
from typing import Any, Generic, Literal, Protocol, TypeVar

from ..errors import ConnectionFailed, KugelwireError, LocalProtocolError
from ..protocol.events import ClientEvent, ContextClosed, Interrupted, TurnFinal
from ..protocol.ws import ENDPOINT_KINDS
from ._core import ClientCore, EventBuffer, Kind

__all__ = [
    "TTS",
    "AsyncContext",
    "AsyncMulti",
    "AsyncRequest",
    "AsyncStream",
    "AsyncTTS",
    "AsyncTurn",
    "Connect",
    "ConnectOptions",
    "Context",
    "Events",
    "Multi",
    "Request",
    "Scoped",
    "SignalDriver",
    "Stream",
    "SyncClient",
    "Turn",
    "async_connectors",
    "connect_error",
    "connector",
]

#: Bytes asked of the socket per read, in every adapter: at most one such read arrives past
#: the buffering bound before reading pauses.
READ_SIZE = 65536
_R = TypeVar("_R")
_R_co = TypeVar("_R_co", covariant=True)
_H = TypeVar("_H")
_AC = TypeVar("_AC", bound="_AsyncClient")
_SC = TypeVar("_SC", bound="SyncClient")
_FINAL = (TurnFinal, Interrupted, ContextClosed)


# -- connecting --------------------------------------------------------------------------------
@dataclass(frozen=True)
class ConnectOptions:
    """The transport options of a ``connect_*`` call (everything else is ``config``)."""

    api_key: str | None = None
    auth: Literal["query", "bearer"] = "query"
    connect_timeout: float = 10.0
    ssl: _ssl.SSLContext | None = None
    max_buffered_bytes: int = 4 * 2**20
    close_timeout: float = 10.0
    write_timeout: float = 15.0
    max_send_buffer: int = 4 * 2**20
    config: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.write_timeout > 0 or self.max_send_buffer <= 0:
            raise LocalProtocolError("write_timeout and max_send_buffer must be positive")

    def core(self, kind: Kind, url: str, now: float) -> ClientCore:
        """A fresh :class:`ClientCore` for ``kind`` at ``url`` with these options."""
        config = {"handshake_timeout": self.connect_timeout, **self.config}
        return ClientCore(
            kind, url, now=now, api_key=self.api_key, auth=self.auth,
            max_buffered_bytes=self.max_buffered_bytes, **config,
        )


class Connect(Protocol[_R_co]):
    """The signature of every ``connect_stream`` / ``connect_multi`` / ``connect_tts``."""

    def __call__(
        self,
        url: str,
        *,
        api_key: str | None = None,
        auth: Literal["query", "bearer"] = "query",
        connect_timeout: float = 10.0,
        ssl: _ssl.SSLContext | None = None,
        max_buffered_bytes: int = 4 * 2**20,
        close_timeout: float = 10.0,
        write_timeout: float = 15.0,
        max_send_buffer: int = 4 * 2**20,
        **config: Any,
    ) -> _R_co: ...


_OPTIONS = tuple(f.name for f in fields(ConnectOptions) if f.name != "config")
_SIGNATURE = inspect.signature(Connect.__call__)
_SIGNATURE = _SIGNATURE.replace(  # without ``self`` and the generic return type
    parameters=list(_SIGNATURE.parameters.values())[1:], return_annotation=inspect.Signature.empty
)


_CONNECT_DOC = """Connect to ``{endpoint}`` ({what}).

``url``: the server's base URL (``ws://host:port``) or the endpoint's URL. ``api_key`` is sent as
a query parameter (``auth="query"``) or an ``Authorization: Bearer`` header (``auth="bearer"``).
``connect_timeout`` bounds the TCP/TLS connect and the upgrade; ``ssl`` overrides the default TLS
context for ``wss://``; ``max_buffered_bytes`` bounds the audio waiting to be consumed (reading
pauses above it); ``close_timeout`` bounds the graceful ``close()`` (while closing, reading still
pauses above ``max_buffered_bytes``: a turn nobody consumes is discarded when the close starts
waiting for it). ``write_timeout`` bounds a write the server takes nothing of and
``max_send_buffer`` the bytes waiting to be written; past either the connection is aborted and
unfinished work raises :class:`~kugelwire.errors.SendBufferFull`.

``config``: sticky config fields (``voice_id``, ``sample_rate``...), session options
(``cancel_timeout``, ``idle_flush_guard``) and core options (``restart_delay``, ``max_restarts``,
``ping_interval``, ``ping_timeout``, ``max_buffered_events``...).
"""
_WHAT = {
    "stream": "text in, turns of audio out",
    "multi": "up to 20 contexts over one socket",
    "tts": "one-shot requests",
}


def connector(
    kind: Kind, open_: Callable[[Kind, str, ConnectOptions], _R], flavour: str
) -> Connect[_R]:
    """A ``connect_<kind>`` function (the signature of :class:`Connect`) that hands its URL and
    options to ``open_(kind, url, options)``, which builds one adapter's core and driver (an
    async adapter returns a coroutine, so the core is built inside the running event loop)."""

    def connect(url: str, **kwargs: Any) -> _R:
        options = {name: kwargs.pop(name) for name in _OPTIONS if name in kwargs}
        return open_(kind, url, ConnectOptions(**options, config=kwargs))

    connect.__name__ = connect.__qualname__ = f"connect_{kind}"
    connect.__signature__ = _SIGNATURE  # type: ignore[attr-defined]
    endpoint = ENDPOINT_KINDS[kind]
    connect.__doc__ = _CONNECT_DOC.format(endpoint=endpoint, what=f"{_WHAT[kind]}; {flavour}")
    return connect


def connect_error(core: ClientCore, timed_out: bool = False) -> KugelwireError:
    """What a failed ``connect_*`` raises."""
    if timed_out:
        return ConnectionFailed(f"timed out connecting to {core.display_url}")
    return core.error or ConnectionFailed(f"cannot connect to {core.display_url}")


# -- the async drivers' shared half ----------------------------------------------------------
class _Signal(Protocol):
    def set(self) -> None: ...
    def wait(self) -> Awaitable[object]: ...


class SignalDriver:
    """Waiting logic shared by the asyncio and trio drivers.

    One signal (an asyncio / trio ``Event``) fires whenever the core may have changed and is then
    replaced, so every waiter re-checks the core. Subclasses provide :meth:`now`, :meth:`send`,
    :meth:`kick` and :meth:`close`.
    """

    core: ClientCore

    def __init__(self, core: ClientCore, new_signal: Callable[[], _Signal]) -> None:
        self.core = core
        self._new_signal = new_signal
        self._signal_: _Signal | None = None  # made when someone waits (not per change)

    @property
    def _signal(self) -> _Signal:
        signal = self._signal_
        if signal is None:
            signal = self._signal_ = self._new_signal()
        return signal

    def now(self) -> float:
        raise NotImplementedError

    def kick(self) -> None:
        """Write what the core queued soon, without waiting (for non-async callers)."""
        raise NotImplementedError

    async def send(self, *, urgent: bool = False) -> None:
        """Write what the core queued. ``urgent``: a flush (a turn's audio waits for it), so
        write it now rather than coalescing it with what may follow."""
        raise NotImplementedError

    async def close(self, *, abort: bool = False) -> None:
        raise NotImplementedError

    async def start(self) -> None:
        """Open the socket, start the background tasks, wait for the upgrade."""
        raise NotImplementedError

    async def call(
        self, fn: Callable[..., _R], *args: Any, urgent: bool = False, **kwargs: Any
    ) -> _R:
        """Run a core command now, then write what it queued."""
        result = fn(*args, now=self.now(), **kwargs)
        await self.send(urgent=urgent or kwargs.get("flush", False))
        return result

    async def call_handle(
        self, make: Callable[[_R], _H], fn: Callable[..., _R], *args: Any,
        urgent: bool = False, **kwargs: Any,
    ) -> _H:
        """Run a core command and turn its result into a handle (``make``) *before* writing:
        the handle must exist before anything else runs, or events arriving while the write
        waits would be routed to a buffer that looks abandoned."""
        handle = make(fn(*args, now=self.now(), **kwargs))
        await self.send(urgent=urgent or kwargs.get("flush", False))
        return handle

    def call_soon(self, fn: Callable[..., _R], *args: Any, **kwargs: Any) -> _R:
        """Run a core command now; its bytes are written soon (for plain functions)."""
        result = fn(*args, now=self.now(), **kwargs)
        self.kick()
        return result

    def changed(self) -> None:
        """Wake every waiter (the core may have changed)."""
        signal, self._signal_ = self._signal_, None
        if signal is not None:
            signal.set()

    async def until(self, ready: Callable[[], bool]) -> None:
        """Wait until ``ready()`` (re-checked whenever the core changed)."""
        while not ready():
            await self._signal.wait()

    def take(self, buf: EventBuffer) -> ClientEvent | None:
        """An event of ``buf`` if one is buffered, else None (without waiting)."""
        core = self.core
        event = core.pop(buf)
        if core.take_resumed():
            self.changed()  # the reader may read again
        return event

    async def next_event(self, buf: EventBuffer) -> ClientEvent | None:
        """The next event of ``buf`` (waiting for it), or None once its stream is over."""
        while not buf.exhausted:
            signal = self._signal  # before looking: a change after the look wakes the wait
            event = self.take(buf)
            if event is not None:
                return event
            if not buf.exhausted:
                await signal.wait()
        return None


# -- pieces shared by the async and the blocking API -------------------------------------------
class _Handle:
    """Common face of a turn / request / context handle."""

    def __init__(self, driver: Any, buf: EventBuffer) -> None:
        self._driver = driver
        self._buf = buf
        # The buffer keeps a weak reference to its handle (a later handle replaces it); the
        # core learns that the application dropped the handle from __del__ (weakref.finalize,
        # at about 5 us, was most of what a turn's send_text cost).
        buf.handle = weakref.ref(self)

    def __del__(self) -> None:
        self._driver.core.handle_dropped(self._buf)  # only sets flags (any thread, any time)

    @property
    def number(self) -> int | None:
        """The turn / request number (on the connection that carries it now)."""
        return self._buf.number

    @property
    def done(self) -> bool:
        """True once every event (including the terminal one) was handed out."""
        return self._buf.exhausted


class _ContextHandle(_Handle):
    @property
    def context_id(self) -> str:
        """The context's id."""
        assert self._buf.context_id is not None
        return self._buf.context_id


class _ClientBase:
    """Common face of every connection object."""

    def __init__(self, driver: Any) -> None:
        self._driver = driver
        self._core: ClientCore = driver.core

    @property
    def settings(self) -> dict[str, Any] | None:
        """The effective settings of the server's last ``update_settings`` reply."""
        return self._core.settings

    @property
    def log(self) -> deque[ClientEvent]:
        """Recent events that belong to no turn (settings replies, turn-less errors...)."""
        return self._core.log

    @property
    def closed(self) -> bool:
        return self._core.finished

    @property
    def restarts(self) -> int:
        """How many times the connection was transparently re-established (1012/1013)."""
        return self._core.restarts


class _Handles(Generic[_H]):
    """One handle per turn buffer; a dropped turn gets a new handle when more text comes."""

    def __init__(
        self, core: ClientCore, make: Callable[[EventBuffer], _H],
        lock: AbstractContextManager[Any] | None = None,
    ) -> None:
        self._core, self._make = core, make
        self._lock = lock

    def get(self, buf: EventBuffer) -> _H:
        # The buffer keeps a weak reference to its handle (one C call per token to find it).
        ref = buf.handle
        handle: _H | None = None if ref is None else ref()
        if handle is not None:
            return handle
        with self._lock if self._lock is not None else contextlib.nullcontext():
            ref = buf.handle
            handle = None if ref is None else ref()
            if handle is None:
                self._core.reclaim(buf)
                handle = self._make(buf)  # which sets buf.handle
        return handle

    def get_or_none(self, buf: EventBuffer | None) -> _H | None:
        return None if buf is None else self.get(buf)


# -- the async API -------------------------------------------------------------------------------
class AsyncEvents(_Handle):
    """Async iterator over the events of one turn / request / context, up to its terminal."""

    _driver: SignalDriver

    def __aiter__(self) -> AsyncEvents:
        return self

    async def __anext__(self) -> ClientEvent:
        buf = self._buf
        if buf.events:  # one is buffered: taken without a second coroutine (the hot path)
            event = self._driver.take(buf)
            if event is not None:
                return event
        event = await self._driver.next_event(buf)
        if event is None:
            raise StopAsyncIteration
        return event

    async def collect(self) -> list[ClientEvent]:
        """Every remaining event, up to and including the terminal one."""
        return [event async for event in self]


class AsyncTurn(AsyncEvents):
    """One turn of ``/ws/tts/stream``: iterate it for its events; ends with ``TurnClosed``
    (or ``Interrupted`` after a cancel); a lost connection raises a typed error instead."""


class AsyncRequest(AsyncEvents):
    """One ``/ws/tts`` request: its events, ending with ``RequestFinal`` or ``Interrupted``;
    an error frame for it raises :class:`~kugelwire.errors.ServerErrorResponse`."""


class AsyncContext(AsyncEvents, _ContextHandle):
    """One context of ``/ws/tts/multi``. Iterating it yields all its events until
    ``ContextClosed``; :meth:`until_final` stops at the end of the current flush-cycle."""

    async def send_text(self, text: str, *, flush: bool = False) -> None:
        await self._driver.call(self._driver.core.multi_send_text, self._buf, text, flush=flush)

    async def flush(self) -> None:
        await self._driver.call(self._driver.core.multi_flush, self._buf, urgent=True)

    async def cancel(self) -> None:
        """Barge-in on this context: its current cycle's audio is dropped from now on."""
        await self._driver.call(self._driver.core.multi_cancel, self._buf)

    async def close(self, *, immediate: bool = False) -> None:
        """Graceful close (``final`` then ``context_closed``) or immediate (no more audio)."""
        await self._driver.call(self._driver.core.multi_close, self._buf, immediate=immediate)

    async def until_final(self) -> AsyncIterator[ClientEvent]:
        """Events up to and including the next ``TurnFinal`` / ``Interrupted`` /
        ``ContextClosed``."""
        async for event in self:
            yield event
            if isinstance(event, _FINAL):
                return


class _AsyncClient(_ClientBase):
    _driver: SignalDriver

    async def update_settings(self, **settings: Any) -> None:
        """Send ``update_settings`` (the reply lands in :attr:`settings`); never waits."""
        await self._driver.call(self._core.update_settings, **settings)

    async def close(self) -> None:
        """Graceful close: ``close_socket``, let the server drain, close the socket."""
        await self._driver.close()

    async def aclose(self) -> None:
        """Abort at once (no draining)."""
        await self._driver.close(abort=True)

    async def __aenter__(self: _AC) -> _AC:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        await self._driver.close(abort=exc_type is not None)


class AsyncStream(_AsyncClient):
    """``/ws/tts/stream``: text in, turns of audio out (full duplex)."""

    def __init__(self, driver: SignalDriver) -> None:
        super().__init__(driver)
        self._turns = _Handles(self._core, lambda buf: AsyncTurn(driver, buf))

    async def send_text(self, text: str, *, flush: bool = False) -> AsyncTurn | None:
        """Send a text fragment now; returns its turn (None for empty text). Never waits for
        audio."""
        return await self._driver.call_handle(
            self._turns.get_or_none, self._core.stream_send_text, text, flush=flush
        )

    async def flush(self) -> AsyncTurn:
        """End the open turn (exactly once per turn)."""
        return await self._driver.call_handle(
            self._turns.get, self._core.stream_flush, urgent=True
        )

    async def cancel(self) -> None:
        """Barge-in: no audio of the cancelled turns is handed out after this returns."""
        await self._driver.call(self._core.stream_cancel)


class AsyncMulti(_AsyncClient):
    """``/ws/tts/multi``: up to 20 contexts over one socket, one event stream each."""

    async def create_context(
        self, context_id: str, *, voice_id: int | str | None = None,
        cfg_scale: float | None = None, max_new_tokens: int | None = None,
    ) -> AsyncContext:
        given = {"voice_id": voice_id, "cfg_scale": cfg_scale, "max_new_tokens": max_new_tokens}
        options: dict[str, Any] = {k: v for k, v in given.items() if v is not None}
        buf = await self._driver.call(self._core.multi_create, context_id, **options)
        return AsyncContext(self._driver, buf)

    async def cancel(self) -> None:
        """Cancel every context still taking input."""
        await self._driver.call(self._core.multi_cancel, None)


class AsyncTTS(_AsyncClient):
    """``/ws/tts``: one-shot requests, queued in order on one socket."""

    def synthesize(self, text: str, **params: Any) -> AsyncRequest:
        """Queue a request now (``params`` override the connection config for it) and return
        its event stream: ``async for ev in tts.synthesize("Hi.", voice_id=1)``."""
        buf = self._driver.call_soon(self._core.tts_request, text, **params)
        return AsyncRequest(self._driver, buf)

    async def cancel(self) -> None:
        """Abandon the request being generated."""
        await self._driver.call(self._core.tts_cancel)


_ASYNC_CLIENTS: dict[str, type[_AsyncClient]] = {
    "stream": AsyncStream, "multi": AsyncMulti, "tts": AsyncTTS,
}


def async_connectors(
    new_driver: Callable[[ClientCore, ConnectOptions], SignalDriver],
    clock: Callable[[], float],
    flavour: str,
) -> tuple[
    Connect[Coroutine[Any, Any, AsyncStream]],
    Connect[Coroutine[Any, Any, AsyncMulti]],
    Connect[Coroutine[Any, Any, AsyncTTS]],
]:
    """``connect_stream``, ``connect_multi`` and ``connect_tts`` of an async adapter."""

    async def open_(kind: Kind, url: str, options: ConnectOptions) -> Any:
        driver = new_driver(options.core(kind, url, clock()), options)
        await driver.start()
        return _ASYNC_CLIENTS[kind](driver)

    return (
        connector("stream", open_, flavour),
        connector("multi", open_, flavour),
        connector("tts", open_, flavour),
    )


class Scoped(Generic[_AC]):
    """What an anyio ``connect_*`` returns: ``async with connect_stream(url) as stream:``.

    Entering opens a task group for the connection's reader and timer tasks, connects and
    waits for the upgrade; leaving closes the connection (gracefully, or at once when the block
    raised) and then the task group. There is no plain ``await`` form: anyio has no tasks that
    outlive the code that started them, so the connection cannot outlive a block either.
    """

    def __init__(
        self, open_: Callable[[Any], Coroutine[Any, Any, _AC]], task_group: Callable[[], Any]
    ) -> None:
        self._open = open_
        self._task_group = task_group
        self._group: Any = None
        self._client: _AC | None = None

    def __await__(self) -> Any:
        raise LocalProtocolError(
            "anyio connections are task-group scoped: use `async with connect_...(url) as c:`"
        )

    async def __aenter__(self) -> _AC:
        if self._group is not None:
            raise LocalProtocolError("this connect_*() was entered already")
        group = self._group = self._task_group()
        await group.__aenter__()
        try:
            self._client = await self._open(group)
        except BaseException:
            await self._leave_group()
            raise
        return self._client

    async def _leave_group(self) -> None:
        """Cancel and leave the task group; the block's own exception (if any) is not handed
        to it, so it propagates as raised instead of wrapped in an exception group (the
        connection's tasks never raise)."""
        group = self._group
        group.cancel_scope.cancel()
        await group.__aexit__(None, None, None)

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any
    ) -> bool | None:
        client = self._client
        try:
            if client is not None:
                await client.__aexit__(exc_type, exc, tb)
        finally:
            await self._leave_group()
        return None


def scoped_connectors(
    new_driver: Callable[[ClientCore, ConnectOptions, Any], SignalDriver],
    clock: Callable[[], float],
    task_group: Callable[[], Any],
    flavour: str,
) -> tuple[
    Connect[Scoped[AsyncStream]], Connect[Scoped[AsyncMulti]], Connect[Scoped[AsyncTTS]],
]:
    """``connect_stream``, ``connect_multi`` and ``connect_tts`` of a task-group scoped adapter:
    ``new_driver(core, options, group)`` gets the connection's task group."""

    def open_(kind: Kind, url: str, options: ConnectOptions) -> Any:
        async def enter(group: Any) -> Any:
            driver = new_driver(options.core(kind, url, clock()), options, group)
            await driver.start()
            return _ASYNC_CLIENTS[kind](driver)

        return Scoped(enter, task_group)

    return (
        connector("stream", open_, flavour),
        connector("multi", open_, flavour),
        connector("tts", open_, flavour),
    )


# -- the blocking API ----------------------------------------------------------------------------
class BlockingDriver(Protocol):
    """What the blocking API needs from the sync adapter's driver."""

    core: ClientCore

    @property
    def cond(self) -> AbstractContextManager[Any]:
        """The lock guarding the core."""

    def call(
        self, fn: Callable[..., _R], *args: Any, urgent: bool = False, **kwargs: Any
    ) -> _R: ...
    def call_handle(
        self, make: Callable[[_R], _H], fn: Callable[..., _R], *args: Any,
        urgent: bool = False, **kwargs: Any,
    ) -> _H: ...
    def next_event(self, buf: EventBuffer) -> ClientEvent | None: ...
    def close(self, *, abort: bool = False) -> None: ...


class Events(_Handle):
    """Iterator over the events of one turn / request / context, up to its terminal."""

    _driver: BlockingDriver

    def __iter__(self) -> Iterator[ClientEvent]:
        return self

    def __next__(self) -> ClientEvent:
        event = self._driver.next_event(self._buf)
        if event is None:
            raise StopIteration
        return event

    def collect(self) -> list[ClientEvent]:
        """Every remaining event, up to and including the terminal one."""
        return list(self)


class Turn(Events):
    """One turn of ``/ws/tts/stream`` (ends with TurnClosed / Interrupted)."""


class Request(Events):
    """One ``/ws/tts`` request (ends with RequestFinal / Interrupted)."""


class Context(Events, _ContextHandle):
    """One ``/ws/tts/multi`` context (ends with ContextClosed)."""

    def send_text(self, text: str, *, flush: bool = False) -> None:
        self._driver.call(self._driver.core.multi_send_text, self._buf, text, flush=flush)

    def flush(self) -> None:
        self._driver.call(self._driver.core.multi_flush, self._buf, urgent=True)

    def cancel(self) -> None:
        self._driver.call(self._driver.core.multi_cancel, self._buf, urgent=True)

    def close(self, *, immediate: bool = False) -> None:
        self._driver.call(self._driver.core.multi_close, self._buf, immediate=immediate)

    def until_final(self) -> Iterator[ClientEvent]:
        """Events up to and including the next TurnFinal / Interrupted / ContextClosed."""
        for event in self:
            yield event
            if isinstance(event, _FINAL):
                return


class SyncClient(_ClientBase):
    """Common face of the blocking connection objects."""

    _driver: BlockingDriver

    def update_settings(self, **settings: Any) -> None:
        self._driver.call(self._core.update_settings, **settings)

    def close(self) -> None:
        self._driver.close()

    def __enter__(self: _SC) -> _SC:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        self._driver.close(abort=exc_type is not None)


class Stream(SyncClient):
    """``/ws/tts/stream``: text in, turns of audio out."""

    def __init__(self, driver: BlockingDriver) -> None:
        super().__init__(driver)
        self._turns = _Handles(self._core, lambda buf: Turn(driver, buf), driver.cond)

    def send_text(self, text: str, *, flush: bool = False) -> Turn | None:
        return self._driver.call_handle(
            self._turns.get_or_none, self._core.stream_send_text, text, flush=flush
        )

    def flush(self) -> Turn:
        return self._driver.call_handle(self._turns.get, self._core.stream_flush, urgent=True)

    def cancel(self) -> None:
        self._driver.call(self._core.stream_cancel, urgent=True)


class Multi(SyncClient):
    """``/ws/tts/multi``: up to 20 contexts, one event stream each."""

    def create_context(self, context_id: str, **options: Any) -> Context:
        buf = self._driver.call(self._core.multi_create, context_id, **options)
        return Context(self._driver, buf)

    def cancel(self) -> None:
        self._driver.call(self._core.multi_cancel, None, urgent=True)


class TTS(SyncClient):
    """``/ws/tts``: one-shot requests queued in order on one socket."""

    def synthesize(self, text: str, **params: Any) -> Request:
        return Request(
            self._driver, self._driver.call(self._core.tts_request, text, urgent=True, **params)
        )

    def cancel(self) -> None:
        self._driver.call(self._core.tts_cancel, urgent=True)
