"""The protocol core's public surface, and the rules that keep it one surface.

* ``kugelwire.protocol.__all__`` is lean; everything else lives in documented submodules, and
  every name the package ever exported from ``kugelwire.protocol`` still imports from there.
* The rest of the package uses only the public modules of ``kugelwire/protocol/`` (no import of
  a ``kugelwire.protocol._*`` module, not even a docstring reference to one).
* Each shared wire constant is defined once (endpoints, restart close codes, sample rates, the
  JSON encoder, the refusal header and bodies, the output formats).
* One error vocabulary: bad arguments raise ``LocalProtocolError``; ``error_code`` / ``status``
  / ``close_code`` name what ``code`` used to mean (the old names still work).
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import re
import warnings
from pathlib import Path

import pytest

import kugelwire.protocol as protocol
from kugelwire.errors import ConnectionClosedError, ServerErrorResponse
from kugelwire.protocol import (
    ClientConnection,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
    ServerConnection,
    StreamClientSession,
    StreamServerSession,
    build_url,
)
from kugelwire.protocol.config import Voice, VoiceCatalogue
from kugelwire.protocol.errors import MarkupError
from kugelwire.protocol.events import (
    ConnectionTerminated,
    ErrorCode,
    Reconnecting,
    ServerError,
    ServerWarning,
    TurnAborted,
)
from kugelwire.protocol.g711 import ulaw_encode
from kugelwire.protocol.text import Chunker, scan
from kugelwire.protocol.ws import ConnectionClosed

PACKAGE = Path(protocol.__file__).resolve().parents[1]
PROTOCOL = PACKAGE / "protocol"
DOCS = PACKAGE.parent / "docs"
SUBMODULES = ("sessions", "events", "ws", "messages", "config", "errors", "state", "text", "g711")

#: Every name ``kugelwire.protocol.__all__`` held before the surface was split: old code keeps
#: importing them from ``kugelwire.protocol``.
_FORMER = """
CLIENT_CONTEXT_TRANSITIONS CLIENT_TURN_TRANSITIONS CONFIG_FIELDS DEFAULT_MODEL ENCODINGS
ENDPOINTS FORBIDDEN_SETTINGS_KEYS IDLE_WARNING LANGUAGES MAX_CONTEXTS MAX_TAG_LENGTH MODELS
OUTPUT_FORMATS SAMPLE_RATES SERVER_TURN_TRANSITIONS SETTINGS_KEYS Accepted AudioChunk
AudioFrame BreakMark ChunkComplete ChunkCompleteFrame ChunkRef Chunker ClientConnection
ClientConnectionEvent ClientContextState ClientEvent ClientMessage ClientTurnState Config
Connected ConnectionClosed ConnectionEvent ConnectionState ConnectionTerminated ContextClosed
ContextClosedFrame ContextCreated ContextCreatedFrame ContextInput ContextTimeout
ContextTimeoutFrame Diagnostic ErrorCode ErrorFrame FinalFrame GenerationStarted
GenerationStartedFrame HandshakeRejected Headers HttpHandler Interrupted InterruptedFrame
IsFinalFrame LocalProtocolError MarkupError MessageSession Model MultiClientSession
MultiServerSession ProsodySpan ProtocolError Reconnecting Rejected RejectionKind
RemoteProtocolError RequestFinal RestHandler ServerConnection ServerConnectionEvent
ServerError ServerLimits ServerMessage ServerTurnInput ServerTurnState SessionClosed
SessionClosedFrame SessionStartedFrame SettingsUpdate SettingsUpdated SettingsUpdatedFrame
SpellSpan StreamClientSession StreamServerSession SynthesisCancelled SynthesisParams
SynthesisRequested TTSClientSession TTSServerSession TextChunk TurnAborted TurnClosed
TurnFinal TurnInput TurnMetrics TurnReplay TurnStarted UnknownFrame Usage Voice VoiceCatalogue
VoiceSettings WarningFrame WordTimestamp WordTimestamps WordTimestampsFrame
alaw_decode alaw_decode_sample alaw_encode alaw_encode_sample break_ms build_url dumps
loads_object parse_client_message parse_server_message prosody_rate resolve_audio_format scan
ulaw_decode ulaw_decode_sample ulaw_encode ulaw_encode_sample unspoken_text
"""
FORMER_ALL = _FORMER.split()


def _sources(exclude: Path | None = None) -> list[Path]:
    return [p for p in sorted(PACKAGE.rglob("*.py"))
            if exclude is None or exclude not in p.parents]


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported_modules(path: Path) -> list[tuple[int, str]]:
    """``(line, absolute module)`` of every import statement of ``path`` (relative resolved)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path)[
        : _module_name(path).rfind(".")]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            out.append((node.lineno, module))
            out += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
    return out


# -- the surface -----------------------------------------------------------------------------

