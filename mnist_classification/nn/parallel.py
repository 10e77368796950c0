"""Batches split over the cores: one thread per core, each running its own single-threaded BLAS calls.

NumPy's elementwise operations run on one core and release the GIL on large
arrays; OpenBLAS runs each product on every core but scales poorly on the thin
products of convolutions. Splitting a batch into blocks that threads take in
turn keeps both cores busy with either, and a block small enough to stay in
the caches makes its copies and products cheap. Results do not depend on the
number of threads: blocks are fixed by the batch alone, each is computed by one
thread with single-threaded BLAS, and per-block partial sums are added in
block order.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

from mnist_classification.infra.blas import blas_threads, single_threaded_blas
from mnist_classification.nn.workspace import Workspace

_LOCAL = threading.local()

#: Python's GIL switch interval (s) while the threads share a batch: a thread back from a BLAS call or
#: a large NumPy pass waits at most this long for the GIL (Python's default, 5 ms, is as long as a
#: whole block; 0.5 ms measured 1.03-1.04x per CNN step).
SWITCH_INTERVAL = 0.0005


def workers() -> int:
    """Threads used: as many as the BLAS would use (OPENBLAS_NUM_THREADS and the CPU affinity decide)."""
    return blas_threads()


def scratch() -> Workspace:
    """This thread's own scratch arrays (never shared between threads)."""
    work = getattr(_LOCAL, "work", None)
    if work is None:
        work = _LOCAL.work = Workspace()
    return work


def blocks(count: int, per_item: int, budget: int, minimum: int = 8) -> list[tuple[int, int]]:
    """Split ``count`` items costing ``per_item`` bytes of scratch into consecutive (start, stop)
    blocks of at most ``budget`` bytes each (at least one item), and at least ``minimum`` blocks
    when there are that many items (so that every core gets work)."""
    size = max(1, min(budget // max(per_item, 1), -(-count // minimum)))
    return [(start, min(count, start + size)) for start in range(0, count, size)]


def run(task, spans) -> list:
    """``[task(start, stop) for (start, stop) in spans]``, computed on all cores with single-threaded BLAS.

    The calling thread and the pool's threads take the next span in turn until none is left (a few
    wake-ups per call rather than one per span)."""
    spans = list(spans)
    threads = min(workers(), len(spans))
    with single_threaded_blas():
        if threads <= 1:
            return [task(start, stop) for start, stop in spans]
        with _short_gil_turns():
            return _shared(task, spans, threads)


class _GilTurns:
    """Who is inside :func:`_short_gil_turns`: the interval is the interpreter's, so the first to enter
    sets it and the last to leave restores it (runs from several threads overlap safely)."""

    lock = threading.Lock()
    inside = 0
    previous = 0.0


@contextlib.contextmanager
def _short_gil_turns():
    """Python's GIL switch interval at :data:`SWITCH_INTERVAL` for the block (restored after the last
    overlapping block ends)."""
    with _GilTurns.lock:
        if _GilTurns.inside == 0:
            _GilTurns.previous = sys.getswitchinterval()
            sys.setswitchinterval(SWITCH_INTERVAL)
        _GilTurns.inside += 1
    try:
        yield
    finally:
        with _GilTurns.lock:
            _GilTurns.inside -= 1
            if _GilTurns.inside == 0:
                sys.setswitchinterval(_GilTurns.previous)


def _shared(task, spans: list[tuple[int, int]], threads: int) -> list:
    """:func:`run` on ``threads`` threads: the caller and ``threads - 1`` pool threads."""
    results = [None] * len(spans)
    claim, lock = iter(range(len(spans))), threading.Lock()

    def work() -> None:
        while True:
            with lock:
                index = next(claim, None)
            if index is None:
                return
            results[index] = task(*spans[index])

    helpers = [_pool(threads - 1, os.getpid()).submit(work) for _ in range(threads - 1)]
    try:
        work()
    finally:
        for helper in helpers:  # every thread is done (or failed) before the results are used
            helper.exception()
    for helper in helpers:
        helper.result()
    return results


@functools.cache
def _pool(threads: int, pid: int) -> ThreadPoolExecutor:
    """The pool of this process (a forked child gets its own: the parent's threads are not copied)."""
    return ThreadPoolExecutor(threads, thread_name_prefix="mnist-block")


#: Elements per block of :func:`elementwise` (256 KiB of float32).
ELEMENTWISE_BLOCK = 1 << 16


def _memory_view(a):
    """The 1-D view of ``a``'s elements in memory order, and that order; None if not one contiguous block."""
    order = tuple(sorted(range(a.ndim), key=lambda d: -a.strides[d]))
    t = a.transpose(order)
    return (t.reshape(-1), order) if t.flags.c_contiguous else (None, order)


def elementwise(function, *arrays) -> None:
    """``function(*arrays)`` (which writes its results into some of them) block by block on all cores.

    The arrays must share one shape; when they also share one contiguous memory layout, each block is
    the same stretch of memory of every array; otherwise ``function`` runs once on the whole arrays."""
    views = [_memory_view(a) for a in arrays]
    flats = [flat for flat, _ in views]
    if any(flat is None for flat in flats) or len({order for _, order in views}) > 1 \
            or len({a.shape for a in arrays}) > 1 or flats[0].size < 4 * ELEMENTWISE_BLOCK:
        function(*arrays)
        return
    size = flats[0].size
    spans = [(start, min(size, start + ELEMENTWISE_BLOCK)) for start in range(0, size, ELEMENTWISE_BLOCK)]
    run(lambda start, stop: function(*(flat[start:stop] for flat in flats)), spans)
