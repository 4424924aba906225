"""Side by side with a bare ``websockets`` + ``json`` client: our asyncio, trio, anyio and sync
clients on the figures a voice agent feels, against the same kugelwire server (a separate
process running :class:`benchmarks._engine.FrameEngine` with 20 ms = 480-sample frames of 24 kHz
PCM16), on the default install (standard library base64, also when ``pybase64`` is installed).

Each round runs every client once, in an order that rotates from round to round (so machine
noise and warm caches hit them alike); each client decodes every frame's audio. Figures:

* flush -> first audio median (``send_text("1 frame.", flush=True)`` to the first audio event);
* wall time per 480-sample frame over long turns (receive path throughput);
* ``send_text`` blocking time median (200 tokens into an open turn; websockets: ``ws.send``);
* the server's pace: the wall time per frame of a websockets client that parses nothing, in the
  same rounds (when it is close to websockets' own, the server, not the client, sets the pace).

All of it twice: against the kugelwire server (FrameEngine: the server encodes every frame, so
it often sets the pace), then against :mod:`benchmarks._replay` (each turn written at once as
pre-encoded bytes: the clients set the pace). The same targets apply to both.

Then, against each server again, the asyncio client and websockets alone on one event loop in
the main thread, turn about (no portal threads, no other client in the process): flush -> first
audio and each one's CPU time per latency turn. On a 2-core VM the scheduler's placement of the
client threads next to the server's moves the side-by-side ratios by more than the clients
differ (benchmarks/README.md); this pair meets the same placement, so its ratio is the clients'.

Targets (ratios to websockets in the same run): first audio <= 1.0x (asyncio), <= 1.1x (trio,
sync); wall per frame <= 0.8x (asyncio), <= 0.9x (trio, sync); send_text <= 1.0x.

    python -m benchmarks.bench_client [--quick]
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from benchmarks._common import figure, median, parse_args, stdlib_base64
from benchmarks._engine import KEY, ServerProcess
from kugelwire.protocol.events import AudioChunk

os.environ.setdefault("KUGELAUDIO_TELEMETRY", "0")

FRAME_MS = 20  # 480 samples at 24 kHz
FRAMES = 250  # per throughput turn
THROUGHPUT_TEXT = f"{FRAMES} frames of audio please."
LATENCY_TEXT = "1 frame."
TOKENS = 200


@dataclass
class Result:
    latencies: list[float] = field(default_factory=list)
    frames: int = 0
    wall: float = 0.0
    cpu: float = 0.0  # process CPU over the throughput turns (only that client runs then)
    sends: list[float] = field(default_factory=list)

    def add(self, other: Result) -> None:
        self.latencies += other.latencies
        self.frames += other.frames
        self.wall += other.wall
        self.cpu += other.cpu
        self.sends += other.sends


class _Probe:
    """The operations a client offers the measuring loop (awaitable for every client)."""

    async def turn(self, text: str, first: list[float]) -> int:
        raise NotImplementedError

    async def token(self, text: str) -> None:
        raise NotImplementedError

    async def flush_and_drain(self) -> None:
        raise NotImplementedError


async def _latency(probe: _Probe) -> float:
    first = [0.0]
    t0 = time.perf_counter()
    await probe.turn(LATENCY_TEXT, first)
    return first[0] - t0


async def _throughput(probe: _Probe) -> tuple[int, float]:
    t0 = time.perf_counter()
    frames = await probe.turn(THROUGHPUT_TEXT, [0.0])
    return frames, time.perf_counter() - t0


async def _sends(probe: _Probe) -> list[float]:
    out = []
    for i in range(TOKENS):
        t0 = time.perf_counter()
        await probe.token(f"word{i} ")
        out.append(time.perf_counter() - t0)
    await probe.flush_and_drain()
    return out


class Runner:
    """One connected client on its own event loop (an anyio blocking portal) or, for the
    blocking client, on this thread: :meth:`run` runs one measurement to its end."""

    def __init__(self, portal: Any, probe: _Probe) -> None:
        self.portal, self.probe = portal, probe
        self.exit: Callable[[], Any] = lambda: None

    def run(self, fn: Callable[[_Probe], Any]) -> Any:
        if self.portal is None:  # the sync client: the coroutine never suspends
            coro = fn(self.probe)
            try:
                coro.send(None)
            except StopIteration as stop:
                return stop.value
            raise AssertionError("the sync run suspended")
        return self.portal.call(fn, self.probe)


# -- kugelwire ------------------------------------------------------------------------------------
class _AsyncKugelwire(_Probe):
    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.open: Any = None

    async def turn(self, text: str, first: list[float]) -> int:
        frames = 0
        async for event in await self.stream.send_text(text, flush=True):
            if type(event) is AudioChunk:
                if not frames:
                    first[0] = time.perf_counter()
                event.pcm16()
                frames += 1
        return frames

    async def token(self, text: str) -> None:
        self.open = await self.stream.send_text(text)

    async def flush_and_drain(self) -> None:
        await self.stream.flush()
        async for _ in self.open:
            pass


def _async_runner(portal: Any, connect: Any, url: str, scoped: bool = False) -> Runner:
    if scoped:
        wrapped = portal.wrap_async_context_manager(connect(url, api_key=KEY, voice_id=1))
        runner = Runner(portal, _AsyncKugelwire(wrapped.__enter__()))
        runner.exit = lambda: wrapped.__exit__(None, None, None)
        return runner

    async def open_() -> Any:
        return await connect(url, api_key=KEY, voice_id=1)

    stream = portal.call(open_)
    runner = Runner(portal, _AsyncKugelwire(stream))
    runner.exit = lambda: portal.call(stream.close)
    return runner


def open_asyncio(portals: dict[str, Any], url: str) -> Runner:
    from kugelwire.transports.asyncio import connect_stream

    return _async_runner(portals["asyncio"], connect_stream, url)


def open_trio(portals: dict[str, Any], url: str) -> Runner:
    from kugelwire.transports.trio import connect_stream

    return _async_runner(portals["trio"], connect_stream, url)


def open_anyio(portals: dict[str, Any], url: str) -> Runner:
    from kugelwire.transports.anyio import connect_stream

    return _async_runner(portals["asyncio"], connect_stream, url, scoped=True)


class _SyncKugelwire(_Probe):
    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.open: Any = None

    async def turn(self, text: str, first: list[float]) -> int:
        frames = 0
        for event in self.stream.send_text(text, flush=True):
            if type(event) is AudioChunk:
                if not frames:
                    first[0] = time.perf_counter()
                event.pcm16()
                frames += 1
        return frames

    async def token(self, text: str) -> None:
        self.open = self.stream.send_text(text)

    async def flush_and_drain(self) -> None:
        self.stream.flush()
        for _ in self.open:
            pass


def open_sync(portals: dict[str, Any], url: str) -> Runner:
    from kugelwire.transports.sync import connect_stream

    stream = connect_stream(url, api_key=KEY, voice_id=1)
    runner = Runner(None, _SyncKugelwire(stream))
    runner.exit = stream.close
    return runner


# -- the anchor ----------------------------------------------------------------------------------
class _Websockets(_Probe):
    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.config = True

    def _msg(self, obj: dict[str, Any]) -> str:
        if self.config:  # the first frame of the session carries the config
            obj["voice_id"] = 1
            self.config = False
        return json.dumps(obj)

    async def turn(self, text: str, first: list[float]) -> int:
        await self.ws.send(self._msg({"text": text, "flush": True}))
        return await self._drain(first)

    async def _drain(self, first: list[float]) -> int:
        frames = 0
        while True:
            obj = json.loads(await self.ws.recv())
            if "audio" in obj:
                if not frames:
                    first[0] = time.perf_counter()
                base64.b64decode(obj["audio"])
                frames += 1
            elif obj.get("session_closed"):
                return frames

    async def token(self, text: str) -> None:
        await self.ws.send(self._msg({"text": text}))

    async def flush_and_drain(self) -> None:
        await self.ws.send(json.dumps({"flush": True}))
        await self._drain([0.0])


async def _connect_websockets(url: str) -> Any:
    """The anchor's connection (every measurement of it uses these settings)."""
    import websockets

    return await websockets.connect(f"{url}/ws/tts/stream?api_key={KEY}", max_size=2**24,
                                    compression=None)


