"""Voices and models a server offers: what ``voice_id`` / ``model_id`` may name.

A :class:`VoiceCatalogue` is a table ``id -> Voice`` (engine voice, language, display name) that
a speech engine supplies, plus the table of model ids the server accepts. A strict server
session checks every ``voice_id`` and ``model_id`` a client sends against it; the same table
answers ``GET /v1/voices`` and ``GET /v1/models`` (:mod:`kugelwire.server`).

Pure data: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from ._errors import LocalProtocolError

__all__ = ["DEFAULT_MODEL", "MODELS", "Model", "Voice", "VoiceCatalogue"]


@dataclass(frozen=True, slots=True)
class Voice:
    """One voice of a catalogue.

    ``id`` is what clients send as ``voice_id`` (an integer, as the SDKs send); ``handle`` is an
    optional string alias clients may send instead. ``engine_voice`` is the engine's own name
    for it (an eSpeak voice, a tone pitch, ...); ``language`` its primary language (ISO 639-1),
    used when a request sets none.
    """

    id: int
    name: str
    language: str = "en"
    engine_voice: str = ""
    handle: str | None = None
    description: str = ""
    sex: str | None = None  # "male" | "female" | "neutral"
    age: str | None = None  # "young" | "middle_aged" | "old"
    category: str = "premade"
    supported_languages: tuple[str, ...] = ()
    sample_text: str = ""

    def __post_init__(self) -> None:
        if isinstance(self.id, bool) or not isinstance(self.id, int) or self.id < 0:
            raise LocalProtocolError(f"voice id must be a non-negative integer, not {self.id!r}")
        if self.handle is not None and (not self.handle or self.handle.isdigit()):
            raise LocalProtocolError(
                f"voice handle must be a non-numeric string, not {self.handle!r}"
            )

    @property
    def languages(self) -> tuple[str, ...]:
        return self.supported_languages or (self.language,)

    def to_dict(self) -> dict[str, Any]:
        """The JSON of ``GET /v1/voices/{id}`` (and of each entry of ``GET /v1/voices``)."""
        return {
            "id": self.id,
            "name": self.name,
            "description": self.description,
            "category": self.category,
            "sex": self.sex,
            "age": self.age,
            "quality": "mid",
            "supported_languages": list(self.languages),
            "sample_text": self.sample_text,
            "avatar_url": None,
            "sample_url": None,
            "is_public": True,
            "verified": True,
            "pending_verification": False,
            "generative_voice_description": "",
            "handle": self.handle,
            "engine_voice": self.engine_voice,
        }


@dataclass(frozen=True, slots=True)
class Model:
    """One model id the server accepts (``model_id``), as ``GET /v1/models`` lists it."""

    id: str
    name: str
    description: str = ""
    max_input_length: int = 10_000
    sample_rate: int = 24_000
    legacy: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "description": self.description,
            "parameters": "",
            "max_input_length": self.max_input_length,
            "sample_rate": self.sample_rate,
            "legacy": self.legacy,
        }


#: The model a request without ``model_id`` uses.
DEFAULT_MODEL = "kugel-3"

#: The model ids the hosted service accepts: the current models and the legacy ids it still
#: routes (billing keeps the id that was asked for). Anything else is a validation error.
MODELS: tuple[Model, ...] = (
    Model("kugel-3", "Kugel 3", "Current model"),
    Model("kugel-3.5", "Kugel 3.5", "Current model (the official SDKs' default)"),
    Model("kugel-2.5", "Kugel 2.5", "Legacy id", legacy=True),
    Model("kugel-2-turbo", "Kugel 2 Turbo", "Legacy id", legacy=True),
    Model("kugel-2", "Kugel 2", "Legacy id", legacy=True),
    Model("kugel-1-turbo", "Kugel 1 Turbo", "Legacy id", legacy=True),
    Model("kugel-1", "Kugel 1", "Legacy id", legacy=True),
)


@dataclass(frozen=True)
class VoiceCatalogue:
    """The voices (and models) a server offers; see the module docstring."""

    voices: tuple[Voice, ...]
    models: tuple[Model, ...] = MODELS
    _by_key: Mapping[int | str, Voice] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.voices:
            raise LocalProtocolError("a voice catalogue needs at least one voice")
        by_key: dict[int | str, Voice] = {}
        for voice in self.voices:
            for key in (voice.id, voice.handle):
                if key is None:
                    continue
                if key in by_key:
                    raise LocalProtocolError(f"duplicate voice id or handle {key!r}")
                by_key[key] = voice
        object.__setattr__(self, "_by_key", by_key)

    @classmethod
    def of(cls, voices: Iterable[Voice], models: Iterable[Model] = MODELS) -> VoiceCatalogue:
        return cls(tuple(voices), tuple(models))

    def __iter__(self) -> Iterator[Voice]:
        return iter(self.voices)

    def __len__(self) -> int:
        return len(self.voices)

    @property
    def default(self) -> Voice:
        """The first voice: what a lenient server speaks when a request names none."""
        return self.voices[0]

    def find(self, voice_id: int | str | None) -> Voice | None:
        """The voice a client's ``voice_id`` names (an id, a decimal string of one, or a
        handle), or None."""
        if voice_id is None or isinstance(voice_id, bool):
            return None
        voice = self._by_key.get(voice_id)
        if voice is None and isinstance(voice_id, str) and voice_id.strip().isdigit():
            voice = self._by_key.get(int(voice_id.strip()))
        return voice

    def model(self, model_id: str) -> Model | None:
        return next((m for m in self.models if m.id == model_id), None)

    def voices_json(
        self, *, language: str | None = None, limit: int = 20, offset: int = 0
    ) -> dict[str, Any]:
        """The JSON of ``GET /v1/voices`` (a page of the voices, optionally of one language)."""
        selected = [v for v in self.voices if language is None or language in v.languages]
        page = selected[offset : offset + limit]
        return {
            "voices": [v.to_dict() for v in page],
            "total": len(selected),
            "limit": limit,
            "offset": offset,
        }

    def models_json(self) -> dict[str, Any]:
        """The JSON of ``GET /v1/models``."""
        return {"models": [m.to_dict() for m in self.models]}
