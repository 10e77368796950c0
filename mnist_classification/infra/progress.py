"""Progress bars on stderr, drawn by tqdm (installed with DVC).

On a terminal a bar redraws in place; elsewhere (CI logs, `dvc queue logs`, DVC
piping output to a file) it prints nothing until it is closed, then one line, so
logs stay short.
"""

from __future__ import annotations

import math
import sys
from typing import TextIO

from tqdm import tqdm


class _Tqdm(tqdm):
    """tqdm whose destructor tolerates a bar left half-built by Ctrl-C or SIGTERM inside ``__init__``
    (tqdm's own would print an AttributeError traceback after the stage's one-line message)."""

    def __del__(self) -> None:
        try:
            super().__del__()
        except AttributeError:
            pass


class ProgressBar:
    """``update(done, **fields)`` moves the bar to ``done`` of ``total`` and shows ``fields`` beside it.

    ``close(**fields)`` prints the final line (also when not on a terminal);
    ``clear()`` erases the bar instead, for callers that print their own summary.
    ``total`` may be 0 while unknown (a download before its headers arrive) and set later.
    ``unit`` names what is counted; ``unit="B"`` shows byte counts as kB/MB.
    """

    def __init__(self, label: str, total: int, stream: TextIO | None = None, unit: str = "it") -> None:
        stream = stream if stream is not None else sys.stderr
        self.interactive = bool(getattr(stream, "isatty", lambda: False)())
        self._bar = _Tqdm(total=int(total) or None, desc=label, unit=unit, unit_scale=unit == "B", file=stream,
                         ascii=not self.interactive, dynamic_ncols=True, mininterval=0.1,
                         delay=0 if self.interactive else math.inf)

    @property
    def total(self) -> int:
        return self._bar.total or 0

    @total.setter
    def total(self, value: int) -> None:
        self._bar.total = int(value) or None

    def update(self, done: int, **fields) -> None:
        if fields:
            self._bar.set_postfix(_format(fields), refresh=False)
        self._bar.update(done - self._bar.n)

    def close(self, **fields) -> None:
        if self._bar.total:
            self._bar.n = self._bar.total
        if fields:
            self._bar.set_postfix(_format(fields), refresh=False)
        self._bar.delay = 0  # logs: the one line this bar prints
        self._bar.close()

    def clear(self) -> None:
        self._bar.leave = False
        self._bar.close()


def _format(fields: dict) -> dict[str, str]:
    return {key: f"{value:.4f}" if isinstance(value, float) else str(value) for key, value in fields.items()}