def open_websockets(portals: dict[str, Any], url: str) -> Runner:
    portal = portals["asyncio"]
    ws = portal.call(_connect_websockets, url)
    runner = Runner(portal, _Websockets(ws))
    runner.exit = lambda: portal.call(ws.close)
    return runner


class _Pace(_Websockets):
    """The server's pace: a websockets client that parses and decodes nothing (it only looks
    for the end of the turn). No client can take frames faster than the server sends them,
    so its wall time per frame is the floor of every client's."""

    async def _drain(self, first: list[float]) -> int:
        frames = 0
        while True:
            text = await self.ws.recv()
            if text.startswith('{"audio"'):
                if not frames:
                    first[0] = time.perf_counter()
                frames += 1
            elif '"session_closed"' in text:
                return frames


def open_pace(portals: dict[str, Any], url: str) -> Runner:
    runner = open_websockets(portals, url)
    probe = runner.probe
    assert isinstance(probe, _Websockets)
    runner.probe = _Pace(probe.ws)
    return runner


CLIENTS: dict[str, Callable[[dict[str, Any], str], Runner]] = {
    "websockets": open_websockets,
    "pace": open_pace,
    "asyncio": open_asyncio,
    "trio": open_trio,
    "anyio": open_anyio,
    "sync": open_sync,
}
#: (first-audio ratio, wall-per-frame ratio) targets against websockets
TARGETS = {"asyncio": (1.0, 0.8), "trio": (1.1, 0.9), "sync": (1.1, 0.9), "anyio": (None, None),
           "pace": (None, None)}


