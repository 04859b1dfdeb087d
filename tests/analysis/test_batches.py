"""tfquant.analysis.batches: load_batches reads arrays, (x, y) tuples, datasets and iterables."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from tfquant.analysis.batches import load_batches


def test_load_batches_accepts_arrays_tuples_and_datasets(weight_qmodel, x_data):
    y = np.arange(len(x_data))
    batches = load_batches(weight_qmodel, (x_data[:40], y[:40]), batch_size=16)
    assert [b.size for b in batches] == [16, 16, 8]
    np.testing.assert_array_equal(batches[2].y, y[32:40])
    ds = tf.data.Dataset.from_tensor_slices((x_data[:40], y[:40]))  # unbatched elements
    from_ds = load_batches(weight_qmodel, ds, batch_size=16, steps=2)
    assert [b.size for b in from_ds] == [16, 16]
    np.testing.assert_array_equal(from_ds[1].y, y[16:32])
    assert load_batches(weight_qmodel, x_data[:10], batch_size=4)[0].y is None
    gen = ((x_data[i:i + 5], y[i:i + 5]) for i in range(0, 20, 5))
    assert [b.size for b in load_batches(weight_qmodel, gen)] == [5, 5, 5, 5]
    with pytest.raises(ValueError, match="shape"):
        load_batches(weight_qmodel, np.zeros((4, 3), np.float32))
