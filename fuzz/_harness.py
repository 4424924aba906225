"""What every byte-level harness in fuzz/ shares: atheris with a seeded corpus, or a seeded
random-mutation loop when atheris is not installed (``python fuzz/fuzz_X.py [N]``)."""

from __future__ import annotations

import hashlib
import os
import pathlib
import random
import sys
import tempfile
from collections.abc import Callable


def corpus(name: str, seeds: list[bytes]) -> str:
    """The corpus directory (``$KUGELWIRE_FUZZ_CORPUS/<name>``, default under the system temp
    directory), seeded on first use."""
    root = os.environ.get("KUGELWIRE_FUZZ_CORPUS") or os.path.join(
        tempfile.gettempdir(), "kugelwire-fuzz"
    )
    path = pathlib.Path(root) / name
    path.mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        (path / hashlib.sha1(seed).hexdigest()).write_bytes(seed)
    return str(path)


def run(name: str, seeds: list[bytes], one_input: Callable[[bytes], None]) -> None:
    """Fuzz ``one_input`` coverage-guided (atheris), else with N seeded random mutations."""
    try:
        import atheris  # type: ignore[import-not-found]
    except ImportError:
        rng = random.Random(0)
        n = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
        for _ in range(n):
            seed = bytearray(rng.choice(seeds))
            for _ in range(rng.randint(0, 8)):
                seed[rng.randrange(len(seed))] = rng.randrange(256)
            one_input(bytes(seed))
        print(f"{n} random inputs, property holds")
        return
    atheris.instrument_all()  # coverage feedback from kugelwire, wsproto and h11
    atheris.Setup([*sys.argv, corpus(name, seeds)], one_input)
    atheris.Fuzz()
