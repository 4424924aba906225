"""Server scale: N concurrent ``/ws/tts/stream`` connections (one client process, asyncio) to a
kugelwire server (another process, :class:`~kugelwire.synth.ToneEngine`). All N connect first
and stay open; then each streams one turn at a random moment of a window of ``N / 200``
seconds (about 200 turns/s): LLM-paced tokens, the last one ending the sentence with
``flush``. Measured: sentence-end -> first audio per connection (p50/p99), errors, server CPU
and peak RSS (the server process's own ``getrusage``).

Then the 1,000-connection run once per server backend (asyncio, trio, anyio, sync) and once on
the pre-core asyncio runner (``benchmarks/_legacy``, the old path), all in this one run: p99,
errors and server CPU per streamed token (whole server run / (connections x tokens)), with the
asyncio backend's CPU and p99 as ratios against the old runner (the two alternate three times;
medians).

    python -m benchmarks.bench_scale [--quick]      # --quick: only the per-backend runs
"""

from __future__ import annotations

import asyncio
import random
import resource
import time

from benchmarks._common import figure, median, parse_args, percentile
from benchmarks._engine import KEY, ServerProcess
from kugelwire.protocol._events import AudioChunk
from kugelwire.transports.asyncio import connect_stream

TOKENS = ["Hello", " there,", " this", " is", " one", " short", " sentence."]


async def _connection(url: str, start_at: float, rng: random.Random) -> float:
    """One connection's turn; returns sentence-end -> first audio (seconds)."""
    # ping_interval: all N connect within seconds, so their 15 s keepalive pings would fire in
    # one burst in the middle of the window (an artefact of the set-up, not of real traffic)
    async with await connect_stream(
        url, api_key=KEY, voice_id=1, connect_timeout=60, ping_interval=120
    ) as stream:
        await _sleep_until(start_at)
        for token in TOKENS[:-1]:
            await stream.send_text(token)
            await asyncio.sleep(0.01 + rng.random() * 0.02)
        t0 = time.perf_counter()
        turn = await stream.send_text(TOKENS[-1], flush=True)
        first = None
        assert turn is not None
        async for event in turn:
            if first is None and type(event) is AudioChunk:
                first = time.perf_counter() - t0
        if first is None:
            raise RuntimeError("no audio")
        return first


async def _sleep_until(t: float) -> None:
    await asyncio.sleep(max(0.0, t - time.perf_counter()))


async def _run(url: str, n: int) -> tuple[list[float], int, float]:
    rng = random.Random(n)
    window = max(1.0, n / 200)
    ready_at = time.perf_counter() + 5.0 + n / 150  # time for all N to connect first
    tasks = [
        asyncio.ensure_future(_connection(url, ready_at + rng.random() * window, rng))
        for _ in range(n)
    ]
    results = await asyncio.gather(*tasks, return_exceptions=True)
    latencies = [r for r in results if isinstance(r, float)]
    errors = [r for r in results if not isinstance(r, float)]
    if errors:
        print(f"    first error: {errors[0]!r}")
    return latencies, len(errors), window


def _one(backend: str, n: int) -> tuple[float, float, int]:
    """(server CPU per token in us, p99 in ms, errors) of one n-connection run on ``backend``."""
    with ServerProcess("tone", 200, backend=backend) as server:
        latencies, errors, _ = asyncio.run(_run(server.url, n))
        cpu, _ = server.usage()
    p99 = percentile(latencies, 99) * 1e3 if latencies else float("nan")
    return cpu / (n * len(TOKENS)) * 1e6, p99, errors


def _backends(n: int) -> None:
    """The n-connection run on every backend and on the old runner, in this one run. The old
    runner and the asyncio backend alternate three times (median of three each: the machine
    is noisy)."""
    runs: dict[str, list[tuple[float, float, int]]] = {}
    order = ("legacy", "asyncio", "trio", "anyio", "sync", "legacy", "asyncio", "legacy",
             "asyncio")
    for backend in order:
        runs.setdefault(backend, []).append(_one(backend, n))
    best: dict[str, tuple[float, float]] = {}
    for backend, results in runs.items():
        per_token, p99 = median([r[0] for r in results]), median([r[1] for r in results])
        errors = sum(r[2] for r in results)
        best[backend] = (per_token, p99)
        name = "old runner" if backend == "legacy" else f"{backend} backend"
        figure(f"scale {n} [{name}]: server CPU per token", per_token, "us/token")
        figure(f"scale {n} [{name}]: sentence-end->first-audio p99", p99, "ms")
        figure(f"scale {n} [{name}]: errors", errors, "", "0", errors == 0)
    (cpu_new, p99_new), (cpu_old, p99_old) = best["asyncio"], best["legacy"]
    figure(f"scale {n}: asyncio backend / old runner, CPU per token", cpu_new / cpu_old, "x",
           "<= 1.0x", cpu_new / cpu_old <= 1.0)
    figure(f"scale {n}: asyncio backend / old runner, p99", p99_new / p99_old, "x")


def main() -> None:
    quick = parse_args(__doc__).quick
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    sizes = () if quick else (100, 500, 1000)
    for n in sizes:
        with ServerProcess("tone", 200) as server:
            t0, c0 = time.perf_counter(), time.process_time()
            latencies, errors, window = asyncio.run(_run(server.url, n))
            wall, client_cpu = time.perf_counter() - t0, time.process_time() - c0
            cpu, rss = server.usage()
        last = n == sizes[-1]
        p50, p99 = median(latencies) * 1e3, percentile(latencies, 99) * 1e3
        print(f"scale: {n} connections, turns spread over {window:.1f} s, run {wall:.1f} s")
        figure(f"scale {n}: sentence-end->first-audio p50", p50, "ms")
        figure(f"scale {n}: sentence-end->first-audio p99", p99, "ms",
               "<= 50 ms" if last else "", p99 <= 50 if last else None)
        figure(f"scale {n}: errors", errors, "", "0" if last else "", errors == 0 if last else None)
        figure(f"scale {n}: server CPU (whole run)", cpu, "s", "", None,
               f"({cpu / wall * 100:.0f}% of one core over {wall:.1f} s)")
        figure(f"scale {n}: server peak RSS", rss / 1024, "MiB")
        figure(f"scale {n}: client process CPU (whole run)", client_cpu, "s")
    _backends(1000)



if __name__ == "__main__":
    main()
