"""A dependency-free progress bar on stderr.

On a terminal it redraws one line in place; elsewhere (CI logs, DVC piping
output to a file) it prints only the final line of each bar so logs stay short.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


class ProgressBar:
    """``update(done, **fields)`` redraws ``label [#####.....] done/total fields``; ``close()`` ends the line."""

    def __init__(self, label: str, total: int, unit: str = "", stream: TextIO | None = None,
                 width: int = 24, min_interval: float = 0.1) -> None:
        self.label, self.total, self.unit, self.width = label, max(int(total), 1), unit, width
        self.stream = stream if stream is not None else sys.stderr
        self.interactive = bool(getattr(self.stream, "isatty", lambda: False)())
        self.min_interval = min_interval
        self.start = time.perf_counter()
        self._last_draw = 0.0
        self._line = ""

    def _render(self, done: int, fields: dict) -> str:
        filled = int(self.width * min(done, self.total) / self.total)
        bar = "#" * filled + "." * (self.width - filled)
        elapsed = time.perf_counter() - self.start
        extra = " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items())
        return f"{self.label} [{bar}] {done}/{self.total}{self.unit} {elapsed:5.1f}s {extra}".rstrip()

    def update(self, done: int, **fields) -> None:
        self._line = self._render(done, fields)
        now = time.perf_counter()
        if self.interactive and (now - self._last_draw >= self.min_interval or done >= self.total):
            self.stream.write("\r\033[K" + self._line)
            self.stream.flush()
            self._last_draw = now

    def close(self, **fields) -> None:
        if fields:
            self._line = self._render(self.total, fields)
        self.stream.write(("\r\033[K" if self.interactive else "") + self._line + "\n")
        self.stream.flush()
