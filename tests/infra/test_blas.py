"""OpenBLAS steered through ctypes: single-threaded inside the block, restored after it, re-entrant."""

import numpy as np
import pytest

from mnist_classification.infra.blas import blas_threads, current_blas_threads, loaded_openblas, single_threaded_blas


@pytest.mark.skipif(loaded_openblas() is None, reason="NumPy is not linked to OpenBLAS here")
def test_single_threaded_blas_restores_the_thread_count_and_nests():
    before = current_blas_threads()
    with single_threaded_blas():
        assert current_blas_threads() == 1
        assert blas_threads() == before  # what the block threads are sized by
        with single_threaded_blas():
            assert current_blas_threads() == 1
        assert current_blas_threads() == 1  # the inner block does not restore early
        a = np.ones((64, 64), dtype=np.float32)
        assert (a @ a == 64).all()
    assert current_blas_threads() == before == blas_threads()


def test_single_threaded_blas_restores_after_an_error():
    before = current_blas_threads()
    with pytest.raises(KeyError), single_threaded_blas():
        raise KeyError("boom")
    assert current_blas_threads() == before
