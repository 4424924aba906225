"""Debian's nginx on loopback, TLS-terminating in front of ``kugelwire serve --workers 2``.

The nginx configuration is the one printed in ``docs/deploy.md`` (read from the page; only
ports, file paths and the certificate are replaced). Certificates come from a throw-away CA made
with ``openssl`` in ``tmp_path``. kugelwire's clients and the official SDK talk ``wss://``
through nginx. Skipped (with the reason) where nginx or openssl is not installed; ``.ci/run``
installs both (``.ci/install-nginx``).
"""

from __future__ import annotations

import asyncio
import re
import shutil
import socket
import ssl
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kugelwire.errors import AuthenticationError, ConnectionFailed
from kugelwire.protocol._events import AudioChunk, Interrupted, RequestFinal, TurnClosed, TurnFinal
from kugelwire.transports import asyncio as kw_asyncio
from kugelwire.transports import sync as kw_sync

from ..ops._prom import get, parse
from ..ops._supervisor import KEY, Supervisor

SHUTDOWN_TIMEOUT = 10.0  # serve's default shutdown_timeout

ROOT = Path(__file__).resolve().parents[2]
NGINX = shutil.which("nginx") or next(
    (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).exists()), None
)
OPENSSL = shutil.which("openssl")

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.skipif(NGINX is None, reason="nginx is not installed (apt-get install nginx; "
                       ".ci/install-nginx does it in CI)"),
    pytest.mark.skipif(OPENSSL is None, reason="openssl is not installed (apt-get install "
                       "openssl)"),
    pytest.mark.skipif(sys.platform == "win32", reason="POSIX only"),
]


