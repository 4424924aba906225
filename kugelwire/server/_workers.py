"""``kugelwire serve --workers N``: N server processes on one port, and their supervisor.

The supervisor binds the port once, starts N worker processes and then only watches them:

* **One port.** Where the OS has ``SO_REUSEPORT`` (Linux, the BSDs, macOS) every worker
  binds and listens on its own socket and the kernel spreads new connections across them;
  the supervisor keeps a bound, non-listening socket that holds the port (so ``--port 0``
  works and a restarted worker gets the same port). Elsewhere the supervisor listens and
  the workers inherit that one socket and all accept on it.
* **Crashes.** A worker that exits while the supervisor is not stopping is started again
  (at most once a second per worker).
* **Graceful drain.** SIGTERM or SIGINT to the supervisor is forwarded as SIGTERM to every
  worker; each one closes idle sockets with 1012, lets busy turns finish, aborts what is still
  open after ``shutdown_timeout`` seconds and exits 0. The supervisor exits 0 when every
  worker did (workers still alive ``shutdown_timeout + 5`` seconds later are killed: exit 1).
* **Metrics** (``metrics=True``) are aggregated: each worker publishes a snapshot of its
  registry into a private directory every second, and the worker that answers
  ``GET /metrics`` adds the other workers' latest snapshots to its own live figures (no
  ``worker`` label; the others' share is at most a second old). The counters of a worker that
  died are kept (its gauges are dropped), so totals never go backwards.

A worker is ``python -m kugelwire.server._workers`` with its settings in the
``KUGELWIRE_WORKER`` environment variable (JSON; the API key never appears on a command line).
Workers run a backend by name (:data:`BACKENDS`: ``asyncio``, ``trio``, ``anyio``, ``sync``),
each on its own loop as the process's main one.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

__all__ = ["BACKENDS", "WorkerSpec", "run_workers", "supervise"]

log = logging.getLogger("kugelwire.server.workers")

_ENV = "KUGELWIRE_WORKER"
_SNAPSHOT_EVERY_S = 1.0
_RESTART_GAP_S = 1.0
_HAS_REUSEPORT = hasattr(socket, "SO_REUSEPORT") and sys.platform != "win32"


@dataclass
class WorkerSpec:
    """What one worker process needs (sent to it as JSON)."""

    index: int
    host: str
    port: int
    engine: str = "tone"  # a ``kugelwire serve --engine`` name, or "module:callable"
    backend: str = "asyncio"
    reuse_port: bool = True
    fd: int | None = None  # the inherited listening socket (when not reuse_port)
    metrics: bool = False
    metrics_dir: str | None = None
    ready_dir: str | None = None  # the worker creates a file here once it listens
    #: keyword arguments of :func:`kugelwire.server.serve` (api_key, shutdown_timeout, ...)
    options: dict[str, Any] = field(default_factory=dict)


# -- the worker side ----------------------------------------------------------------------------
def _say(line: str, file: TextIO | None = None) -> None:
    """Write ``line`` and its newline with one write, then flush. The supervisor and its workers
    share stdout and stderr, and with unbuffered streams (``PYTHONUNBUFFERED=1``, common in
    containers) ``print`` writes the text and the newline apart, so two processes' lines could
    interleave mid-line (a reader looking for one line would miss it); one write of a line
    shorter than the pipe buffer is atomic."""
    out = sys.stdout if file is None else file
    out.write(line + "\n")
    out.flush()


def _make_engine(spec: str) -> Any:
    if ":" in spec:
        module, _, attr = spec.partition(":")
        factory = getattr(importlib.import_module(module), attr)
        return factory()
    from ..cli import make_engine

    return make_engine(spec, quiet=True)


def _listening_socket(spec: WorkerSpec) -> socket.socket:
    if spec.fd is not None:
        sock = socket.socket(fileno=spec.fd)
    else:
        family = socket.AF_INET6 if ":" in spec.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((spec.host, spec.port))
        sock.listen(_backlog(spec.options))
    sock.setblocking(False)
    return sock


def _snapshot_path(directory: str, index: int) -> Path:
    return Path(directory) / f"worker-{index}.json"


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data), encoding="utf-8")
    os.replace(tmp, path)


def _read_snapshots(directory: str, skip: Path | None) -> Iterator[Any]:
    for path in sorted(Path(directory).glob("*.json")):
        if path == skip:
            continue
        with contextlib.suppress(OSError, ValueError):
            yield json.loads(path.read_text(encoding="utf-8"))


_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class _Life:
    """What a worker does besides serving, on any backend: its options and socket, the ready
    file, the metrics snapshot it publishes, and noticing that the supervisor is gone."""

    def __init__(self, spec: WorkerSpec) -> None:
        from ._metrics import Metrics

        self.spec = spec
        self.metrics = Metrics() if spec.metrics else None
        self._mine: Path | None = None
        self._parent = os.getppid()
        if self.metrics is not None and spec.metrics_dir is not None:
            directory = spec.metrics_dir
            mine = self._mine = _snapshot_path(directory, spec.index)
            self.metrics.others = lambda: list(_read_snapshots(directory, mine))

    def options(self) -> Any:
        """The :class:`ServerOptions` from the spec (the engine is made here, per worker)."""
        from ._core import ServerOptions

        kwargs = dict(self.spec.options)  # limits as a dict (JSON): from_kwargs takes it
        if kwargs.get("lint", True) is True:  # findings printed as they happen, as `serve` does
            from ..lint import Linter

            kwargs["lint"] = Linter(on_finding=lambda f: _say(f"kugelwire: lint: {f}"),
                                    on_summary=None)
        return ServerOptions.from_kwargs(
            engine=_make_engine(self.spec.engine), metrics=self.metrics or False, **kwargs)

    def socket(self) -> socket.socket:
        return _listening_socket(self.spec)

    def publish(self) -> None:
        """Write this worker's metrics snapshot (call it where the server's loop runs)."""
        if self.metrics is not None and self._mine is not None:
            with contextlib.suppress(OSError):
                _write_json(self._mine, self.metrics.snapshot())

    def ready(self) -> None:
        """Say so, then leave the ready file (the supervisor's own announcement, which follows
        the files, then comes after every worker's line)."""
        self.publish()
        _say(f"kugelwire: worker {self.spec.index} pid {os.getpid()} ready")
        if self.spec.ready_dir is not None:
            (Path(self.spec.ready_dir) / f"{self.spec.index}-{os.getpid()}").touch()

    def orphaned(self) -> bool:
        """True when the supervisor is gone (killed): the worker drains and exits."""
        if os.getppid() == self._parent:
            return False
        log.warning("worker %d: the supervisor is gone; shutting down", self.spec.index)
        return True


def _run_asyncio(life: _Life) -> None:
    from . import _asyncio

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in _SIGNALS:
            loop.add_signal_handler(sig, stop.set)

        async def every_second() -> None:
            while True:
                await asyncio.sleep(_SNAPSHOT_EVERY_S)
                life.publish()
                if life.orphaned():
                    stop.set()

        task = loop.create_task(every_second())
        try:
            async with _asyncio.serve("", 0, life.options(), sock=life.socket()):
                life.ready()
                await stop.wait()
        finally:
            task.cancel()

    asyncio.run(main())


def _run_structured(lib: Any, open_nursery: Callable[[], Any], serve: Callable[..., Any],
                    run: Callable[[Callable[[], Awaitable[None]]], Any]) -> Callable[[_Life], None]:
    """A worker on trio or on anyio (``lib`` is either module; they spell these alike)."""

    def worker(life: _Life) -> None:
        async def main() -> None:
            stop = lib.Event()
            with lib.open_signal_receiver(*_SIGNALS) as signals:

                async def on_signal() -> None:
                    async for _ in signals:
                        stop.set()

                async def every_second() -> None:
                    while not life.orphaned():
                        await lib.sleep(_SNAPSHOT_EVERY_S)
                        life.publish()
                    stop.set()

                async with open_nursery() as nursery:
                    nursery.start_soon(on_signal)
                    nursery.start_soon(every_second)
                    async with serve("", 0, life.options(), sock=life.socket()):
                        life.ready()
                        await stop.wait()
                    nursery.cancel_scope.cancel()

        run(main)

    return worker


def _run_trio(life: _Life) -> None:
    import trio

    from . import _trio

    _run_structured(trio, trio.open_nursery, _trio.serve, trio.run)(life)


def _run_anyio(life: _Life) -> None:
    import anyio

    from . import _anyio

    _run_structured(anyio, anyio.create_task_group, _anyio.serve, anyio.run)(life)


def _run_sync(life: _Life) -> None:
    import threading

    from . import _sync

    stop = threading.Event()
    for sig in _SIGNALS:
        signal.signal(sig, lambda *_: stop.set())
    with _sync.serve("", 0, life.options(), sock=life.socket()) as handle:
        life.ready()
        while not stop.wait(_SNAPSHOT_EVERY_S) and not life.orphaned():
            handle.call(life.publish)  # the registry belongs to the I/O thread


#: Worker backends by name: each runs one worker process's server until SIGTERM / SIGINT
#: (or until the supervisor is gone), on that backend's own loop.
BACKENDS: dict[str, Callable[[_Life], None]] = {
    "asyncio": _run_asyncio, "trio": _run_trio, "anyio": _run_anyio, "sync": _run_sync}


def worker_main() -> int:
    """Entry point of a worker process (``python -m kugelwire.server._workers``)."""
    raw = os.environ.pop(_ENV, None)
    if raw is None:
        _say(f"kugelwire: {_ENV} is not set (workers are started by `kugelwire serve "
            "--workers N`)", sys.stderr)
        return 2
    from ..cli import _log_to_stderr

    _log_to_stderr()
    life = _Life(WorkerSpec(**json.loads(raw)))
    BACKENDS[life.spec.backend](life)
    life.publish()  # the final figures (the server has stopped)
    return 0


# -- the supervisor --------------------------------------------------------------------------
class _Worker:
    def __init__(self, index: int) -> None:
        self.index = index
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.restarts = 0


def _backlog(options: dict[str, Any]) -> int:
    """``--backlog``: each worker's accept queue (the shared socket's, without SO_REUSEPORT)."""
    import dataclasses

    from ._core import ServerOptions

    default = next(f.default for f in dataclasses.fields(ServerOptions) if f.name == "backlog")
    return int(options.get("backlog", default))


def _reserve(host: str, port: int, backlog: int) -> tuple[socket.socket, int, bool]:
    """The supervisor's socket: bound (SO_REUSEPORT) or listening (to be inherited)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if _HAS_REUSEPORT:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))  # holds the port; never listens, so it gets no connections
        return sock, int(sock.getsockname()[1]), True
    sock.bind((host, port))
    sock.listen(backlog)
    sock.set_inheritable(True)
    return sock, int(sock.getsockname()[1]), False


def _drop_gauges(path: Path) -> None:
    """A dead worker's snapshot keeps its counters and histograms, not its gauges."""
    from ._metrics import Metrics

    gauges = Metrics().gauge_names()
    with contextlib.suppress(OSError, ValueError):
        data = json.loads(path.read_text(encoding="utf-8"))
        kept = {name: rows for name, rows in data.items() if name not in gauges}
        dead = path.with_name(f"dead-{path.stem}-{time.monotonic_ns()}.json")
        _write_json(dead, kept)
        path.unlink()


async def supervise(
    workers: int,
    host: str = "127.0.0.1",
    port: int = 8765,
    *,
    engine: str = "tone",
    backend: str = "asyncio",
    metrics: bool = False,
    shutdown_timeout: float = 10.0,
    ready: Callable[[str, list[int]], None] | None = None,
    stop: asyncio.Event | None = None,
    **options: Any,
) -> int:
    """Run ``workers`` server processes on ``host:port`` until SIGTERM/SIGINT (or ``stop``),
    then drain them. Returns the exit status (0: every worker drained cleanly).
    ``options`` are :func:`kugelwire.server.serve` keyword arguments (JSON-able ones;
    ``limits`` as a dict of :class:`~kugelwire.protocol.ServerLimits` fields). ``engine`` is a
    ``kugelwire serve --engine`` name or ``"package.module:factory"`` (called with no
    arguments in each worker); ``backend`` is a name in :data:`BACKENDS`. ``lint`` (default
    True) prints each worker's findings as ``kugelwire serve`` does; ``faults`` are fault
    specs (strings).
    ``ready(url, pids)`` is called once every worker listens."""
    if workers < 1:
        raise ValueError("workers must be at least 1")
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r} (one of {', '.join(BACKENDS)})")
    if backend in ("trio", "anyio") and importlib.util.find_spec(backend) is None:
        raise ValueError(f"--backend {backend} needs the {backend} package "
                         f"(pip install 'kugelwire[{backend}]')")
    sock, port, reuse = _reserve(host, port, _backlog(options))
    directory = tempfile.mkdtemp(prefix="kugelwire-metrics-") if metrics else None
    options = {**options, "shutdown_timeout": shutdown_timeout}
    loop = asyncio.get_running_loop()
    stop = stop if stop is not None else asyncio.Event()
    installed = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
    pool = [_Worker(i) for i in range(workers)]
    ready_dir = Path(tempfile.mkdtemp(prefix="kugelwire-workers-"))

    def start(w: _Worker) -> None:
        spec = WorkerSpec(
            index=w.index, host=host, port=port, engine=engine, backend=backend,
            reuse_port=reuse, fd=None if reuse else sock.fileno(), metrics=metrics,
            metrics_dir=directory, ready_dir=str(ready_dir), options=options,
        )
        env = {**os.environ, _ENV: json.dumps(asdict(spec))}
        w.proc = subprocess.Popen(
            [sys.executable, "-m", "kugelwire.server._workers"], env=env,
            pass_fds=() if reuse else (sock.fileno(),),
        )
        w.started_at = loop.time()

    status = 0
    try:
        for w in pool:
            start(w)
        # every worker listens, or one failed to start (then there is nothing to supervise)
        while not stop.is_set():
            procs = [w.proc for w in pool if w.proc is not None]
            if all((ready_dir / f"{w.index}-{w.proc.pid}").exists()
                   for w in pool if w.proc is not None):
                break
            failed = [p for p in procs if p.poll() is not None]
            if failed:
                _say(f"kugelwire: a worker exited with {failed[0].returncode} before it "
                    "was ready", sys.stderr)
                stop.set()
                status = 1
                break
            await asyncio.sleep(0.02)
        if ready is not None and not stop.is_set():
            ready(f"ws://{host}:{port}", [w.proc.pid for w in pool if w.proc is not None])
        while not stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.1)
            for w in pool:
                if stop.is_set() or w.proc is None or w.proc.poll() is None:
                    continue
                if loop.time() - w.started_at < _RESTART_GAP_S:
                    continue  # a worker that dies at once is not restarted in a tight loop
                log.warning("worker %d (pid %d) exited with %s: restarting", w.index,
                            w.proc.pid, w.proc.returncode)
                _say(f"kugelwire: worker {w.index} (pid {w.proc.pid}) exited with "
                    f"{w.proc.returncode}; restarting", sys.stderr)
                if directory is not None:
                    _drop_gauges(_snapshot_path(directory, w.index))
                w.restarts += 1
                start(w)
        # graceful drain: SIGTERM to every worker, then wait
        for w in pool:
            if w.proc is not None and w.proc.poll() is None:
                w.proc.send_signal(signal.SIGTERM)
        deadline = loop.time() + shutdown_timeout + 5.0
        while loop.time() < deadline and any(
            w.proc is not None and w.proc.poll() is None for w in pool
        ):
            await asyncio.sleep(0.05)
        for w in pool:
            if w.proc is None:
                continue
            if w.proc.poll() is None:
                log.error("worker %d (pid %d) did not drain in time: killed", w.index,
                          w.proc.pid)
                w.proc.kill()
                w.proc.wait()
                status = 1
            elif w.proc.returncode not in (0, -signal.SIGTERM):
                status = 1
    finally:
        for w in pool:
            if w.proc is not None and w.proc.poll() is None:
                w.proc.kill()
                w.proc.wait()
        for sig in installed:
            loop.remove_signal_handler(sig)
        sock.close()
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)
        shutil.rmtree(ready_dir, ignore_errors=True)
    return status


def run_workers(workers: int, host: str = "127.0.0.1", port: int = 8765, **kwargs: Any) -> int:
    """:func:`supervise` in a fresh event loop (blocking)."""
    return asyncio.run(supervise(workers, host, port, **kwargs))


if __name__ == "__main__":
    sys.exit(worker_main())
