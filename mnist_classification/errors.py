"""The project's own error type and the wrapper that turns it into a clean exit."""

from __future__ import annotations

import signal
import sys
from typing import Callable


class PipelineError(Exception):
    """A user-facing error: bad input, bad params, a failed download.

    The message must say what was wrong, where (file or params key) and what to
    do. Stages print it without a traceback and exit with status 2.
    """


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt


def run_cli(main: Callable[[], object], name: str) -> None:
    """Run ``main`` and exit: 0 on success, 2 on PipelineError, 130 on Ctrl-C/SIGTERM.

    SIGTERM is turned into KeyboardInterrupt so that ``finally`` blocks and
    atomic writers clean up their temporary files before the process ends.
    """
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        main()
    except PipelineError as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"\n{name}: interrupted; previous outputs are left as they were", file=sys.stderr)
        sys.exit(130)
    sys.exit(0)
