"""The browser playground: one self-contained HTML page served at ``GET /``.

:func:`playground_handler` is an :data:`~kugelwire.protocol.ws.HttpHandler`: the core
(:class:`~kugelwire.protocol.ws.ServerConnection`) hands it the path of every plain
(non-upgrade) ``GET``/``HEAD`` and answers 405 to other methods and 404 when the handler returns
None. The page is answered for ``/`` only: no other file, no directory listing. It never contains
the server's API key (the handler does not know it); the user types the key into the page, which
sends it as the ``api_key`` query parameter of the WebSocket upgrade.

The page's inline ``<script>`` and ``<style>`` are allowed by their SHA-256 hashes in a strict
Content-Security-Policy (nothing external, WebSocket connections to the page's own origin only).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Callable
from functools import lru_cache
from html import escape
from importlib import resources
from typing import TYPE_CHECKING

from ..lint import Linter

if TYPE_CHECKING:
    from ._faults import FaultPlan

__all__ = [
    "FINDINGS_PATH",
    "PLAYGROUND_PATH",
    "lint_handler",
    "playground_handler",
    "playground_handler_for",
    "playground_headers",
    "playground_page",
]

#: The only path the playground answers.
PLAYGROUND_PATH = "/"
#: Where :func:`lint_handler` answers the rule checks' latest findings (JSON).
FINDINGS_PATH = "/lint/findings"
#: The most findings one answer carries (the newest).
FINDINGS_PAGE = 200

_RESOURCE = "playground.html"
_INLINE = re.compile(rb"<(script|style)>(.*?)</\1>", re.DOTALL)


@lru_cache(maxsize=1)
def playground_page() -> bytes:
    """The page's bytes (UTF-8), loaded once from the package data."""
    return resources.files("kugelwire.server").joinpath("static").joinpath(_RESOURCE).read_bytes()


def _hashes(page: bytes, tag: bytes) -> str:
    """CSP source expressions for every inline ``<tag>`` element of ``page``."""
    out = []
    for name, body in _INLINE.findall(page):
        if name == tag:
            digest = base64.b64encode(hashlib.sha256(body).digest()).decode("ascii")
            out.append(f"'sha256-{digest}'")
    return " ".join(out) or "'none'"


def _csp(page: bytes) -> str:
    return "; ".join(
        [
            "default-src 'none'",
            f"script-src {_hashes(page, b'script')}",
            f"style-src {_hashes(page, b'style')}",
            # CSP Level 3: 'self' covers ws:/wss: to the page's own host and port
            "connect-src 'self'",
            "img-src data:",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        ]
    )


@lru_cache(maxsize=1)
def playground_headers() -> tuple[tuple[bytes, bytes], ...]:
    """Response headers of the page (the core adds ``content-length`` and ``connection``)."""
    return (
        (b"content-type", b"text/html; charset=utf-8"),
        (b"content-security-policy", _csp(playground_page()).encode("ascii")),
        (b"cache-control", b"no-store"),
        (b"x-content-type-options", b"nosniff"),
        (b"referrer-policy", b"no-referrer"),
        (b"x-frame-options", b"DENY"),
    )


def playground_handler(path: str) -> tuple[int, list[tuple[bytes, bytes]], bytes] | None:
    """``(200, headers, page)`` for ``/``; None (404) for every other path."""
    if path != PLAYGROUND_PATH:
        return None
    return 200, list(playground_headers()), playground_page()


_Handler = Callable[[str], "tuple[int, list[tuple[bytes, bytes]], bytes] | None"]


def lint_handler(linter: Linter, fallback: _Handler) -> _Handler:
    """An HTTP handler answering ``GET /lint/findings`` from ``linter`` and everything else
    with ``fallback``.

    The answer is ``{"total": N, "open_connections": M, "findings": [...]}``: ``total`` counts
    every finding ever made, ``findings`` are the newest (at most 200), each
    :meth:`~kugelwire.lint.Finding.to_dict` plus ``n``, its 1-based number in ``total``. The
    playground polls it to show the findings of its own turns.
    """

    def handler(path: str) -> tuple[int, list[tuple[bytes, bytes]], bytes] | None:
        if path != FINDINGS_PATH:
            return fallback(path)
        total, findings = linter.findings_since(0)
        findings = findings[-FINDINGS_PAGE:]
        first = total - len(findings) + 1
        body = {
            "total": total,
            "open_connections": linter.open_connections,
            "findings": [{"n": first + i, **f.to_dict()} for i, f in enumerate(findings)],
        }
        headers = [
            (b"content-type", b"application/json"),
            (b"cache-control", b"no-store"),
            (b"x-content-type-options", b"nosniff"),
        ]
        return 200, headers, json.dumps(body).encode("utf-8")

    return handler


def playground_handler_for(
    faults: FaultPlan,
) -> Callable[[str], tuple[int, list[tuple[bytes, bytes]], bytes] | None]:
    """:func:`playground_handler` whose page shows the active faults in a banner."""
    items = "".join(
        f"<li><code>{escape(f.spec or f.kind)}</code>: {escape(f.describe())}</li>"
        for f in faults
    )
    banner = (
        '<aside id="faults" class="panel faults" role="alert"><strong>Fault injection '
        "active</strong>: this server misbehaves on purpose.<ul>" + items + "</ul></aside>"
    )
    # Plain markup (no script or style element), so the page's CSP hashes stay valid.
    page = playground_page().replace(b"<main>", b"<main>\n" + banner.encode("utf-8"), 1)

    def handler(path: str) -> tuple[int, list[tuple[bytes, bytes]], bytes] | None:
        if path != PLAYGROUND_PATH:
            return None
        return 200, list(playground_headers()), page

    return handler