def test_the_top_level_namespace_is_lean_and_documented_submodules_hold_the_rest() -> None:
    assert len(protocol.__all__) <= 25, protocol.__all__
    assert len(set(protocol.__all__)) == len(protocol.__all__)
    for name in protocol.__all__:
        assert getattr(protocol, name) is not None
    for sub in SUBMODULES:
        module = importlib.import_module(f"kugelwire.protocol.{sub}")
        assert module.__doc__, sub
        assert module.__all__, sub
        for name in module.__all__:
            assert not name.startswith("_"), (sub, name)
            assert hasattr(module, name), (sub, name)


def test_every_former_top_level_name_still_imports_from_kugelwire_protocol() -> None:
    assert len(FORMER_ALL) == len(set(FORMER_ALL)) == 125
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a moved name is not deprecated: no warning
        for name in FORMER_ALL:
            value = getattr(protocol, name)
            homes = [sub for sub in SUBMODULES
                     if name in importlib.import_module(f"kugelwire.protocol.{sub}").__all__]
            assert homes or name in protocol.__all__, name
            for sub in homes:
                assert getattr(importlib.import_module(f"kugelwire.protocol.{sub}"), name) \
                    is value, (sub, name)
    with pytest.raises(AttributeError):
        protocol.NoSuchName  # noqa: B018


def test_warning_is_a_deprecated_alias_of_server_warning() -> None:
    import kugelwire.protocol.events as events

    for module in (protocol, events):
        with pytest.warns(DeprecationWarning, match="ServerWarning"):
            old = module.Warning
        assert old is ServerWarning
    assert "Warning" not in protocol.__all__ and "Warning" not in events.__all__
    assert ServerWarning("x", 1) == old("x", 1)


