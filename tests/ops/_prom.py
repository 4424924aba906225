"""A strict little parser of the Prometheus text format for the ops tests."""

from __future__ import annotations

import re
import urllib.request

_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(,|$)')

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    out: Samples = {}
    typed: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            typed.add(line.split()[2])
            continue
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        assert m, f"bad sample line: {line!r}"
        name, _, body, value = m.groups()
        labels = []
        pos = 0
        while body and pos < len(body):
            lm = _LABEL.match(body, pos)
            assert lm, f"bad labels: {line!r}"
            labels.append((lm.group(1), lm.group(2)))
            pos = lm.end()
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        assert name in typed or base in typed, f"sample without # TYPE: {name}"
        key = (name, frozenset(labels))
        assert key not in out, f"duplicate sample {line!r}"
        out[key] = float(value.replace("+Inf", "inf"))
    return out


def get(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def scrape(base_url: str, timeout: float = 10.0) -> Samples:
    url = "http" + base_url[2:] + "/metrics" if base_url.startswith("ws") else base_url
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        assert resp.status == 200
        assert resp.headers["content-type"].startswith("text/plain; version=0.0.4")
        return parse(resp.read().decode("utf-8"))