def _openssl(*args: str, cwd: Path) -> None:
    assert OPENSSL is not None
    subprocess.run([OPENSSL, *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_certificates(d: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 / localhost signed by it."""
    (d / "san.ext").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n"
        "keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
    )
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
             "ca.pem", "-days", "2", "-subj", "/CN=kugelwire test CA", cwd=d)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out",
             "server.csr", "-subj", "/CN=localhost", cwd=d)
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", "server.crt", "-days", "2", "-extfile", "san.ext", cwd=d)
    return d / "ca.pem", d / "server.crt", d / "server.key"


def documented_config() -> str:
    page = (ROOT / "docs" / "deploy.md").read_text(encoding="utf-8")
    m = re.search(r"```nginx[^\n]*\n(.*?)```", page, re.S)
    assert m, "docs/deploy.md has no nginx block"
    return m.group(1)


def _replace(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, f"docs/deploy.md: expected {old!r} exactly once"
    return text.replace(old, new)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Proxy:
    def __init__(self, tmp: Path, upstream_port: int) -> None:
        self.dir = tmp
        self.ca, crt, key = make_certificates(tmp)
        self.port = _free_port()
        self.access_log = tmp / "access.log"
        site = documented_config()
        site = _replace(site, "server 127.0.0.1:8765;", f"server 127.0.0.1:{upstream_port};")
        site = _replace(site, "listen 443 ssl;", f"listen 127.0.0.1:{self.port} ssl;")
        site = _replace(site, "/etc/ssl/kugelwire/server.crt", str(crt))
        site = _replace(site, "/etc/ssl/kugelwire/server.key", str(key))
        site = _replace(site, "/var/log/nginx/kugelwire.access.log", str(self.access_log))
        (tmp / "kugelwire.conf").write_text(site)
        (tmp / "nginx.conf").write_text(textwrap.dedent(f"""\
            daemon off;
            worker_processes 1;
            pid {tmp}/nginx.pid;
            error_log {tmp}/error.log info;
            events {{ worker_connections 2048; }}
            http {{
                access_log off;
                client_body_temp_path {tmp}/client_body;
                proxy_temp_path {tmp}/proxy;
                include {tmp}/kugelwire.conf;
            }}
            """))
        assert NGINX is not None
        check = subprocess.run([NGINX, "-t", "-p", str(tmp), "-e", str(tmp / "early.log"),
                                "-c", str(tmp / "nginx.conf")], capture_output=True, text=True,
                               timeout=30)
        assert check.returncode == 0, check.stderr
        self.proc = subprocess.Popen([NGINX, "-p", str(tmp), "-e", str(tmp / "early.log"),
                                      "-c", str(tmp / "nginx.conf")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                assert self.proc.poll() is None, self.proc.stderr and self.proc.stderr.read()
                assert time.monotonic() < deadline, "nginx did not start listening"
                time.sleep(0.05)
        self.url = f"wss://127.0.0.1:{self.port}"
        self.ssl = ssl.create_default_context(cafile=str(self.ca))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Supervisor, Proxy]]:
    sup = Supervisor("--workers", "2", "--metrics")
    try:
        proxy = Proxy(tmp_path_factory.mktemp("nginx"), int(sup.url.rsplit(":", 1)[1]))
        try:
            yield sup, proxy
        finally:
            proxy.stop()
    finally:
        sup.stop()


LONG = " ".join(f"This is sentence number {i}." for i in range(40))


def test_kugelwire_clients_over_wss(stack: tuple[Supervisor, Proxy]) -> None:
    _, proxy = stack

    async def main() -> None:
        async with await kw_asyncio.connect_stream(
            proxy.url, api_key=KEY, ssl=proxy.ssl, voice_id=1
        ) as stream:
            first = await stream.send_text("Hello ")
            await stream.send_text("through nginx.")
            await stream.flush()
            second = await stream.send_text("A second turn, pipelined.", flush=True)
            for turn in (first, second):
                assert turn is not None
                events = await turn.collect()
                assert isinstance(events[-1], TurnClosed)
                assert any(isinstance(e, TurnFinal) for e in events)
                assert any(isinstance(e, AudioChunk) for e in events)
            # barge-in through the proxy
            third = await stream.send_text(LONG, flush=True)
            assert third is not None
            async for event in third:
                if isinstance(event, AudioChunk):
                    break
            await stream.cancel()
            assert isinstance((await third.collect())[-1], Interrupted)
        async with await kw_asyncio.connect_tts(proxy.url, api_key=KEY, ssl=proxy.ssl) as tts:
            events = await tts.synthesize("A one-shot request.", voice_id=2).collect()
            assert isinstance(events[-1], RequestFinal)

    asyncio.run(asyncio.wait_for(main(), 60))

    # the blocking client, Authorization: Bearer, /ws/tts/multi
    with kw_sync.connect_multi(proxy.url, api_key=KEY, auth="bearer", ssl=proxy.ssl) as multi:
        a = multi.create_context("a", voice_id=1)
        b = multi.create_context("b", voice_id=2)
        a.send_text("Context a speaks.", flush=True)
        b.send_text("Context b speaks.", flush=True)
        for ctx in (a, b):
            events = list(ctx.until_final())
            assert isinstance(events[-1], TurnFinal)
            assert any(isinstance(e, AudioChunk) for e in events)


def test_bad_key_and_plain_ws_are_refused(stack: tuple[Supervisor, Proxy]) -> None:
    _, proxy = stack
    with pytest.raises(AuthenticationError):
        kw_sync.connect_stream(proxy.url, api_key="wrong", ssl=proxy.ssl, voice_id=1)
    with pytest.raises(ConnectionFailed) as info:  # no CA given: the test CA is not trusted
        kw_sync.connect_stream(proxy.url, api_key=KEY, voice_id=1, connect_timeout=5)
    assert isinstance(info.value.__cause__, ssl.SSLCertVerificationError), info.value.__cause__


SDK_SCRIPT = """
import asyncio, os, sys
import kugelaudio

async def main():
    client = kugelaudio.KugelAudio(api_key=os.environ["KW_KEY"], api_url=os.environ["KW_URL"],
                                   telemetry=False)
    try:
        async with client.tts.streaming_session(voice_id=1, language="en") as s:
            chunks = []
            for tok in ["Hello", " from", " the", " official", " SDK."]:
                chunks += [c async for c in s.send(tok)]
            chunks += [c async for c in s.flush()]
            assert chunks and s.last_final and s.last_final["final"] is True
        items = [x async for x in client.tts.stream_async(
            "One request through nginx.", voice_id=2, language="en")]
        audio = [x for x in items if isinstance(x, kugelaudio.AudioChunk)]
        assert audio and items[-1]["final"] is True
        print("SDK-OK", len(chunks), len(audio), flush=True)
    finally:
        await client.aclose()

asyncio.run(asyncio.wait_for(main(), 60))
"""


def test_official_sdk_over_wss(stack: tuple[Supervisor, Proxy]) -> None:
    pytest.importorskip("kugelaudio")
    _, proxy = stack
    env = {
        "PATH": "/usr/bin:/bin",
        "KW_KEY": KEY,
        "KW_URL": f"https://127.0.0.1:{proxy.port}",
        "SSL_CERT_FILE": str(proxy.ca),  # how a websockets-based client trusts a private CA
        "HOME": str(proxy.dir),
    }
    proc = subprocess.run([sys.executable, "-c", SDK_SCRIPT], env=env, capture_output=True,
                          text=True, timeout=90)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SDK-OK" in proc.stdout


def test_metrics_through_the_proxy_and_no_key_in_logs(stack: tuple[Supervisor, Proxy]) -> None:
    sup, proxy = stack
    with kw_sync.connect_stream(proxy.url, api_key=KEY, ssl=proxy.ssl, voice_id=1) as stream:
        turn = stream.send_text("Counted.", flush=True)
        assert turn is not None
        turn.collect()
    time.sleep(1.5)  # the other worker's share is published every second
    req = urllib.request.urlopen(f"https://127.0.0.1:{proxy.port}/metrics", context=proxy.ssl,
                                 timeout=10)
    samples: Any = parse(req.read().decode())
    assert get(samples, "kugelwire_turns_total", endpoint="stream", outcome="completed") >= 1
    assert get(samples, "kugelwire_sessions_total", endpoint="stream") >= 1
    log = proxy.access_log.read_text()
    assert "/ws/tts/stream" in log and " 101 " in log
    assert KEY not in log, "the API key leaked into nginx's access log"
    assert KEY not in "\n".join(sup.lines)


def test_the_documented_client_example(
    stack: tuple[Supervisor, Proxy], capsys: pytest.CaptureFixture[str]
) -> None:
    """The ``wss://`` example of docs/deploy.md, pointed at this proxy and its CA."""
    from ..docs._blocks import blocks

    _, proxy = stack
    (block,) = [b for b in blocks("deploy.md", "python")]
    source = _replace(block.source, '"wss://tts.example.com"', repr(proxy.url))
    source = _replace(source, '"/etc/ssl/kugelwire/ca.pem"', repr(str(proxy.ca)))
    source = _replace(source, '"my-key"', repr(KEY))
    exec(compile(source, block.id, "exec"), {"__name__": "__main__"})
    assert re.search(r"^[1-9]\d* audio chunks$", capsys.readouterr().out, re.M)


def test_drain_close_code_reaches_the_client_through_nginx(tmp_path: Path) -> None:
    """SIGTERM to the supervisor: an idle ``wss://`` client gets close code 1012 through nginx
    (the supervisor exits 0), so clients know to reconnect."""
    import signal

    sup = Supervisor("--workers", "2")
    proxy = Proxy(tmp_path, int(sup.url.rsplit(":", 1)[1]))
    try:
        raw = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
        sock = proxy.ssl.wrap_socket(raw, server_hostname="127.0.0.1")
        sock.sendall(
            f"GET /ws/tts/stream?api_key={KEY} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n".encode()
        )
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(4096)
        head, _, data = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        sup.proc.send_signal(signal.SIGTERM)
        while len(data) < 4:
            chunk = sock.recv(4096)
            assert chunk, "closed without a close frame"
            data += chunk
        assert data[0] == 0x88, data  # a close frame...
        assert int.from_bytes(data[2:4], "big") == 1012  # ...with "service restart"
        sock.close()
        assert sup.proc.wait(SHUTDOWN_TIMEOUT + 5) == 0
    finally:
        proxy.stop()
        sup.stop()
