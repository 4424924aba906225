"""pytest plugin (entry point ``pytest11``, active once kugelwire is installed).

The ``kugelwire_server`` fixture starts a local KugelAudio-compatible server on a free loopback
port, in a background thread, for one test; test your voice agent against it without the real
API::

    def test_my_agent(kugelwire_server):
        agent = MyAgent(url=kugelwire_server.url, api_key=kugelwire_server.api_key)
        ...

    @pytest.mark.kugelwire_engine("espeak")        # the real embedded voice (extra "voice")
    def test_with_speech(kugelwire_server): ...

The official SDK takes ``KugelAudio(api_key=server.api_key, api_url=server.http_url)``.
The tone engine (default) is deterministic: one tone per word, exact word timings.

The server checks every client against the streaming rules (:mod:`kugelwire.lint`)::

    def test_agent_follows_the_rules(kugelwire_server):
        run_my_agent(kugelwire_server.url)
        kugelwire_server.assert_follows_rules()     # fails listing every finding
        # or inspect kugelwire_server.findings
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from .lint import Finding, Rule
    from .server import ThreadedServer

__all__ = ["LocalServer", "kugelwire_server"]


@dataclass(frozen=True)
class LocalServer:
    """What the fixture yields: where the server listens and the key it accepts."""

    url: str  #: ``ws://127.0.0.1:PORT`` (append ``/ws/tts/stream`` etc., or pass as base URL)
    api_key: str
    handle: ThreadedServer  #: the running server (``connections``, ``shutdown(code)``...)

    @property
    def http_url(self) -> str:
        """``http://127.0.0.1:PORT``: the ``api_url`` form the official SDKs take."""
        return "http" + self.url[2:]

    @property
    def port(self) -> int:
        return self.handle.port

    @property
    def findings(self) -> list[Finding]:
        """The rule checks' findings so far (:class:`kugelwire.lint.Finding`), oldest first."""
        linter = self.handle.linter
        return [] if linter is None else linter.findings

    def assert_follows_rules(
        self, *, ignore: Iterable[Rule | str] = (), timeout: float = 2.0
    ) -> None:
        """Fail the test if any client broke a streaming rule.

        Waits up to ``timeout`` seconds for open connections to close first (some rules are
        decided when a connection closes). ``ignore`` lists rules (or their names, such as
        ``"no-preconnect"``) to accept.
        """
        linter = self.handle.linter
        if linter is None:
            return
        deadline = time.monotonic() + timeout
        while linter.open_connections and time.monotonic() < deadline:
            time.sleep(0.01)
        skip = {str(rule) for rule in ignore}
        found = [f for f in linter.findings if f.rule.value not in skip]
        if found:
            lines = "\n".join(f"  {f}" for f in found)
            raise AssertionError(
                f"the client broke the streaming rules ({len(found)} finding(s)):\n{lines}"
            )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "kugelwire_engine(name, **options): engine of the kugelwire_server fixture "
        "('tone' (default) or 'espeak'; options go to the engine's constructor)",
    )


def _engine(name: str, options: dict[str, Any]) -> Any:
    from .synth import ToneEngine

    if name == "tone":
        return ToneEngine(**options)
    if name == "espeak":
        try:
            from .synth import EspeakEngine
        except ImportError as exc:  # pragma: no cover - depends on the environment
            pytest.skip(f"the espeak engine needs kugelwire[voice]: {exc}")
        return EspeakEngine(**options)
    raise pytest.UsageError(f"kugelwire_engine: unknown engine {name!r} (tone or espeak)")


@pytest.fixture
def kugelwire_server(request: pytest.FixtureRequest) -> Iterator[LocalServer]:
    """A local server on a free loopback port for this test (tone engine unless marked)."""
    from .server import run_in_thread

    marker = request.node.get_closest_marker("kugelwire_engine")
    name = marker.args[0] if marker is not None and marker.args else "tone"
    options = dict(marker.kwargs) if marker is not None else {}
    key = "test-" + secrets.token_hex(8)
    with run_in_thread("127.0.0.1", 0, engine=_engine(name, options), api_key=key) as handle:
        yield LocalServer(handle.url, key, handle)
