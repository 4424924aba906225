"""The server as an ASGI application: serve ``/ws/tts``, ``/ws/tts/stream``, ``/ws/tts/multi``
(and the playground at ``GET /``) under uvicorn, hypercorn or any ASGI server, or mount it in a
Starlette / FastAPI app at a path prefix::

    from kugelwire.server.asgi import create_app
    app = create_app(engine=MyEngine(), api_key="secret")
    # Starlette: routes=[Mount("/tts", app=app)] -> ws://host/tts/ws/tts/stream

    $ KUGELWIRE_ENGINE=tone KUGELWIRE_API_KEY=secret uvicorn kugelwire.server.asgi:app

``app`` is configured from the environment on its first request: ``KUGELWIRE_ENGINE``
(``tone``, ``espeak`` or ``auto``; default ``auto``) and ``KUGELWIRE_API_KEY`` (unset: any key).
Bad keys and unknown paths get HTTP 401 / 404 through the WebSocket denial-response extension
when the server offers it, else the socket is accepted and closed with 4001. Synthesis runs in
anyio worker threads (needs ``anyio``); every decision is the sans-IO core's.
"""

from __future__ import annotations

import math
import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import anyio

from ._adapter import advance
from ._core import EngineJob, MessageConnectionCore, ServerCore, ServerOptions, http_response

__all__ = ["KugelwireASGI", "app", "create_app"]

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


def _path(scope: Scope) -> str:
    """The path below the mount point (``root_path`` stripped when the server left it in)."""
    path, root = scope.get("path", "/"), scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root):] or "/"
    return str(path)


class KugelwireASGI:
    """An ASGI 3 application over one :class:`ServerCore` (per process)."""

    def __init__(self, options: ServerOptions) -> None:
        self.options = options
        self._core: ServerCore | None = None
        self._limiter: anyio.CapacityLimiter | None = None

    @property
    def core(self) -> ServerCore:
        if self._core is None:
            self._core = ServerCore(self.options)
        return self._core

    def stats(self) -> dict[str, int]:
        return self.core.stats()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "websocket":
            await _Socket(self, scope, receive, send).run()
        elif kind == "http":
            answer = http_response(
                self.options.http_handler, scope["method"], _path(scope), options=self.options,
                query=scope.get("query_string", b"").decode("latin-1"),
                headers=scope.get("headers", ()))
            await send({"type": "http.response.start", "status": answer.status,
                        "headers": answer.with_length()})
            await send({"type": "http.response.body", "body": answer.body})
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def shutdown(self, code: int = 1012, timeout: float | None = None) -> None:
        """Drain (idle sockets close with ``code`` now, busy ones after their turn), abort what
        is left after ``timeout`` (default ``shutdown_timeout``) seconds."""
        core = self.core
        core.shutdown(code, anyio.current_time())
        self._kick_all()
        with anyio.move_on_after(self.options.shutdown_timeout if timeout is None else timeout):
            while core.connections:
                await anyio.sleep(0.01)
        core.abort_all()
        self._kick_all()

    def _kick_all(self) -> None:
        for peer in list(self.core.connections):
            peer.owner.kick()

    def _schedule(self, here: _Socket) -> None:
        """Start the jobs the core hands out, each in its socket's task group; a job of a
        socket whose task group has ended (a generator of a closed connection, closed once a
        slot is free) runs in the task group of ``here``, the socket whose task calls this
        (none yet before its handshake: the jobs wait in the core for the next call)."""
        if here.tasks is None:
            return
        for job in self.core.take_jobs():
            host = job.peer.owner if job.peer.owner.tasks is not None else here
            host.tasks.start_soon(self._run_job, job, host)

    async def _run_job(self, job: EngineJob, host: _Socket) -> None:
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(self.options.slots)
        items, seconds, error = await anyio.to_thread.run_sync(advance, job, limiter=self._limiter)
        self.core.batch_done(job, items, seconds, error, anyio.current_time())
        job.peer.owner.kick()
        self._schedule(host)


