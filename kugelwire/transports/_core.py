"""The I/O-free half of every client transport (asyncio, trio, blocking sockets).

:class:`ClientCore` owns a :class:`~kugelwire.protocol.ws.ClientConnection` and its client
session and does everything that is not moving bytes or waiting:

* **Routing.** Session events go to one bounded :class:`EventBuffer` per turn (stream), per
  request (tts) or per context (multi); events that belong to none (``SettingsUpdated``,
  ``SessionClosed``, connection-level errors...) go to :attr:`ClientCore.log` (bounded, oldest
  dropped; it never holds audio).
* **Backpressure.** :attr:`ClientCore.reading_paused` is true while the buffered events hold more
  than ``max_buffered_bytes`` of audio or ``max_buffered_events`` events. The adapter then stops
  reading the socket, so the kernel buffers fill and TCP flow control slows the server: memory
  stays bounded and no audio is dropped. Reading resumes as soon as the application consumes
  events (:meth:`ClientCore.pop`). Timers are suspended while paused (a keepalive pong may be
  sitting unread in the socket) and get a short grace period after resuming. The bound holds
  while ``close()`` drains the connection too: output nobody consumes makes the close wait
  (at most its timeout, then it aborts) instead of growing without limit.
  Events of a turn whose handle the application dropped (after its last flush) are discarded.
* **Barge-in.** ``cancel`` removes the cancelled work's buffered output at once, so no audio of
  it is handed out after ``cancel()`` returns; its terminal event is :class:`Interrupted`.
* **Outcomes → exceptions.** Rejections and close codes become the typed exceptions of
  :mod:`kugelwire.errors`; each unfinished turn gets its own instance carrying its unspoken text.
* **Restart policy.** Close 1012/1013 (or HTTP 503 at the upgrade): the core builds a fresh
  session and connection at once, replays every turn/request/context that had no audio yet
  (``replay``), re-applies ``update_settings``, and asks the adapter to open a new socket at
  :attr:`ClientCore.reconnect_at`. Work that had audio already fails with
  :class:`~kugelwire.errors.ServerRestarting` carrying its unspoken text. One attempt per
  incident (``max_restarts``); the counter resets once the new connection produced output.

* **Metrics and logs.** The session puts a :class:`~kugelwire.protocol.TurnMetrics` on each
  terminal event; the core adds the reconnects a replayed turn survived (and its first
  connection's send times). It logs, with :mod:`logging`, one line per connection open and
  close, per reconnect and per error frame (logger ``kugelwire.client``) and, at DEBUG, one line
  per finished turn (``kugelwire.client.turns``); never per frame, never the API key.

The core coordinates; the pieces it delegates to are separate and I/O-free too:
:class:`~kugelwire.transports._buffers.EventBuffer` (a work's queue and the figures it carries
over reconnects), :class:`~kugelwire.transports._ending.Ending` (how a connection ended: clean?
worth a retry? which exception?), :class:`~kugelwire.transports._ending.Backoff` (how often and
how long to wait) and :class:`~kugelwire.transports._logging.ClientLog` (the log lines).

Adapters call :meth:`receive_data`, :meth:`handle_timeout`, :meth:`data_to_send`,
:meth:`next_deadline` and the command methods, always with a monotonic ``now``; an adapter that
can write without waiting sets :attr:`ClientCore.write_urgent`, and a flush is then on its way
to the server before the command's own bookkeeping.
"""

from __future__ import annotations

import math
import random as _random
from collections import deque
from collections.abc import Callable
from typing import Any, Literal
from urllib.parse import urlsplit

from ..errors import (
    ConnectionClosedError,
    KugelwireError,
    LocalProtocolError,
    ServerErrorResponse,
)
from ..protocol import events  # a few event types, by module: events.TurnStarted
from ..protocol.events import (
    AudioChunk,
    ChunkComplete,
    ClientEvent,
    ConnectionTerminated,
    ContextClosed,
    GenerationStarted,
    Interrupted,
    RequestFinal,
    ServerError,
    TurnClosed,
    TurnFinal,
    TurnReplay,
    WordTimestamps,
)
from ..protocol.sessions import (
    MultiClientSession,
    StreamClientSession,
    TTSClientSession,
)
from ..protocol.ws import ENDPOINT_KINDS as ENDPOINT
from ..protocol.ws import (
    ENDPOINTS,
    ClientConnection,
    Connected,
    ConnectionState,
    build_url,
)
from ._buffers import EventBuffer, WorkBuffers
from ._ending import Backoff, Ending
from ._logging import ClientLog