def _ratios(ws: Result, ours: Result) -> tuple[float, float, float]:
    return (
        median(ours.latencies) / median(ws.latencies),
        (ours.wall / ours.frames) / (ws.wall / ws.frames),
        median(ours.sends) / median(ws.sends),
    )


def _cpu(fn: Callable[[_Probe], Any]) -> Callable[[_Probe], Any]:
    """``fn`` plus the process CPU time it took (all threads: the client's I/O thread too)."""

    async def timed(probe: _Probe) -> Any:
        c0 = time.process_time()
        frames, wall = await fn(probe)
        return frames, wall, time.process_time() - c0

    return timed


def _round(runners: dict[str, Runner], r: int, turns: int, probes: int) -> dict[str, Result]:
    names = list(runners)
    results = {name: Result() for name in names}
    step = [0]

    def each(fn: Callable[[_Probe], Any]) -> dict[str, Any]:
        step[0] += 1
        k = (r + step[0]) % len(names)  # rotate who goes first
        return {name: runners[name].run(fn) for name in names[k:] + names[:k]}

    for _ in range(probes):
        for name, value in each(_latency).items():
            results[name].latencies.append(value)
    for _ in range(turns):
        for name, (frames, wall, cpu) in each(_cpu(_throughput)).items():
            results[name].frames += frames
            results[name].wall += wall
            results[name].cpu += cpu
    for name, sends in each(_sends).items():
        results[name].sends += sends
    for name in names:
        assert results[name].frames == turns * FRAMES, name
    return results


def _measure(server_kind: str, label: str, rounds: int, turns: int, probes: int) -> None:
    """Every client against one server (``frames``: the kugelwire server with FrameEngine;
    ``replay``: benchmarks/_replay.py), rounds alternating; print the figures under ``label``."""
    from anyio.from_thread import start_blocking_portal

    names = list(CLIENTS)
    per_round: list[dict[str, Result]] = []
    with stdlib_base64(), ServerProcess(server_kind, FRAME_MS) as server, \
            start_blocking_portal("asyncio") as pa, start_blocking_portal("trio") as pt:
        portals = {"asyncio": pa, "trio": pt}
        runners = {name: CLIENTS[name](portals, server.url) for name in names}
        try:
            for runner in runners.values():  # warm up
                runner.run(_latency)
                runner.run(_throughput)
            per_round = [_round(runners, r, turns, probes) for r in range(rounds)]
        finally:
            for runner in runners.values():
                runner.exit()
    total = {name: Result() for name in names}
    for results in per_round:
        for name, result in results.items():
            total[name].add(result)
    ws = total["websockets"]
    figure(f"{label}: websockets flush->first-audio median", median(ws.latencies) * 1e3, "ms")
    figure(f"{label}: websockets wall per 480-sample frame", ws.wall / ws.frames * 1e6, "us")
    figure(f"{label}: websockets send median", median(ws.sends) * 1e6, "us")
    for name in names:
        figure(f"{label}: {name} CPU per 480-sample frame", total[name].cpu / total[name].frames
               * 1e6, "us")
    pace = total["pace"]
    figure(f"{label}: server pace (a client that parses nothing) wall per frame",
           pace.wall / pace.frames * 1e6, "us",
           note="no client's wall per frame can be below this; ratios to websockets under "
           f"{pace.wall / pace.frames / (ws.wall / ws.frames):.2f}x are out of any client's reach")
    for name in names[1:]:
        if name == "pace":
            continue
        lat, wall, send = _ratios(ws, total[name])
        spread = [_ratios(r["websockets"], r[name]) for r in per_round]
        lat_t, wall_t = TARGETS[name]

        def note(i: int, spread: list[tuple[float, float, float]] = spread) -> str:
            return "rounds " + " ".join(f"{s[i]:.2f}" for s in spread)

        figure(f"{label}: {name} flush->first-audio / websockets", lat, "x",
               f"<= {lat_t}x" if lat_t else "", lat <= lat_t if lat_t else None, note(0))
        figure(f"{label}: {name} wall per frame / websockets", wall, "x",
               f"<= {wall_t}x" if wall_t else "", wall <= wall_t if wall_t else None, note(1))
        figure(f"{label}: {name} send_text blocking / websockets send", send, "x",
               "<= 1.0x", send <= 1.0, note(2))


