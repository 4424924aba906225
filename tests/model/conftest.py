"""Loads the hypothesis profile named by ``HYPOTHESIS_PROFILE`` (see ``_profiles.py``)."""

from __future__ import annotations

from tests.model import _profiles

PROFILE = _profiles.PROFILE