__all__ = ["ENDPOINT", "SESSIONS", "ClientCore", "EventBuffer", "Kind"]

Kind = Literal["stream", "multi", "tts"]
Session = StreamClientSession | MultiClientSession | TTSClientSession
#: The session class of each endpoint kind: the one place the core names the endpoints (what an
#: endpoint means, the sessions say: work keys, ``ends_work``, ``cancel``, ``replay``).
SESSIONS: dict[str, type[Session]] = {
    "stream": StreamClientSession, "multi": MultiClientSession, "tts": TTSClientSession,
}
State = Literal["connecting", "open", "reconnecting", "closing", "closed"]
#: Events that carry a turn's (or a multi flush-cycle's, or a context's) TurnMetrics.
_WITH_METRICS = (TurnClosed, RequestFinal, Interrupted, TurnFinal, ContextClosed)


def resolve_url(url: str, endpoint: str) -> str:
    """``url`` as given when its path already names an endpoint, else ``endpoint`` appended."""
    try:
        path = urlsplit(url).path.rstrip("/")
        if any(path.endswith(e) for e in ENDPOINTS):
            if not path.endswith(endpoint):
                raise ValueError(f"URL {url!r} names another endpoint than {endpoint}")
            return url
        return build_url(url, endpoint)
    except ValueError as exc:
        raise LocalProtocolError(str(exc)) from None


#: Event types that _route only queues on their buffer: (output that resets the restart count,
#: ends the buffer). The same rules as _route's general path, looked up once by type (terminal
#: events, which carry metrics, take the general path).
_QUEUED: dict[type[Any], tuple[bool, bool]] = {
    events.TurnStarted: (False, False),
    GenerationStarted: (False, False),
    WordTimestamps: (False, False),
    ChunkComplete: (False, False),
}