def test_the_api_page_documents_every_name_of_every_submodule() -> None:
    page = (DOCS / "api" / "protocol.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"^::: kugelwire\.protocol\.([\w.]+)$", page, re.MULTILINE))
    for sub in SUBMODULES:
        module = importlib.import_module(f"kugelwire.protocol.{sub}")
        for name in module.__all__:
            if name in protocol.__all__:
                assert name in documented, name
                continue
            homes = [s for s in SUBMODULES if f"{s}.{name}" in documented]
            assert homes, f"kugelwire.protocol.{sub}.{name} is not on the API page"


# -- the import rule -------------------------------------------------------------------------

def test_no_module_outside_the_core_imports_a_private_module_of_the_core() -> None:
    offenders = []
    for path in _sources(exclude=PROTOCOL):
        for line, module in _imported_modules(path):
            parts = module.split(".")
            if parts[:2] == ["kugelwire", "protocol"] and len(parts) > 2 \
                    and parts[2].startswith("_"):
                offenders.append(f"{path.relative_to(PACKAGE)}:{line} {module}")
        for number, text in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if re.search(r"protocol\._[a-z]", text):  # docstring references count too
                offenders.append(f"{path.relative_to(PACKAGE)}:{number} {text.strip()}")
    assert not offenders, "\n".join(offenders)


def test_the_import_rule_check_sees_relative_and_absolute_imports(tmp_path: Path) -> None:
    bad = PACKAGE / "server" / "_core.py"
    found = [m for _, m in _imported_modules(bad) if m.startswith("kugelwire.protocol")]
    assert "kugelwire.protocol.sessions" in found  # ``from ..protocol.sessions import``
    assert "kugelwire.protocol.ws.ServerConnection" in found


# -- constants defined once ------------------------------------------------------------------

def _literals(path: Path) -> list[tuple[int, object]]:
    """Every literal value of ``path`` (strings, numbers, bytes, and the frozen value of a
    tuple / set / dict display of literals), docstrings excluded."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    out: list[tuple[int, object]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and id(node) not in docstrings:
            out.append((node.lineno, node.value))
        elif isinstance(node, (ast.Tuple, ast.Set, ast.List)):
            with contextlib.suppress(ValueError, TypeError):  # not all literals / unhashable
                out.append((node.lineno, frozenset(ast.literal_eval(node))))
        elif isinstance(node, ast.Dict):
            items = {(k.value, v.value if isinstance(v, ast.Constant) else None)
                     for k, v in zip(node.keys, node.values, strict=True)
                     if isinstance(k, ast.Constant)}
            out.append((node.lineno, ("dict", frozenset(items))))
    return out


def _dict_with(value: object, *items: tuple[str, object]) -> bool:
    return isinstance(value, tuple) and value[0] == "dict" and set(items) <= value[1]


ONCE = {
    "the /ws/tts endpoint": lambda v: v == "/ws/tts",
    "the /ws/tts/stream endpoint": lambda v: v == "/ws/tts/stream",
    "the /ws/tts/multi endpoint": lambda v: v == "/ws/tts/multi",
    "the sample rates": lambda v: isinstance(v, frozenset) and {8000, 22050, 44100} <= v,
    "the AI-generated header": lambda v: v == b"x-kugelaudio-ai-generated",
    "the 401 body": lambda v: _dict_with(v, ("error", "Unauthorized")),
    "the 404 body": lambda v: _dict_with(v, ("error", "Not found")),
    "the output formats": lambda v: _dict_with(v, ("pcm_8000", None), ("ulaw_8000", None)),
}


def test_each_shared_constant_is_defined_once() -> None:
    places: dict[str, list[str]] = {what: [] for what in ONCE}
    for path in _sources():
        for line, value in _literals(path):
            for what, matches in ONCE.items():
                if matches(value):
                    places[what].append(f"{path.relative_to(PACKAGE)}:{line}")
    for what, where in places.items():
        assert len(where) == 1, f"{what} is defined {len(where)} times: {where}"


def test_the_restart_close_codes_are_named_once() -> None:
    from kugelwire.protocol.ws import RESTART_CODES, SERVICE_RESTART, TRY_AGAIN_LATER

    assert (SERVICE_RESTART, TRY_AGAIN_LATER) == (1012, 1013)
    assert frozenset({1012, 1013}) == RESTART_CODES
    sets = [f"{path.relative_to(PACKAGE)}:{line}" for path in _sources()
            for line, value in _literals(path)
            if isinstance(value, frozenset) and {1012, 1013} <= value]
    assert not sets, f"a set of the restart close codes besides RESTART_CODES: {sets}"


def test_one_json_encoder() -> None:
    where = []
    for path in _sources():
        text = path.read_text(encoding="utf-8")
        for number, line in enumerate(text.splitlines(), 1):
            if "JSONEncoder(" in line or re.search(r"separators=", line):
                where.append(f"{path.relative_to(PACKAGE)}:{number}")
    assert where == ["protocol/_messages.py:" + where[0].rsplit(":", 1)[1]], where


def test_the_sessions_and_the_server_share_the_named_endpoints() -> None:
    from kugelwire.protocol import MULTI_ENDPOINT, STREAM_ENDPOINT, TTS_ENDPOINT
    from kugelwire.protocol.sessions import (
        MultiClientSession,
        MultiServerSession,
        TTSClientSession,
        TTSServerSession,
    )

    assert protocol.ENDPOINTS == (TTS_ENDPOINT, STREAM_ENDPOINT, MULTI_ENDPOINT)
    assert StreamClientSession.endpoint == StreamServerSession.endpoint == STREAM_ENDPOINT
    assert MultiClientSession.endpoint == MultiServerSession.endpoint == MULTI_ENDPOINT
    assert TTSClientSession.endpoint == TTSServerSession.endpoint == TTS_ENDPOINT


# -- one error vocabulary --------------------------------------------------------------------

@pytest.mark.parametrize(
    "bad",
    [
        lambda: build_url("http://127.0.0.1", "/ws/nope"),
        lambda: build_url("ftp://127.0.0.1", "/ws/tts"),
        lambda: build_url("http://", "/ws/tts"),
        lambda: ClientConnection(StreamClientSession(voice_id=1), "ws://127.0.0.1/ws/tts/stream",
                                 now=0.0, max_message_size=0),
        lambda: ClientConnection(StreamClientSession(voice_id=1), "ws://127.0.0.1/ws/tts/stream",
                                 now=0.0, auth="cookie"),  # type: ignore[arg-type]
        lambda: ServerConnection(lambda path: None, now=0.0,
                                 auth_failure="nope"),  # type: ignore[arg-type]
        lambda: VoiceCatalogue(()),
        lambda: Voice(-1, "x", "en", "x"),
        lambda: Chunker(chunk_length_schedule=[]),
        lambda: ulaw_encode(b"\x00"),
        lambda: scan("<prosody>x</prosody>", False),
    ],
)
def test_bad_arguments_raise_local_protocol_error(bad: object) -> None:
    with pytest.raises(LocalProtocolError) as info:
        bad()  # type: ignore[operator]
    assert isinstance(info.value, ValueError)  # what ``except ValueError`` callers relied on
    assert isinstance(info.value, ProtocolError)


def test_markup_error_is_a_local_protocol_error_and_remote_errors_are_not_value_errors() -> None:
    assert issubclass(MarkupError, LocalProtocolError)
    assert not issubclass(RemoteProtocolError, ValueError)


def test_error_code_status_and_close_code_have_distinct_names_and_code_is_an_alias() -> None:
    exc = RemoteProtocolError("slow", error_code="TIMEOUT", status=408)
    assert (exc.error_code, exc.status, exc.code) == ("TIMEOUT", 408, 408)
    old = RemoteProtocolError("slow", error_code="TIMEOUT", code=408)  # the deprecated argument
    assert (old.status, old.code) == (408, 408)
    assert RemoteProtocolError("x").status == 400

    error = ServerError(ErrorCode.NOT_FOUND, "Voice not found", 404)
    assert error.error_code is error.code is ErrorCode.NOT_FOUND and error.status == 404
    response = ServerErrorResponse(error)
    assert response.error_code is response.code is ErrorCode.NOT_FOUND

    for event in (TurnAborted(0, 1012, False, ""), ConnectionTerminated(1012),
                  Reconnecting(1, 1012, "", 0.0), ConnectionClosed(1012, "", True)):
        assert event.close_code == event.code == 1012, event
    assert ConnectionClosedError("x", close_code=1009).code == 1009
    assert ConnectionClosedError("x", code=1009).close_code == 1009  # the deprecated argument