#: per client, per latency turn: (flush -> first audio, the thread's CPU to the turn's end)
_Turns = dict[str, list[tuple[float, float]]]


async def _one_loop_turns(url: str, rounds: int, probes: int) -> _Turns:
    from kugelwire.transports.asyncio import connect_stream

    ws = await _connect_websockets(url)
    stream = await connect_stream(url, api_key=KEY, voice_id=1)
    probe_of = {"websockets": _Websockets(ws), "asyncio": _AsyncKugelwire(stream)}

    async def timed(probe: _Probe) -> tuple[float, float]:
        first = [0.0]
        c0, t0 = time.thread_time(), time.perf_counter()
        await probe.turn(LATENCY_TEXT, first)
        return first[0] - t0, time.thread_time() - c0

    out: _Turns = {name: [] for name in probe_of}
    try:
        for probe in probe_of.values():  # warm up
            for _ in range(20):
                await timed(probe)
        names = list(probe_of)
        for r in range(rounds * probes):
            for name in names[r % 2:] + names[:r % 2]:
                out[name].append(await timed(probe_of[name]))
    finally:
        await stream.close()
        await ws.close()
    return out


def _one_loop(server_kind: str, label: str, rounds: int, probes: int) -> None:
    """The asyncio client and the websockets client on one event loop in this thread, turn
    about (no portal, no other client in the process): both meet the same thread placement,
    the same allocator and the same loop, so the ratio holds only what the clients do."""
    import asyncio

    with stdlib_base64(), ServerProcess(server_kind, FRAME_MS) as server:
        out = asyncio.run(_one_loop_turns(server.url, rounds, probes))
    ws, ours = out["websockets"], out["asyncio"]
    ws_lat = median([lat for lat, _ in ws])
    figure(f"{label}: websockets flush->first-audio median", ws_lat * 1e3, "ms")
    ratio = median([lat for lat, _ in ours]) / ws_lat
    figure(f"{label}: asyncio flush->first-audio / websockets", ratio, "x", "<= 1.0x",
           ratio <= 1.0)
    for name, turns in out.items():
        figure(f"{label}: {name} CPU per latency turn", sum(c for _, c in turns) / len(turns)
               * 1e6, "us", note="this thread's CPU time, flush to the turn's end")


def main() -> None:
    args = parse_args(__doc__)
    rounds, turns, probes = (3, 3, 40) if args.quick else (5, 8, 150)
    print(f"client side by side: {FRAME_MS} ms (480-sample) frames, {rounds} rounds x "
          f"({turns} turns x {FRAMES} frames, {probes} latency probes, {TOKENS} tokens); "
          "default install (stdlib base64); all clients connected at once, every step run "
          "client after client in a rotating order; first against the kugelwire server "
          "(engine-paced), then against a replay server (client-bound)")
    _measure("frames", "client", rounds, turns, probes)
    _measure("replay", "client (replay server)", rounds, turns, probes)
    _one_loop("frames", "client (one loop)", rounds, probes)
    _one_loop("replay", "client (one loop, replay server)", rounds, probes)


if __name__ == "__main__":
    main()
