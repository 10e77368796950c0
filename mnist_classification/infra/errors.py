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


INTERRUPTED = ("interrupted; files it had not finished writing were discarded "
               "(after `dvc repro`, `dvc checkout` restores the outputs recorded in dvc.lock)")


def run_cli(main: Callable[[], object], name: str, memory_hint: str = "") -> None:
    """Run ``main`` and exit: 0 on success, 2 on PipelineError or MemoryError, 130 on Ctrl-C/SIGTERM.

    SIGTERM is turned into KeyboardInterrupt so that ``finally`` blocks and
    atomic writers clean up their temporary files before the process ends.
    ``memory_hint`` tells what to change when an allocation fails (e.g. which params).
    """
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        main()
    except PipelineError as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except MemoryError as exc:
        parts = ["out of memory" + (f" ({exc})" if str(exc) else ""), memory_hint]
        print(f"{name}: error: " + "; ".join(part for part in parts if part), file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"\n{name}: {INTERRUPTED}", file=sys.stderr)
        sys.exit(130)
    sys.exit(0)
