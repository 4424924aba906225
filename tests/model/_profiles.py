"""Hypothesis profiles for the model tests, chosen by ``HYPOTHESIS_PROFILE`` (default ``ci``).

* ``ci`` — derandomized, bounded: the stateful machines run 2,400 examples in total (see the
  ``max_examples`` of each machine scaled by :data:`SCALE`), well under 3 minutes on 2 cores.
* ``fuzz`` — at least 100,000 examples in total, random seeds: ``HYPOTHESIS_PROFILE=fuzz
  pytest tests/model`` (see fuzz/README.md).
* ``mutmut`` — used automatically under mutation testing (``MUTANT_UNDER_TEST`` is set): few
  examples, so each mutant's run stays short.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

_common = {
    "deadline": None,
    # differing_executors: mutmut runs the suite twice in one process (a @given method of a
    # class then looks like one run by two executors)
    "suppress_health_check": [
        HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.differing_executors
    ],
}
settings.register_profile("ci", derandomize=True, print_blob=True, **_common)  # type: ignore[arg-type]
settings.register_profile("fuzz", derandomize=False, **_common)  # type: ignore[arg-type]
settings.register_profile("mutmut", derandomize=True, **_common)  # type: ignore[arg-type]

if os.environ.get("MUTANT_UNDER_TEST"):
    PROFILE = "mutmut"
else:
    PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
if PROFILE not in ("ci", "fuzz", "mutmut"):
    raise ValueError(f"HYPOTHESIS_PROFILE={PROFILE!r}: expected ci, fuzz or mutmut")
# tests/conftest.py loads the profile for the whole suite; the machines also derive from it
# (machine_settings).

#: Examples per machine for each profile (the machines take ``examples(name)``).
EXAMPLES = {"ci": 1.0, "fuzz": 50.0, "mutmut": 0.05}
SCALE = EXAMPLES.get(PROFILE, 1.0)


def examples(base: int) -> int:
    """``base`` examples under ``ci``, 50x under ``fuzz``, a twentieth under ``mutmut``."""
    return max(10, int(base * SCALE))


def machine_settings(base: int, *, steps: int = 40) -> settings:
    """Settings of a state machine: the selected profile, ``examples(base)`` examples."""
    return settings(
        settings.get_profile(PROFILE), max_examples=examples(base), stateful_step_count=steps
    )


#: The models' network may hold an ``interrupted`` back for any time while the clock runs. A
#: cancel unacknowledged past ``cancel_timeout`` is abandoned and later output flows to later
#: turns (docs/index.md, known races), so the cancelled turn's late output may then be handed
#: to a later turn, which the models' strict attribution checks forbid: they keep the ack
#: in play. The timeout itself is covered by tests/protocol and tests/faults.
ACK_ALWAYS_COMES = 1e9
