"""``kugelwire serve --workers N`` in a subprocess, for the ops and deploy tests."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

KEY = "sk-workers-key"


class Supervisor:
    """``kugelwire serve --workers N`` in a subprocess, its output read on a thread."""

    def __init__(self, *args: str, key: str | None = KEY) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("KUGELWIRE_API_KEY", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kugelwire", "serve", "--port", "0", "--engine", "tone",
             *(("--api-key", key) if key is not None else ()), *args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
        )
        self.lines: list[str] = []
        self._cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()
        line = self.wait_for(r"kugelwire: serving ws://")
        m = re.search(r"(ws://[\d.]+:\d+) .*\(pids ([\d ]+)\)", line)
        assert m, line
        self.url = m.group(1)
        self.pids = [int(p) for p in m.group(2).split()]

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()

    def wait_for(self, pattern: str, timeout: float = 60.0, start: int = 0) -> str:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines[start:]:
                    if re.search(pattern, line):
                        return line
                left = deadline - time.monotonic()
                assert left > 0, f"no line matching {pattern!r} in {self.lines}"
                self._cond.wait(left)

    def children(self) -> list[int]:
        out = []
        for status in Path("/proc").glob("[0-9]*/status"):
            try:
                text = status.read_text()
            except OSError:
                continue
            if re.search(rf"^PPid:\s+{self.proc.pid}$", text, re.M):
                out.append(int(status.parent.name))
        return sorted(out)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
