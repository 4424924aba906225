"""Session configuration and the server's voice catalogue.

``Config`` (the first message's settings), ``VoiceSettings`` (per context), ``SettingsUpdate``
(``update_settings``), the accepted values (``LANGUAGES``, ``OUTPUT_FORMATS``,
``SAMPLE_RATES``...) and the catalogue of voices and models a server offers.
"""

from __future__ import annotations

from ._catalogue import *  # noqa: F403
from ._catalogue import __all__ as _catalogue_all
from ._config import *  # noqa: F403
from ._config import __all__ as _config_all

__all__ = [*_config_all, *_catalogue_all]
