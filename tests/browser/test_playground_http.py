"""The playground's HTTP side, without a browser: GET / only, strict CSP, no key in the page."""

from __future__ import annotations

import base64
import hashlib
import http.client
import re
from collections.abc import Iterator

import pytest

from kugelwire.server import playground_handler, run_in_thread
from kugelwire.server._playground import playground_page
from kugelwire.synth import ToneEngine

pytestmark = pytest.mark.timeout(20)

KEY = "pg-secret-key-3f9a"


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    with run_in_thread(engine=ToneEngine(), api_key=KEY) as server:
        yield server.port


def request(
    port: int, method: str, path: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def csp_directives(value: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for part in value.split(";"):
        name, *sources = part.split()
        out[name] = sources
    return out


def inline_hash(page: bytes, tag: str) -> str:
    match = re.search(rb"<" + tag.encode() + rb">(.*?)</" + tag.encode() + rb">", page, re.S)
    assert match is not None
    return "'sha256-" + base64.b64encode(hashlib.sha256(match.group(1)).digest()).decode() + "'"


def test_get_root_serves_the_page(port: int) -> None:
    status, headers, body = request(port, "GET", "/")
    assert status == 200
    assert headers["content-type"] == "text/html; charset=utf-8"
    assert int(headers["content-length"]) == len(body) > 10_000
    assert body == playground_page()
    assert body.startswith(b"<!DOCTYPE html>")
    assert b'id="api-key" type="password"' in body
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["referrer-policy"] == "no-referrer"


def test_csp_is_strict_and_matches_the_inline_code(port: int) -> None:
    _, headers, body = request(port, "GET", "/")
    csp = csp_directives(headers["content-security-policy"])
    assert csp["default-src"] == ["'none'"]
    assert csp["connect-src"] == ["'self'"]
    assert csp["script-src"] == [inline_hash(body, "script")]
    assert csp["style-src"] == [inline_hash(body, "style")]
    assert csp["frame-ancestors"] == ["'none'"]
    assert csp["base-uri"] == ["'none'"]
    text = headers["content-security-policy"]
    assert "unsafe-inline" not in text and "unsafe-eval" not in text and "*" not in text
    # nothing is loaded from elsewhere: no external scripts, styles, or fonts
    assert not re.search(rb"<script[^>]*\bsrc=|<link[^>]*stylesheet|https?://", body)


def test_the_page_never_contains_the_api_key(port: int) -> None:
    for target in ("/", f"/?api_key={KEY}"):
        _, _, body = request(port, "GET", target, {"Authorization": f"Bearer {KEY}"})
        assert KEY.encode() not in body
    # the page sends the key it was given, URL-encoded, in the upgrade's query
    assert b'"?api_key=" + encodeURIComponent(key)' in playground_page()


@pytest.mark.parametrize(
    "path",
    ["/index.html", "/playground.html", "/static/", "/static/playground.html", "//", "/ws",
     "/favicon.ico", "/..%2fplayground.html"],
)
def test_other_paths_are_404(port: int, path: str) -> None:
    status, _, body = request(port, "GET", path)
    assert status == 404
    assert b"<html" not in body.lower()


def test_websocket_paths_without_upgrade_are_404(port: int) -> None:
    status, _, _ = request(port, "GET", "/ws/tts/stream")
    assert status == 404


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS"])
def test_other_methods_are_405(port: int, method: str) -> None:
    status, headers, body = request(port, method, "/")
    assert status == 405
    assert headers["allow"] == "GET, HEAD"
    assert body == b""


def test_head_answers_the_length_without_a_body(port: int) -> None:
    status, headers, body = request(port, "HEAD", "/")
    assert status == 200
    assert body == b""
    assert headers["content-length"] == str(len(playground_page()))


def test_handler_answers_only_the_root() -> None:
    response = playground_handler("/")
    assert response is not None and response[0] == 200
    assert playground_handler("/index.html") is None
    assert playground_handler("") is None


def test_own_http_handler_replaces_the_playground() -> None:
    with run_in_thread(engine=ToneEngine(), http_handler=lambda path: None) as server:
        status, _, _ = request(server.port, "GET", "/")
    assert status == 404


def test_trio_runner_serves_the_page_too() -> None:
    trio = pytest.importorskip("trio")
    from kugelwire.server import trio_serve

    async def main() -> bytes:
        with trio.fail_after(10):
            async with trio_serve(engine=ToneEngine(), api_key=KEY) as server:
                stream = await trio.open_tcp_stream("127.0.0.1", server.port)
                async with stream:
                    await stream.send_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
                    data = b""
                    while chunk := await stream.receive_some(65536):
                        data += chunk
                return data

    response = trio.run(main)
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b"content-security-policy: default-src 'none'" in head.lower()
    assert body == playground_page()
