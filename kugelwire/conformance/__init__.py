"""Property-based conformance testing of any server that claims the KugelAudio protocol.

``kugelwire conformance URL`` (or :func:`run`) drives hypothesis-generated sessions over real
sockets on ``/ws/tts/stream``, ``/ws/tts/multi`` and ``/ws/tts`` — random token splits, spell
spans split across frames, breaks, cancels at random points, several turns per connection, up
to 20 multi contexts with interleaved flushes and closes — and checks the protocol's invariants
on each connection's transcript: frame order per turn / context / request, ``idx`` and
``chunk_id`` rules, exactly one terminal per piece of work, nothing after ``interrupted``, audio
fields consistent with the format asked for, word timestamps inside their chunk and monotonic,
usage consistent with the audio, well-formed error frames.

A failure is shrunk by hypothesis to a minimal script and reported with its transcript, which
``--replay`` runs again. Needs the ``conformance`` extra (``pip install 'kugelwire[conformance]'``,
which installs hypothesis).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ._checks import Violation, check_transcript
from ._client import Entry, RawConnection, Transcript
from ._session import ENDPOINTS, Script, drive, strategies

__all__ = [
    "ENDPOINTS",
    "EndpointResult",
    "Entry",
    "RawConnection",
    "Report",
    "Script",
    "Transcript",
    "Violation",
    "check_transcript",
    "drive",
    "format_transcript",
    "replay",
    "run",
]

INSTALL_HINT = "python -m pip install 'kugelwire[conformance]'"


@dataclass(slots=True)
class EndpointResult:
    """What happened on one endpoint."""

    endpoint: str
    examples: int = 0
    passed: bool = True
    violations: list[Violation] = field(default_factory=list)
    script: Script | None = None  # the (shrunk) failing script
    transcript: Transcript | None = None
    error: str | None = None  # could not run at all (connect failed...)

    def to_dict(self) -> dict[str, Any]:
        return {
            "endpoint": self.endpoint,
            "examples": self.examples,
            "passed": self.passed,
            "violations": [
                {"invariant": v.invariant, "message": v.message, "entry": v.index}
                for v in self.violations
            ],
            "script": self.script,
            "transcript": None if self.transcript is None else self.transcript.to_dict(),
            "error": self.error,
        }


@dataclass(slots=True)
class Report:
    """The outcome of :func:`run`."""

    url: str
    seed: int | None
    results: list[EndpointResult]
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    def to_dict(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "seed": self.seed,
            "passed": self.passed,
            "seconds": round(self.seconds, 3),
            "results": [r.to_dict() for r in self.results],
        }


class _Pacer:
    """At most ``rate`` new connections per second (the rate limit for paid services)."""

    def __init__(self, rate: float | None) -> None:
        self._interval = 0.0 if not rate else 1.0 / rate
        self._next = 0.0

    def wait(self) -> None:
        now = time.monotonic()
        if now < self._next:
            time.sleep(self._next - now)
        self._next = max(now, self._next) + self._interval


class _Failed(AssertionError):
    pass


def format_transcript(transcript: Transcript, violations: Sequence[Violation] = ()) -> str:
    """A readable, replayable rendering: ``>`` client frames, ``<`` server frames (audio
    payloads elided), ``!`` the violations at their entry."""
    at: dict[int | None, list[Violation]] = {}
    for v in violations:
        at.setdefault(v.index, []).append(v)
    lines = [f"# {transcript.endpoint}"]
    for i, e in enumerate(transcript.entries):
        msg = e.message
        if e.direction == "recv" and isinstance(msg, dict) and isinstance(msg.get("audio"), str):
            msg = {**msg, "audio": f"<{len(msg['audio'])} base64 chars>"}
        mark = {"send": ">", "recv": "<"}.get(e.direction, "#")
        body = json.dumps(msg) if e.direction in ("send", "recv") else f"{e.direction} {msg}"
        lines.append(f"{i:4d} {e.t * 1000:8.1f} ms {mark} {body}")
        for v in at.get(i, []):
            lines.append(f"     !!! {v.invariant}: {v.message}")
    for v in at.get(None, []):
        lines.append(f"     !!! {v.invariant}: {v.message}")
    return "\n".join(lines)


def replay(
    url: str, endpoint: str, script: Script, *, api_key: str | None = None,
    timeout: float = 10.0,
) -> tuple[Transcript, list[Violation]]:
    """Run one script again (e.g. the shrunk one of a report) and check it."""
    conn = RawConnection(url, endpoint, api_key=api_key, timeout=timeout)
    transcript = drive(conn, endpoint, script, timeout=timeout)
    return transcript, check_transcript(transcript)


def _size(script: Script) -> tuple[int, int]:
    sends = [step for step in script if step[0] == "send"]
    return len(sends), len(json.dumps(sends))


def _example(
    url: str, endpoint: str, api_key: str | None, timeout: float, pacer: _Pacer,
    result: EndpointResult, stop_at: float | None, failing: dict[str, Any],
) -> Callable[[Script], None]:
    """The property hypothesis checks: one generated script over one real connection."""

    def one(script: Script) -> None:
        if not failing and stop_at is not None and time.monotonic() > stop_at:
            return  # the budget is spent: the remaining examples pass untried
        pacer.wait()
        try:
            conn = RawConnection(url, endpoint, api_key=api_key, timeout=timeout)
        except ConnectionError as exc:
            failing.setdefault("error", str(exc))
            raise
        transcript = drive(conn, endpoint, script, timeout=timeout)
        violations = check_transcript(transcript)
        if not failing:
            result.examples += 1
        if violations:
            # keep the smallest failure seen: hypothesis ends on its shrunk example, but a
            # timing-dependent failure may not reproduce on every replay
            if "script" not in failing or _size(script) <= _size(failing["script"]):
                failing.update(script=script, transcript=transcript, violations=violations)
            raise _Failed("; ".join(map(str, violations)))

    return one


def run(
    url: str,
    *,
    api_key: str | None = None,
    endpoints: Sequence[str] = ENDPOINTS,
    examples: int = 30,
    seed: int | None = None,
    budget: float | None = 60.0,
    rate: float | None = 2.0,
    voice_id: Any = None,
    timeout: float = 10.0,
    progress: Callable[[str], None] | None = None,
) -> Report:
    """Test the server at ``url`` (``ws://host:port``): up to ``examples`` generated sessions
    per endpoint, within ``budget`` seconds of generation (shrinking a failure may take longer),
    at most ``rate`` new connections per second. ``voice_id`` goes into every config (the hosted
    service needs one). Raises :class:`ImportError` without hypothesis."""
    try:
        from hypothesis import HealthCheck, Phase, given, settings
        from hypothesis import seed as hseed
        from hypothesis.errors import Flaky
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(f"the conformance tester needs hypothesis: {INSTALL_HINT}") from exc

    t0 = time.monotonic()
    pacer = _Pacer(rate)
    plans = strategies(voice_id)
    results: list[EndpointResult] = []
    for n, endpoint in enumerate(endpoints):
        result = EndpointResult(endpoint)
        results.append(result)
        start = time.monotonic()
        # this endpoint's share of the budget (unused time of earlier endpoints carries over)
        stop_at = None if budget is None else t0 + budget * (n + 1) / len(endpoints)
        failing: dict[str, Any] = {}

        one = _example(url, endpoint, api_key, timeout, pacer, result, stop_at, failing)
        test: Callable[[], None] = given(plans[endpoint])(one)  # type: ignore[no-untyped-call]
        test = settings(
            max_examples=examples, deadline=None, database=None, derandomize=False,
            suppress_health_check=list(HealthCheck), print_blob=False,
            phases=[Phase.explicit, Phase.generate, Phase.shrink],
        )(test)
        if seed is not None:
            test = hseed(seed)(test)
        if progress is not None:
            progress(f"{endpoint}: running up to {examples} examples")
        try:
            test()
        except ConnectionError:
            result.passed, result.error = False, failing.get("error", "connection failed")
        except (_Failed, Flaky) as exc:
            result.passed = False
            if "script" in failing:
                result.script = failing["script"]
                result.transcript = failing["transcript"]
                result.violations = failing["violations"]
            else:  # pragma: no cover
                result.error = str(exc)
        if progress is not None:
            verdict = "ok" if result.passed else "FAILED"
            progress(f"{endpoint}: {result.examples} examples, {verdict} "
                     f"({time.monotonic() - start:.1f} s)")
    return Report(url, seed, results, time.monotonic() - t0)
