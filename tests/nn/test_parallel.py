"""Work split over the cores: blocks cover the batch, and results do not depend on the thread count."""

import os
import signal
import sys
import threading
import time

import numpy as np
import pytest

import mnist_classification.nn.parallel as parallel
from mnist_classification.nn.activations import ReLU
from mnist_classification.nn.batchnorm import BatchNorm2D
from mnist_classification.nn.conv import Conv2D, MaxPool2D


@pytest.mark.parametrize("count, per_item, budget, minimum", [(128, 903168, 4 << 20, 8), (128, 100, 4 << 20, 8),
                                                              (5, 10**9, 1, 8), (1, 1, 1, 8), (1000, 7, 64, 3)])
def test_blocks_cover_the_items_in_order_within_the_budget(count, per_item, budget, minimum):
    spans = parallel.blocks(count, per_item, budget, minimum)
    assert spans[0][0] == 0 and spans[-1][1] == count
    assert all(stop == start for (_, stop), (start, _) in zip(spans, spans[1:]))
    sizes = [stop - start for start, stop in spans]
    assert min(sizes) >= 1
    assert max(sizes) == 1 or max(sizes) * per_item <= budget
    assert len(spans) >= min(count, minimum)


def test_run_returns_results_in_block_order_and_uses_threads():
    seen = set()

    def task(start, stop):
        seen.add(threading.current_thread().name)
        time.sleep(0.002)  # long enough that the pool's thread takes spans too
        return start * 10 + stop

    spans = parallel.blocks(64, 1, 4)
    assert parallel.run(task, spans) == [start * 10 + stop for start, stop in spans]
    if parallel.workers() > 1:
        assert any(name.startswith("mnist-block") for name in seen)


def test_run_waits_for_every_thread_and_raises_a_tasks_error(monkeypatch):
    monkeypatch.setattr(parallel, "workers", lambda: 3)
    finished = []

    def task(start, stop):
        time.sleep(0.002)
        if start == 3:
            raise ValueError("block 3 failed")
        finished.append(start)

    with pytest.raises(ValueError, match="block 3 failed"):
        parallel.run(task, [(i, i + 1) for i in range(40)])
    count = len(finished)
    time.sleep(0.05)
    assert len(finished) == count and 3 not in finished  # no thread still working after run returned


def test_a_forked_child_gets_its_own_pool(monkeypatch):
    monkeypatch.setattr(parallel, "workers", lambda: 2)
    parallel.run(lambda start, stop: start, [(0, 1), (1, 2)])  # the parent's pool exists
    pid = os.fork()
    if pid == 0:  # child: the parent's pool threads were not copied; a fresh pool must serve it
        signal.alarm(20)  # a child waiting on the parent's dead pool is killed, not left hanging
        try:
            ok = parallel.run(lambda start, stop: start, [(i, i + 1) for i in range(8)]) == list(range(8))
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def _train_step(method: str, seed: int = 0):
    """Outputs and gradients of conv -> batch norm -> ReLU -> conv -> batch norm + ReLU -> pool on a
    16-image batch (32 channels: the window-copy path of the blocked columns)."""
    rng = np.random.default_rng(seed)
    layers = [Conv2D(3, 32, 3, rng=rng, method=method), BatchNorm2D(32), ReLU(),
              Conv2D(32, 16, 3, rng=rng, method=method), BatchNorm2D(16, activation="relu"), MaxPool2D(2)]
    x = rng.standard_normal((16, 3, 12, 12)).astype(np.float32)
    for layer in layers:
        x = layer.forward(x, training=True)
    g = rng.standard_normal(x.shape).astype(np.float32)
    for layer in reversed(layers):
        g = layer.backward(g)
    return [np.array(x), np.array(g)] + [grad.copy() for layer in layers for grad in layer.grads.values()]


@pytest.mark.parametrize("method", ["blocked", "winograd"])
def test_results_are_byte_identical_whatever_the_thread_count(method, monkeypatch):
    results = []
    for threads in (1, 2, 3):
        monkeypatch.setattr(parallel, "workers", lambda threads=threads: threads)
        results.append(_train_step(method))
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert a.tobytes() == b.tobytes()


def test_elementwise_runs_on_matching_layouts_and_falls_back_on_others(monkeypatch):
    monkeypatch.setattr(parallel, "ELEMENTWISE_BLOCK", 8)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 6, 5, 3)).astype(np.float32).transpose(0, 3, 1, 2)  # channels-last memory
    out = np.empty_like(x)
    parallel.elementwise(lambda a, o: np.multiply(a, 2, out=o), x, out)
    np.testing.assert_array_equal(out, 2 * x)
    assert out.strides == x.strides
    other = np.empty(x.shape, dtype=np.float32)  # plain layout: one call on the whole arrays
    parallel.elementwise(lambda a, o: np.multiply(a, 3, out=o), x, other)
    np.testing.assert_array_equal(other, 3 * x)


def test_run_shortens_gil_turns_only_while_it_runs(monkeypatch):
    monkeypatch.setattr(parallel, "workers", lambda: 2)
    before = sys.getswitchinterval()
    seen = parallel.run(lambda start, stop: sys.getswitchinterval(), [(0, 1), (1, 2)])
    assert seen == [parallel.SWITCH_INTERVAL] * 2 and sys.getswitchinterval() == before


def test_overlapping_runs_from_two_threads_restore_the_interval_once_both_end(monkeypatch):
    # Thread A enters first and leaves first while B is still running: the short interval must stay
    # until B ends, and the interval from before A must come back (not A's short one, restored by B).
    monkeypatch.setattr(parallel, "workers", lambda: 2)
    before = sys.getswitchinterval()
    a_inside, b_inside, a_done = threading.Event(), threading.Event(), threading.Event()
    seen = {}

    def task_a(start, stop):
        a_inside.set()
        assert b_inside.wait(10)
        return sys.getswitchinterval()

    def task_b(start, stop):
        b_inside.set()
        assert a_done.wait(10)
        return sys.getswitchinterval()  # A has left: still short while B runs

    def run_a():
        seen["a"] = parallel.run(task_a, [(0, 1)] * 2)
        a_done.set()

    def run_b():
        assert a_inside.wait(10)
        seen["b"] = parallel.run(task_b, [(0, 1)] * 2)

    threads = [threading.Thread(target=run_a), threading.Thread(target=run_b)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert seen["a"] == [parallel.SWITCH_INTERVAL] * 2 and seen["b"] == [parallel.SWITCH_INTERVAL] * 2
    assert sys.getswitchinterval() == before
