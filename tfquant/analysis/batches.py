"""Analysis data held in memory as checked batches, and a forward pass over them.

* :class:`Batch` / :func:`load_batches`: analysis data (arrays, ``(x, y)`` tuples, datasets,
  iterables of batches) read once into memory, checked as by :func:`tfquant.ptq.calibrate`;
* :func:`predict`: a forward pass over those batches traced afresh, so it runs the current
  ``Quantizer.enabled`` flags.

Example:
    >>> batches = load_batches(qmodel, (x_val, y_val), batch_size=64, steps=4)
    >>> y_pred = predict(qmodel, batches)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from keras import tree

from tfquant._retracing import quiet_retracing
from tfquant.ptq.data import input_specs, iter_batches, pack_inputs


@dataclasses.dataclass
class Batch:
    """One batch of analysis data: one array per model input, and the labels if given."""

    x: list[np.ndarray]
    y: Any = None

    @property
    def size(self) -> int:
        """Number of samples."""
        return int(self.x[0].shape[0])


def _is_xy(item: Any) -> bool:
    """True for an ``(x, y)`` or ``(x, y, w)`` tuple: data (or a batch) that carries labels."""
    return isinstance(item, tuple) and len(item) in (2, 3)


def _slice(struct: Any, start: int, stop: int) -> Any:
    return tree.map_structure(lambda a: np.asarray(a)[start:stop], struct)


def load_batches(model: keras.Model, data: Any, batch_size: int = 32,
                 steps: int | None = None) -> list[Batch]:
    """Reads analysis data into memory as checked :class:`Batch` es.

    Accepted ``data``: a ``tf.data.Dataset`` of ``x`` or ``(x, y[, w])`` (batched or not), a
    numpy array / tensor / dict of arrays (inputs only), a tuple ``(x, y)`` of those, or an
    iterable of batches ``x`` or ``(x, y[, w])``. Inputs are checked as by
    :func:`tfquant.ptq.calibrate` (shape, dtype, finite values).

    Args:
        model: the model the data is for (its inputs define the expected shapes).
        data: see above.
        batch_size: batch size for arrays and unbatched datasets.
        steps: keep at most this many batches (None: all).

    Returns:
        A list of :class:`Batch`.

    Example:
        >>> [b.size for b in load_batches(model, (x, y), batch_size=16)]  # 40 samples
        [16, 16, 8]
    """
    specs = input_specs(model)
    items: list[tuple[Any, Any]]
    if _is_xy(data) and not isinstance(data, tf.data.Dataset):
        x_all, y_all = data[0], data[1]
        xs = list(iter_batches(x_all, specs, batch_size, steps))
        items, start = [], 0
        for arrays in xs:
            stop = start + arrays[0].shape[0]
            items.append((arrays, None if y_all is None else _slice(y_all, start, stop)))
            start = stop
        return [Batch(x, y) for x, y in items]
    if isinstance(data, (np.ndarray, Mapping)) or tf.is_tensor(data):
        return [Batch(x) for x in iter_batches(data, specs, batch_size, steps)]
    if isinstance(data, tf.data.Dataset):
        element = data.element_spec
        x_spec = element[0] if _is_xy(element) else element
        flat = [s for s in tree.flatten(x_spec) if isinstance(s, tf.TensorSpec)]
        if flat and len(flat) == len(specs) and all(
                s.shape.rank is not None and s.shape.rank == len(spec.shape) - 1
                for s, spec in zip(flat, specs)):
            data = data.batch(batch_size)
        source: Iterable[Any] = data.as_numpy_iterator()
    elif isinstance(data, (str, bytes)) or not isinstance(data, Iterable):
        raise ValueError(f"analysis data of type {type(data).__name__} is not supported; pass a "
                         "tf.data.Dataset, a numpy array, a dict of arrays, an (x, y) tuple or "
                         "an iterable of batches.")
    else:
        source = data
    items = []
    for item in source:
        if steps is not None and len(items) >= steps:
            break
        items.append((item[0], item[1]) if _is_xy(item) else (item, None))
    xs = list(iter_batches([(x,) for x, _ in items], specs, batch_size))
    return [Batch(x, y) for x, (_, y) in zip(xs, items)]


def _signature(model: keras.Model) -> list[tf.TensorSpec]:
    return [tf.TensorSpec((None,) + tuple(s.shape[1:]), tf.as_dtype(s.dtype))
            for s in input_specs(model)]


def predict(model: keras.Model, batches: list[Batch], eager: bool = False) -> Any:
    """Runs ``model`` (inference mode) over ``batches`` and concatenates the outputs.

    A new ``tf.function`` is traced for every call, so the current ``Quantizer.enabled`` flags
    are what runs (a traced function keeps the flags it saw).

    Args:
        model: any Keras model with the batches' inputs.
        batches: from :func:`load_batches`.
        eager: run eagerly instead of tracing (faster for a handful of small batches).

    Returns:
        The outputs in the model's output structure, as numpy arrays over every batch.

    Example:
        >>> predict(qmodel, load_batches(qmodel, x_val[:40], batch_size=16)).shape
        (40, 10)
    """
    if eager:
        def run(*xs):
            return model(pack_inputs(model, list(xs)), training=False)
    else:
        @tf.function(input_signature=_signature(model), autograph=False)
        def run(*xs):
            return model(pack_inputs(model, list(xs)), training=False)
    with quiet_retracing():  # re-tracing per quantizer configuration is the point
        outs = [tree.map_structure(lambda t: np.asarray(t), run(*b.x)) for b in batches]
    return tree.map_structure(lambda *parts: np.concatenate(parts, axis=0), *outs)
