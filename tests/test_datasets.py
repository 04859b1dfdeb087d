"""Tests of the bundled datasets (tfquant/datasets.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tfquant import datasets

REPO_ROOT = Path(__file__).resolve().parents[1]


def _check_split(train, test, image_shape, n_total, n_classes=10):
    (x_train, y_train), (x_test, y_test) = train, test
    assert x_train.shape[1:] == image_shape and x_test.shape[1:] == image_shape
    assert x_train.dtype == np.float32 and x_test.dtype == np.float32
    assert np.issubdtype(y_train.dtype, np.integer) and np.issubdtype(y_test.dtype, np.integer)
    assert len(x_train) == len(y_train) and len(x_test) == len(y_test)
    assert len(x_train) + len(x_test) == n_total
    for x in (x_train, x_test):
        assert np.isfinite(x).all()
        assert x.min() >= 0.0 and x.max() <= 1.0
    assert x_train.max() == 1.0  # actually scaled to [0, 1], not [0, 1/255]
    assert set(np.unique(y_train)) == set(range(n_classes))
    assert set(np.unique(y_test)) == set(range(n_classes))


def test_digits_shapes_dtypes_ranges():
    train, test = datasets.load_digits()
    _check_split(train, test, (8, 8, 1), 1797)
    assert abs(len(test[0]) / 1797 - 0.2) < 0.01


def test_mnist_sample_shapes_dtypes_ranges():
    train, test = datasets.load_mnist_sample()
    _check_split(train, test, (28, 28, 1), 5000)
    assert len(train[0]) == 4000 and len(test[0]) == 1000


@pytest.mark.parametrize("loader", [datasets.load_digits, datasets.load_mnist_sample])
def test_split_is_deterministic_and_seed_dependent(loader):
    (a_x, a_y), (a_xt, a_yt) = loader(seed=3)
    (b_x, b_y), (b_xt, b_yt) = loader(seed=3)
    np.testing.assert_array_equal(a_x, b_x)
    np.testing.assert_array_equal(a_y, b_y)
    np.testing.assert_array_equal(a_xt, b_xt)
    np.testing.assert_array_equal(a_yt, b_yt)
    (_, c_y), _ = loader(seed=4)
    assert not np.array_equal(a_y, c_y)


@pytest.mark.parametrize("loader", [datasets.load_digits, datasets.load_mnist_sample])
def test_splits_are_stratified(loader):
    (_, y_train), (_, y_test) = loader(split=0.25)
    counts_train = np.bincount(y_train, minlength=10)
    counts_test = np.bincount(y_test, minlength=10)
    fraction = counts_test / (counts_train + counts_test)
    np.testing.assert_allclose(fraction, 0.25, atol=0.01)


def test_stratified_split_partitions_indices():
    y = np.repeat(np.arange(5), [10, 7, 3, 1, 20])
    train_idx, test_idx = datasets.stratified_split(y, split=0.3, seed=1)
    assert len(np.intersect1d(train_idx, test_idx)) == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([train_idx, test_idx])),
                                  np.arange(len(y)))
    np.testing.assert_array_equal(np.bincount(y[test_idx], minlength=5), [3, 2, 1, 0, 6])
    assert datasets.stratified_split(y, split=0.0)[1].size == 0
    with pytest.raises(ValueError):
        datasets.stratified_split(y, split=1.0)


def test_train_and_test_images_are_disjoint():
    (x_train, _), (x_test, _) = datasets.load_digits()
    train_rows = {row.tobytes() for row in x_train.reshape(len(x_train), -1)}
    test_rows = [row.tobytes() for row in x_test.reshape(len(x_test), -1)]
    # digits has a handful of duplicated images; almost no test image is in train
    assert sum(r in train_rows for r in test_rows) <= 5


def test_returned_arrays_are_independent_copies():
    (x, y), _ = datasets.load_digits()
    x[:] = -1.0
    y[:] = -1
    (x2, y2), _ = datasets.load_digits()
    assert x2.min() >= 0.0 and y2.min() >= 0


def test_load_by_name():
    (x, _), _ = datasets.load("digits")
    assert x.shape[1:] == (8, 8, 1)
    (x, _), _ = datasets.load("mnist")
    assert x.shape[1:] == (28, 28, 1)
    with pytest.raises(ValueError, match="unknown dataset"):
        datasets.load("cifar10")


def test_as_dataset():
    (x, y), _ = datasets.load_digits()
    ds = datasets.as_dataset(x[:100], y[:100], batch_size=32)
    batches = list(ds)
    assert [int(b[0].shape[0]) for b in batches] == [32, 32, 32, 4]
    assert tuple(batches[0][0].shape[1:]) == (8, 8, 1)
    np.testing.assert_array_equal(batches[0][1].numpy(), y[:32])

    unlabeled = datasets.as_dataset(x[:64], batch_size=16, drop_remainder=True)
    assert tuple(unlabeled.element_spec.shape) == (16, 8, 8, 1)

    def order(seed):
        ds = datasets.as_dataset(x[:50], y[:50], batch_size=50, shuffle=True, seed=seed)
        return next(iter(ds))[1].numpy()

    np.testing.assert_array_equal(order(7), order(7))
    assert sorted(order(7).tolist()) == sorted(y[:50].tolist())


def test_module_import_is_light():
    """datasets.py must not import keras/tensorflow at import time (tfmot worker)."""
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('d', {str(REPO_ROOT / 'tfquant' / 'datasets.py')!r})\n"
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
        "bad = [k for k in ('keras', 'tensorflow', 'tfquant') if k in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