class _Socket:
    """One ASGI WebSocket: the handshake, a reader, and a writer that sleeps to deadlines."""

    def __init__(self, app: KugelwireASGI, scope: Scope, receive: Receive, send: Send) -> None:
        self.app, self.scope, self.receive, self.send = app, scope, receive, send
        self.conn: MessageConnectionCore = app.core.connect_messages(anyio.current_time())
        self.conn.owner = self
        self.tasks: Any = None
        self._changed = anyio.Event()
        self._peer_code: int | None = None

    def kick(self) -> None:
        changed, self._changed = self._changed, anyio.Event()
        changed.set()
        self.app._schedule(self)

    async def run(self) -> None:
        scope, conn = self.scope, self.conn
        if (await self.receive())["type"] != "websocket.connect":
            conn.connection_lost(None, anyio.current_time())
            return
        denial = "websocket.http.response" in scope.get("extensions", {})
        answer = conn.accept(_path(scope), scope.get("query_string", b"").decode("latin-1"),
                             scope.get("headers", []), anyio.current_time(), denial=denial)
        if not answer.accepted:  # only offered where the server has the denial extension
            await self.send({"type": "websocket.http.response.start",
                             "status": answer.status, "headers": answer.with_length()})
            await self.send({"type": "websocket.http.response.body", "body": answer.body})
            return
        await self.send({"type": "websocket.accept", "headers": list(answer.headers)})
        try:
            async with anyio.create_task_group() as tasks:
                self.tasks = tasks
                reader = anyio.CancelScope()
                tasks.start_soon(self._reader, reader)
                try:
                    await self._writer()
                finally:
                    reader.cancel()
                    code = self._peer_code if self._peer_code is not None else conn.close_code
                    conn.connection_lost(code, anyio.current_time())
                    self.kick()  # jobs to close start in this task group, which waits for them
        finally:
            self.tasks = None  # ended: later jobs of this connection run elsewhere

    async def _reader(self, scope: anyio.CancelScope) -> None:
        conn = self.conn
        burst, pause = self.app.options.frame_burst, self.app.options.frame_burst_pause
        handled = 0
        with scope:
            while True:
                message = await self.receive()
                kind, now = message["type"], anyio.current_time()
                if kind == "websocket.receive":
                    if message.get("text") is not None:
                        conn.receive_text(message["text"], now)
                    else:
                        conn.receive_bytes(len(message.get("bytes") or b""), now)
                elif kind == "websocket.disconnect":
                    self._peer_code = message.get("code")
                    conn.connection_lost(self._peer_code, now)
                    self.kick()
                    return
                self.kick()
                # receive() returns queued messages without suspending, so a flood of tiny
                # frames would hold the event loop: as on the other backends, a whole burst
                # of frames waits frame_burst_pause, and the others run between two messages
                handled += 1
                if handled % burst:
                    await anyio.lowlevel.checkpoint()
                else:
                    await anyio.sleep(pause)

    async def _writer(self) -> None:
        conn = self.conn
        while not conn.lost:
            # the event to wait on is taken before the outbox is read: a kick while the
            # messages below are sent (a job's output arriving) sets it, so none is missed
            changed = self._changed
            try:
                batch = conn.messages_to_send()
                left = conn.held
                for text in batch:  # send() waits while the ASGI server's buffer is full
                    await self.send({"type": "websocket.send", "text": text})
                    left -= len(text)
                    conn.report_buffered(left)
                    self.app._schedule(self)
                if conn.close_code is not None:
                    await self.send({"type": "websocket.close", "code": conn.close_code})
                    return
            except OSError:  # the client is gone (uvicorn's ClientDisconnected, ...)
                return
            deadline = conn.next_deadline()
            with anyio.CancelScope(deadline=math.inf if deadline is None else deadline):
                await changed.wait()
            if deadline is not None and anyio.current_time() >= deadline:
                conn.handle_timeout(anyio.current_time())
                self.app._schedule(self)


def create_app(options: ServerOptions | None = None, **kwargs: Any) -> KugelwireASGI:
    """An ASGI app; keyword arguments are the fields of :class:`ServerOptions` (``engine``,
    ``api_key``, ``limits``, ...), or pass a ready ``options`` object."""
    return KugelwireASGI(options if options is not None else ServerOptions.from_kwargs(**kwargs))


class _FromEnvironment:
    """``app``: built from ``KUGELWIRE_ENGINE`` / ``KUGELWIRE_API_KEY`` on first use."""

    _app: KugelwireASGI | None = None

    def get(self) -> KugelwireASGI:
        if self._app is None:
            from ..cli import make_engine

            engine = make_engine(os.environ.get("KUGELWIRE_ENGINE", "auto"), quiet=True)
            self._app = create_app(engine=engine,
                                   api_key=os.environ.get("KUGELWIRE_API_KEY") or None)
        return self._app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.get()(scope, receive, send)


#: The ready app for ``uvicorn kugelwire.server.asgi:app`` (configured from the environment).
app = _FromEnvironment()
