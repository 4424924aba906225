"""The speech-engine interface the server runner drives.

An engine turns one text chunk (a :class:`~kugelwire.protocol.text.TextChunk`: markup-free
``text`` plus spelled spans, breaks and prosody) and its :class:`SynthesisParams` (voice,
language, speed, sample rate, ...) into PCM16LE audio at ``params.sample_rate`` and word
timings.

:meth:`Engine.synthesize` is a *blocking generator*: the runner advances it from a worker thread,
never on the event loop, one step at a time. Each step yields either a piece of audio
(``bytes``, PCM16LE, an even number of bytes) or one :class:`WordTimestamp` (relative to the start
of this chunk's audio, character offsets into ``chunk.text``). Between pieces the engine should
check its :class:`CancelToken` and return early when it is set (barge-in, disconnect); the
runner also stops advancing a cancelled generator and closes it.

Concurrency contract: at most :attr:`Engine.max_concurrency` calls into the engine run at the
same time, counting every advance of any of its generators (the first ``next()`` included) and
their ``close()``. One generator is never advanced by two threads at once, but two generators of
the same engine may be interleaved step by step (a connection whose client reads slowly keeps
its generator suspended while others advance), so an engine with global state (eSpeak:
``max_concurrency = 1``) must not keep that state across a ``yield``.

Inline: an engine may offer an ``inline`` attribute; True promises that every step (the first
``next()`` included) is quick computation that never blocks or sleeps (microseconds, like the
tone engine's). The asyncio server then advances its generators on the event loop itself,
sparing two thread hops per worker call; every other backend still uses worker threads.

Voices: an engine may offer a ``voices`` attribute, a :class:`VoiceCatalogue` (id -> engine
voice, language, display name). The server then accepts only those ids (unless lenient) and
serves the table at ``GET /v1/voices``; ``params.voice_id`` is always a catalogue id there.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Protocol, TypeAlias, runtime_checkable

from ..protocol.config import SAMPLE_RATES as _SUPPORTED_RATES
from ..protocol.config import Voice, VoiceCatalogue
from ..protocol.messages import WordTimestamp
from ..protocol.sessions import SynthesisParams
from ..protocol.text import TextChunk

__all__ = ["SAMPLE_RATES", "CancelToken", "Engine", "SynthesisItem", "Voice", "VoiceCatalogue"]

#: The sample rates the wire allows (protocol.md#generation-parameters), ascending; every
#: engine must produce all of them.
SAMPLE_RATES = tuple(sorted(_SUPPORTED_RATES))

#: What one step of :meth:`Engine.synthesize` yields.
SynthesisItem: TypeAlias = bytes | WordTimestamp


class CancelToken:
    """Thread-safe cancellation flag handed to one :meth:`Engine.synthesize` call."""

    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        """Ask the engine to stop (idempotent)."""
        self._event.set()

    @property
    def cancelled(self) -> bool:
        """True once :meth:`cancel` was called."""
        return self._event.is_set()

    def wait(self, timeout: float) -> bool:
        """Sleep up to ``timeout`` seconds, waking early on cancel; True if cancelled."""
        return self._event.wait(timeout)

    def __repr__(self) -> str:
        return f"<CancelToken cancelled={self.cancelled}>"


@runtime_checkable
class Engine(Protocol):
    """A speech engine: text chunk in, PCM16LE pieces and word timings out (see module doc)."""

    #: How many calls into the engine may run at once (1 for engines with global state).
    max_concurrency: int

    # Optional attribute ``inline``: True when every step is quick and never blocks (the
    # asyncio server may then advance the generators on its event loop; see module doc).

    # Optional attribute ``voices``: a :class:`VoiceCatalogue` — what ``voice_id`` may name on a
    # strict server, and the answer of ``GET /v1/voices``. ``params.voice_id`` is then a
    # catalogue id (on a lenient server possibly any id or None: speak those with the
    # catalogue's default voice). An engine without one accepts any well-typed voice id.

    def synthesize(
        self, chunk: TextChunk, params: SynthesisParams, cancel: CancelToken
    ) -> Iterator[SynthesisItem]:
        """Blocking generator of audio pieces (``bytes``) and :class:`WordTimestamp` items."""
        ...
