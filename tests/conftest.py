"""Suite-wide hypothesis settings: one profile for every property test.

By default (and in CI) the ``ci`` profile of ``tests/model/_profiles.py`` is loaded: property
tests are derandomized, so a run of the suite tests the same examples every time and a red run
is reproducible, never a draw. ``HYPOTHESIS_PROFILE=fuzz`` explores with random seeds and 50x the
stateful examples (see fuzz/README.md).
"""

from __future__ import annotations

from hypothesis import settings

from tests.model import _profiles

settings.load_profile(_profiles.PROFILE)
