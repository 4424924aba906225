"""How ``<spell>`` spans name special characters, per language (protocol.md#spell).

Letters and digits are not listed: the engine lets the speech engine say them as single
characters. ``SPACE`` is what whitespace inside a spelled span is read as. A language missing
here has no names of its own: its characters are all left to the speech engine.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Final

__all__ = ["NAMES", "SPACE", "names_for"]

_EMPTY: Final[MappingProxyType[str, str]] = MappingProxyType({})

#: Special-character names by primary language subtag. en/de/fr/es follow protocol.md#spell exactly.
NAMES: Final[MappingProxyType[str, MappingProxyType[str, str]]] = MappingProxyType(
    {
        lang: MappingProxyType(table)
        for lang, table in {
            "en": {"@": "at", ".": "dot", "-": "dash", "_": "underscore"},
            "de": {"@": "ät", ".": "Punkt", "-": "Strich", "_": "Unterstrich"},
            "fr": {"@": "arobase", ".": "point", "-": "tiret", "_": "underscore"},
            "es": {"@": "arroba", ".": "punto", "-": "guión", "_": "guión bajo"},
            "it": {"@": "chiocciola", ".": "punto", "-": "trattino", "_": "trattino basso"},
            "pt": {"@": "arroba", ".": "ponto", "-": "hífen", "_": "sublinhado"},
            "nl": {"@": "apenstaartje", ".": "punt", "-": "streepje", "_": "liggend streepje"},
        }.items()
    }
)

#: The word for whitespace inside a spelled span, by primary language subtag.
SPACE: Final[MappingProxyType[str, str]] = MappingProxyType(
    {
        "en": "space",
        "de": "Leerzeichen",
        "fr": "espace",
        "es": "espacio",
        "it": "spazio",
        "pt": "espaço",
        "nl": "spatie",
    }
)


def names_for(language: str) -> tuple[MappingProxyType[str, str], str | None]:
    """The character names and the word for a space in ``language`` (a BCP-47-ish tag)."""
    primary = language.strip().lower().replace("_", "-").split("-", 1)[0]
    return NAMES.get(primary, _EMPTY), SPACE.get(primary)
