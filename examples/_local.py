"""Shared by the examples: where to connect (``--url``), or a local server in this process.

Every example runs as it is (``python examples/stream_turn_to_wav.py``): without ``--url`` it
starts kugelwire's local server on a free loopback port for the length of the run, so it needs
no account and no network. With ``--url wss://api.kugelaudio.com --api-key ...`` (or
``KUGELAUDIO_API_KEY``) it talks to the hosted service instead.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Iterator


def arguments(description: str, out: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--url", default=None,
                        help="server base URL (default: a local server in this process)")
    parser.add_argument("--api-key", default=os.environ.get("KUGELAUDIO_API_KEY"),
                        help="API key (or KUGELAUDIO_API_KEY)")
    parser.add_argument("--voice", type=int, default=1, help="voice id (1)")
    if out is not None:
        parser.add_argument("--out", default=out, help=f"WAV file to write ({out})")
    return parser


@contextlib.contextmanager
def server_url(args: argparse.Namespace) -> Iterator[str]:
    """``args.url``, or the URL of a local server running for the ``with`` block."""
    if args.url is not None:
        yield args.url
        return
    from kugelwire.server import run_in_thread
    from kugelwire.synth import ToneEngine

    try:
        from kugelwire.synth import EspeakEngine

        engine = EspeakEngine()
    except ImportError:  # without the voice extra: one tone per word
        engine = ToneEngine()
    with run_in_thread(engine=engine) as server:
        print(f"local server at {server.url} with the {type(engine).__name__}")
        yield server.url
