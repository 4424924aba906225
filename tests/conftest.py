"""Suite-wide settings: one hypothesis profile for every property test (below), and no fallback
that would hide a lost wake-up in the blocking client (``_no_lost_wake_up_hidden``).

By default (and in CI) the ``ci`` profile of ``tests/model/_profiles.py`` is loaded: property
tests are derandomized, so a run of the suite tests the same examples every time and a red run
is reproducible, never a draw. ``HYPOTHESIS_PROFILE=fuzz`` explores with random seeds and 50x the
stateful examples (see fuzz/README.md).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import settings

from kugelwire.transports import sync
from tests.model import _profiles

settings.load_profile(_profiles.PROFILE)


@pytest.fixture(autouse=True)
def _no_lost_wake_up_hidden() -> Iterator[None]:
    """A blocking client's caller that waits in select on its socket is woken for every
    change; its fallback (it looks again after ``_READER_WAIT`` anyway) would turn a lost
    wake-up into a slow turn that passes. In the tests there is no fallback: a lost wake-up
    hangs the test, and the suite's timeout fails it."""
    saved, sync._READER_WAIT = sync._READER_WAIT, None
    try:
        yield
    finally:
        sync._READER_WAIT = saved