class ClientCore(WorkBuffers):
    """Connection + session + routing + restart policy, with no I/O: the coordinator.

    The buffers of the unfinished work and their bound (backpressure, :meth:`pop`) are its base
    class's (:class:`~kugelwire.transports._buffers.WorkBuffers`); how a connection ended and
    what it raises, :class:`Ending`'s; when to retry, :attr:`backoff`'s; the log lines,
    :class:`ClientLog`'s.
    """

    def __init__(
        self,
        kind: Kind,
        url: str,
        *,
        now: float,
        api_key: str | None = None,
        auth: Literal["query", "bearer"] = "query",
        max_buffered_bytes: int = 4 * 2**20,
        max_buffered_events: int = 10_000,
        restart_delay: float = 1.0,
        max_restarts: int = 1,
        ping_interval: float | None = 15.0,
        ping_timeout: float = 15.0,
        max_message_size: int = 16 * 2**20,
        log_size: int = 256,
        resume_grace: float = 0.5,
        handshake_timeout: float | None = None,
        reconnect: bool = False,
        max_reconnects: int = 8,
        reconnect_delay: float = 0.1,
        max_reconnect_delay: float = 5.0,
        random: Callable[[], float] = _random.random,
        **session_options: Any,
    ) -> None:
        if kind not in ENDPOINT:
            raise LocalProtocolError(f"unknown endpoint kind {kind!r}")
        super().__init__(max_buffered_bytes, max_buffered_events)
        self.kind: Kind = kind
        self.endpoint = ENDPOINT[kind]
        self.url = resolve_url(url, self.endpoint)
        self._conn_options: dict[str, Any] = dict(
            api_key=api_key, auth=auth, keepalive_interval=ping_interval,
            ping_timeout=ping_timeout, max_message_size=max_message_size,
            handshake_timeout=handshake_timeout,
        )
        self._session_options = session_options
        self.backoff = Backoff(
            reconnect=reconnect, restart_delay=restart_delay, max_restarts=max_restarts,
            max_reconnects=max_reconnects, reconnect_delay=reconnect_delay,
            max_reconnect_delay=max_reconnect_delay, random=random,
        )
        self._logger = ClientLog(self.endpoint, api_key)
        self._aborted = False  # abort(): never reconnect
        self._resume_grace = resume_grace
        self.log: deque[ClientEvent] = deque(maxlen=log_size)
        self.settings: dict[str, Any] | None = None
        self.state: State = "connecting"
        self.error: KugelwireError | None = None
        self.reconnect_at: float | None = None
        self.restarts = 0
        self._restarts_in_row = 0
        self._user_closing = False
        self._hold_until = -math.inf
        self._settings_applied: dict[str, Any] = {}
        #: Set by an adapter that can write without waiting: a command whose bytes the server
        #: waits for (a flush, a request, a cancel) calls it as soon as the session has queued
        #: them, before the command routes its events, and it writes :meth:`data_to_send` if
        #: the socket takes it at once (else it leaves the bytes to the adapter's usual write
        #: after the command). It must not call back into the core's commands.
        self.write_urgent: Callable[[], object] | None = None
        self._ending = Ending()  # how the current connection ended (so far)
        #: Bumped for every new connection: bytes of :meth:`data_to_send` belong to the socket
        #: opened for this generation (adapters must not write them to an older socket).
        self.generation = 0
        self._stale = b""
        self._attempt_at = now  # this connection's attempt began (its socket was opened)
        self._opened_at: float | None = None  # its upgrade completed
        self.session: Session = self._new_session()
        self.conn = self._new_connection(now)

    # -- construction ----------------------------------------------------------------------
    def _new_session(self) -> Session:
        session = SESSIONS[self.kind](**self._session_options)
        #: the session names work by the event's turn, else by its context id (read inline on
        #: the hot path of _route: cheaper than calling work_key per audio chunk)
        self._key_is_turn = session.work_key_attr == "turn"
        assert self._key_is_turn or session.work_key_attr == "context_id"
        return session

    def _new_connection(self, now: float, delay: float = 0.0) -> ClientConnection:
        """A connection for the current session; ``delay``: it is opened that much later (its
        handshake timeout counts from the connect)."""
        options = dict(self._conn_options)
        if options["handshake_timeout"] is not None:
            options["handshake_timeout"] += delay
        try:
            return ClientConnection(self.session, self.url, now=now, **options)
        except ValueError as exc:
            raise LocalProtocolError(str(exc)) from None

    @property
    def address(self) -> tuple[str, int]:
        return self.conn.address

    @property
    def display_url(self) -> str:
        """:attr:`url` with an API key in its query string masked (for messages and logs)."""
        return self._logger.redact(self.url)

    @property
    def secure(self) -> bool:
        return self.conn.secure

    # -- state the adapter looks at ------------------------------------------------------------
    @property
    def finished(self) -> bool:
        """No socket is needed any more (closed for good)."""
        return self.state == "closed"

    @property
    def connecting(self) -> bool:
        """The upgrade (or a reconnect's upgrade) is still pending."""
        return self.state in ("connecting", "reconnecting")

    @property
    def wants_socket(self) -> bool:
        """A reconnect is due: close the old socket, open a new one at :attr:`reconnect_at`."""
        return self.state == "reconnecting" and self.reconnect_at is not None

    def next_deadline(self) -> float | None:
        """When to call :meth:`handle_timeout` (None while paused or waiting for a socket)."""
        if self.state == "closed" or self.wants_socket or self.reading_paused:
            return None
        deadline = self.conn.next_deadline()
        if deadline is None:
            return None
        return max(deadline, self._hold_until)

    def data_to_send(self) -> bytes:
        return self.conn.data_to_send()

    @property
    def unsent_size(self) -> int:
        """What commands queued and :meth:`data_to_send` has not taken yet: framed bytes plus
        the characters of queued messages (an adapter adds its own unwritten bytes to this
        for its high-water mark)."""
        return self.conn.unsent_size + self.session.unsent_size

    def take_stale_data(self) -> bytes:
        """Last bytes for the *previous* socket (write them before closing it on reconnect)."""
        data, self._stale = self._stale, b""
        return data

    # -- I/O results -----------------------------------------------------------------------
    def receive_data(self, data: bytes, now: float) -> None:
        """Bytes read from the socket (``b""``: EOF or a read error)."""
        if self.state == "closed" or self.wants_socket:
            return
        self._resumed = False
        self._hold_until = -math.inf
        self.conn.receive_data(data, now)
        self._process(now)

    def yield_after_audio(self) -> None:
        """For an adapter that calls :meth:`receive_held` in its next loop round whenever
        :attr:`held`: a read's processing stops after an audio frame that follows another
        message (a turn's first audio, usually), so the application has it before the rest of
        the read is parsed (see ``ClientConnection.yield_after_audio``)."""
        self._conn_options["yield_after_audio"] = True
        self.conn.yield_after_audio = True

    @property
    def held(self) -> bool:
        """Frames of the last read wait for :meth:`receive_held`."""
        return self.conn.held

    def receive_held(self, now: float) -> None:
        """Go on with the frames held back (see :meth:`yield_after_audio`)."""
        if self.state == "closed" or self.wants_socket:
            return
        self.conn.receive_held(now)
        self._process(now)

    def handle_timeout(self, now: float) -> None:
        if self.state == "closed" or self.wants_socket or now < self._hold_until:
            return
        if self.reading_paused:
            return
        if self._resumed:  # give the reader a moment to take what waited in the socket
            self._resumed = False
            self._hold_until = now + self._resume_grace
            return
        self.conn.handle_timeout(now)
        self._process(now)

    def socket_opened(self, now: float) -> None:
        """The adapter opened the socket for a reconnect; the handshake bytes are queued."""
        self.reconnect_at = None
        self._attempt_at = now

    def connect_failed(self, exc: BaseException, now: float) -> None:
        """Opening the socket failed (``OSError``, ``TimeoutError``, ``ssl.SSLError``...)."""
        self._ending.connect_exc = exc
        self.reconnect_at = None
        if self.conn.state is not ConnectionState.CLOSED:
            self.conn.close()
        self._process(now)
        if not self.finished and not self.wants_socket:  # no retry due: close for good
            self._terminate(now)

    def fail(self, now: float, error: KugelwireError) -> None:
        """Give up on the connection now because of ``error`` (the adapter's I/O verdict, e.g.
        :class:`~kugelwire.errors.SendBufferFull`): every unfinished piece of work raises a
        copy of it carrying its own unspoken text."""
        if self.state == "closed":
            return
        if self._ending.io_error is None:
            self._ending.io_error = error
        self._drop(now)

    def abort(self, now: float, reason: str = "connection aborted") -> None:
        """Give up on the connection now (close timeout, adapter shutdown); never reconnects."""
        self._aborted = True
        self._drop(now)

    def _drop(self, now: float) -> None:
        if self.state == "closed":
            return
        if self.conn.state is not ConnectionState.CLOSED:
            self.conn.receive_data(b"", now)
        self._process(now)
        if not self.finished:
            self._terminate(now)

    # -- commands ------------------------------------------------------------------------------
    def check_usable(self) -> None:
        if self.state == "closed":
            raise self.error or ConnectionClosedError("the connection is closed")
        if self._user_closing:
            raise ConnectionClosedError("close() was called; the connection takes no more input")

    def stream_send_text(self, text: str, now: float, *, flush: bool = False) -> EventBuffer | None:
        session = self._session(StreamClientSession)
        number = session.send_text(text, now, flush=flush)
        if flush:
            self._urgent()
        return self._stream_buffer(number, flush, now)

    def stream_flush(self, now: float) -> EventBuffer:
        session = self._session(StreamClientSession)
        number = session.flush(now)
        self._urgent()
        buf = self._stream_buffer(number, True, now)
        assert buf is not None
        return buf

    def update_settings(self, now: float, **settings: Any) -> None:
        self.check_usable()
        self.session.update_settings(now, **settings)
        self._settings_applied.update(settings)
        self._process(now)

    def multi_create(self, context_id: str, now: float, **options: Any) -> EventBuffer:
        session = self._session(MultiClientSession)
        old = self._by_key.get(context_id)
        if old is not None and not old.done:
            raise LocalProtocolError(f"context {context_id!r} already exists")
        session.create_context(context_id, now, **options)
        return self._open(EventBuffer(0, context_id), now)

    def multi_send_text(
        self, buf: EventBuffer, text: str, now: float, *, flush: bool = False
    ) -> None:
        self._session(MultiClientSession).send_text(self._cid(buf), text, now, flush=flush)
        if flush:
            self._urgent()
        self._process(now)

    def multi_flush(self, buf: EventBuffer, now: float) -> None:
        self._session(MultiClientSession).flush(self._cid(buf), now)
        self._urgent()
        self._process(now)

    def multi_close(self, buf: EventBuffer, now: float, *, immediate: bool = False) -> None:
        self._session(MultiClientSession).close_context(self._cid(buf), now, immediate=immediate)
        buf.closing = True
        if immediate:
            self._uncount(buf.purge_cycle())
        self._process(now)

    def tts_request(self, text: str, now: float, **params: Any) -> EventBuffer:
        buf = EventBuffer(self._session(TTSClientSession).request(text, now, **params))
        self._urgent()
        buf.flushed = True
        return self._open(buf, now)

    def cancel(self, now: float, buf: EventBuffer | None = None) -> None:
        """Barge-in: the session cancels (``buf``: that context only); the buffered output of
        what it cancelled goes at once. Work that runs through cycles (a context) loses its
        current cycle's; other work (a turn, a request) all of its output."""
        self.check_usable()
        session = self.session
        if buf is None:
            keys = session.cancel(now)
        else:
            keys = self._session(MultiClientSession).cancel(now, self._cid(buf))
        self._urgent()
        for key in keys:
            target = self._by_key.get(key)
            if target is not None:
                self._uncount(target.purge_cancelled(session.work_has_cycles))
        self._process(now)

    def stream_cancel(self, now: float) -> None:
        self._session(StreamClientSession)
        self.cancel(now)

    def multi_cancel(self, buf: EventBuffer | None, now: float) -> None:
        self._session(MultiClientSession)
        self.cancel(now, buf)

    def tts_cancel(self, now: float) -> None:
        self._session(TTSClientSession)
        self.cancel(now)

    def close_socket(self, now: float) -> None:
        """Graceful close: the session's (``close_socket``; on ``/ws/tts`` once the requests
        are answered), or at once while the upgrade is still pending."""
        if self.state == "closed" or self._user_closing:
            return
        self._user_closing = True
        if self.state in ("connecting", "reconnecting"):
            self.conn.close()
        elif not self.session.terminated:
            self.state = "closing"
            self.session.close_socket(now)
        self._process(now)

    # -- internals -----------------------------------------------------------------------------
    def _urgent(self) -> None:
        """A command queued bytes the server is waiting for (a flush, a request, a cancel):
        let the adapter write them now, before the command routes its events."""
        write = self.write_urgent
        if write is not None:
            write()

    def _session(self, *types: type[Any]) -> Any:
        self.check_usable()
        if not isinstance(self.session, types):
            raise LocalProtocolError(f"not available on {self.endpoint}")
        return self.session

    def _open(self, buf: EventBuffer, now: float) -> EventBuffer:
        """Route the session's events for ``buf``'s work to it, then process."""
        self._add(buf)
        self._process(now)
        return buf

    def _stream_buffer(self, number: int | None, flush: bool, now: float) -> EventBuffer | None:
        buf = None if number is None else self._by_key.get(number)
        if buf is None and number is not None:
            buf = self._add(EventBuffer(number))
        if buf is not None:
            buf.flushed = buf.flushed or flush
        self._process(now)
        return buf

    def _process(self, now: float) -> None:
        """Take the connection's and the session's events and route them."""
        for cev in self.conn.events():
            if isinstance(cev, Connected):
                if self.state in ("connecting", "reconnecting"):
                    self.state = "closing" if self._user_closing else "open"
                    self._opened_at = now
                    self._logger.open(self.conn, self.generation)
            else:
                self._ending.record(cev)
        session = self.session
        events = list(session.events())
        term = (
            next((e for e in events if isinstance(e, ConnectionTerminated)), None)
            if session.terminated
            else None
        )
        restart = term is not None and self._should_restart()
        for event in events:
            self._route(event, restart)
        if term is not None:
            if restart:
                self._restart([r for r in term.replay if r.replayable], now)
            else:
                self._terminate(now)
        elif self._user_closing:
            self._close_if_asked()
        closed = self.conn.state is ConnectionState.CLOSED and term is None
        if closed and not self.finished and not self.wants_socket:
            self._terminate(now)  # a connection without session events ended

    def _route(self, event: ClientEvent, restart: bool) -> None:
        if type(event) is AudioChunk:  # the hot path
            buf = self._by_key.get(event.turn if self._key_is_turn else event.context_id)
            if buf is not None:
                if self._restarts_in_row:  # output: the connection works (a read, no store)
                    self._restarts_in_row = 0
                if not buf.done and not (buf.dropped and buf.flushed):  # _push, inline
                    buf.events.append(event)
                    size = len(event.frame.audio) * 3 // 4
                    buf.nbytes += size
                    self.buffered_bytes += size
                    self.buffered_events += 1
                return
        queued = _QUEUED.get(type(event))
        if queued is not None:  # other output that only queues (the same rules as below)
            buf = self._target(event)
            if buf is None:
                self.log.append(event)
                return
            resets, terminal = queued
            if resets:
                self._restarts_in_row = 0
            self._push(buf, event, terminal=terminal)
            return
        if isinstance(event, events.SettingsUpdated):
            self.settings = dict(event.settings)
        if isinstance(event, ServerError):
            self._logger.error(self.conn, event)
            if event.fatal:
                self._ending.fatal = event
        buf = None if isinstance(event, ConnectionTerminated) else self._target(event)
        if buf is None:
            self.log.append(event)
        else:
            self._route_to(buf, event, restart)

    def _route_to(self, buf: EventBuffer, event: ClientEvent, restart: bool) -> None:
        """An event of ``buf``'s work that is not plain output: ``event.ends_work`` says
        whether it is the work's last (a cycle's end, e.g. a context's final, is not)."""
        if isinstance(event, AudioChunk | TurnClosed | RequestFinal | TurnFinal):
            self._restarts_in_row = 0
        if isinstance(event, events.TurnAborted):
            buf.flushed = True
            if not (restart and not event.audio_delivered):
                self._fail(buf, self._error(event.unspoken_text))
            return
        if isinstance(event, ServerError) and event.ends_work:
            self._fail(buf, ServerErrorResponse(event))
            return
        if isinstance(event, _WITH_METRICS) and event.metrics is not None:
            event = buf.stamp(event)
            self._logger.turn(event)
        self._push(buf, event, terminal=event.ends_work)

    def _target(self, event: ClientEvent) -> EventBuffer | None:
        return self._by_key.get(self.session.work_key(event))

    def _close_if_asked(self) -> None:
        """The session asks for the close (``/ws/tts``: every request answered)."""
        code = self.session.close_code
        if code is not None and self.conn.state is ConnectionState.OPEN:
            self.conn.close(code)

    def _should_restart(self) -> bool:
        """Restart (1012/1013, HTTP 503) or, with ``reconnect=True``, reconnect after a drop."""
        if self._user_closing or self._aborted or not self.backoff.allows(self._restarts_in_row):
            return False
        return self._ending.retryable(
            reconnect=self.backoff.reconnect, reconnecting=self.state == "reconnecting"
        )

    def _error(self, unspoken: str = "") -> KugelwireError:
        """The exception for how the connection ended (a fresh instance each call)."""
        return self._ending.error(unspoken, state=self.state, url=self.display_url)

    def _log_close(self, now: float, error: KugelwireError | None) -> None:
        self._logger.close(self.conn, self.generation, self._ending, error, now=now,
                           attempt_at=self._attempt_at, opened_at=self._opened_at)

    def _terminate(self, now: float) -> None:
        """The connection is over for good: fail everything still waiting."""
        clean = self._user_closing and self._ending.clean
        self.error = None if clean else self._error()
        self._log_close(now, self.error)
        self._end_all(self._error)
        self.state = "closed"

    def _restart(self, replays: list[TurnReplay], now: float) -> None:
        key_of, ending = self.session.work_key, self._ending
        replayed = {key_of(r) for r in replays}
        self._end_all(self._error, but=replayed)  # everything not replayed is over
        self._restarts_in_row += 1
        self.restarts += 1
        delay = self.backoff.delay(self._restarts_in_row, retry_after=ending.retry_after,
                                   restart_close=ending.restart_close)
        reconnecting = ending.reconnecting(self._restarts_in_row, delay, replayed)
        self.log.append(reconnecting)
        self._log_close(now, None)
        self._logger.reconnect(self.conn, reconnecting)
        carried = self._carry_over(replays, key_of)
        self._ending = Ending()
        self._stale = self.conn.data_to_send()  # e.g. the reply to the server's close frame
        self.session = self._new_session()
        self.conn = self._new_connection(now, delay)
        self.generation += 1
        self._attempt_at, self._opened_at = now + delay, None
        self.state = "reconnecting"
        self.reconnect_at = now + delay
        self._replay(carried, now)

    def _replay(self, carried: list[tuple[TurnReplay, EventBuffer | None]], now: float) -> None:
        """Send the lost work again on the new session (it knows how: ``replay``); each
        buffer follows its work's new key."""
        session = self.session
        if self._settings_applied:
            session.update_settings(now, **self._settings_applied)
        for r, buf in carried:
            key = session.replay(r, now)
            if buf is not None and key is not None:
                self._rekey(buf, key)
        for event in session.events():
            # the replayed work announced itself already
            if not isinstance(event, events.TurnStarted):
                self._route(event, False)

