"""A dependency-free progress bar on stderr.

On a terminal it redraws one line in place; elsewhere (CI logs, DVC piping
output to a file) it prints only the final line of each bar so logs stay short.
"""

from __future__ import annotations

import sys
import time
from typing import Callable, TextIO


class ProgressBar:
    """``update(done, **fields)`` redraws ``label [#####.....] done/total fields``.

    ``close(**fields)`` prints the final line (also when not on a terminal);
    ``clear()`` erases the bar instead, for callers that print their own summary.
    ``total`` may be 0 while unknown (a download before its headers arrive) and set later.
    """

    def __init__(self, label: str, total: int, stream: TextIO | None = None, width: int = 24,
                 format_count: Callable[[int], str] = str, min_interval: float = 0.1) -> None:
        self.label, self.total, self.width, self.format_count = label, int(total), width, format_count
        self.stream = stream if stream is not None else sys.stderr
        self.interactive = bool(getattr(self.stream, "isatty", lambda: False)())
        self.min_interval = min_interval
        self.start = time.perf_counter()
        self._last_draw = 0.0
        self._done = 0
        self._fields: dict = {}

    def _render(self) -> str:
        if self.total > 0:
            filled = int(self.width * min(self._done, self.total) / self.total)
            bar = f"[{'#' * filled}{'.' * (self.width - filled)}] "
            count = f"{self.format_count(self._done)}/{self.format_count(self.total)}"
        else:
            bar, count = "", self.format_count(self._done)
        elapsed = time.perf_counter() - self.start
        extra = " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in self._fields.items())
        return f"{self.label} {bar}{count} {elapsed:.1f}s {extra}".rstrip()

    def update(self, done: int, **fields) -> None:
        self._done, self._fields = done, fields or self._fields
        now = time.perf_counter()
        finished = self.total > 0 and done >= self.total
        if self.interactive and (now - self._last_draw >= self.min_interval or finished):
            self.stream.write("\r\033[K" + self._render())
            self.stream.flush()
            self._last_draw = now

    def close(self, **fields) -> None:
        if self.total > 0:
            self._done = self.total
        self._fields = fields or self._fields
        self.stream.write(("\r\033[K" if self.interactive else "") + self._render() + "\n")
        self.stream.flush()

    def clear(self) -> None:
        if self.interactive:
            self.stream.write("\r\033[K")
            self.stream.flush()
