"""Calibration inputs: datasets, arrays and iterables turned into checked numpy batches.

Every PTQ step that reads data goes through :func:`iter_batches`, so the rules are the same
everywhere:

* a ``tf.data.Dataset`` yields ``x`` or ``(x, y[, sample_weight])`` (Keras' convention); an
  unbatched dataset (elements without the batch axis) is batched with ``batch_size``;
* a numpy array or tensor (single-input models) or a dict of them keyed by input name is cut
  into batches of ``batch_size``;
* any other iterable (generator, list of batches, ``keras.utils.PyDataset``) yields one batch
  per item, ``x`` or ``(x, y[, w])``.

Each batch is checked before it reaches the model: real numeric dtype, the model's input shape
(batch axis first), at least one sample, finite values. A problem raises ``ValueError`` naming
the batch, the input and the expected shape; the caller has changed nothing at that point.

Example:
    >>> for arrays in iter_batches(np.zeros((10, 4), "float32"), input_specs(model), 4):
    ...     model(arrays[0])
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from keras import tree


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """One model input: its name, shape (batch axis first, ``None`` = any) and dtype."""

    name: str
    shape: tuple
    dtype: np.dtype

    def describe(self) -> str:
        """``'input' (None, 8, 8, 3) float32``."""
        return f"{self.name!r} {tuple(self.shape)} {self.dtype}"


def input_specs(model: keras.Model) -> list[InputSpec]:
    """The :class:`InputSpec` of each input of ``model``, in ``model.inputs`` order."""
    specs = []
    for t in model.inputs:
        history = getattr(t, "_keras_history", None)
        name = history.operation.name if history is not None else t.name
        specs.append(InputSpec(name, tuple(t.shape), np.dtype(keras.backend.standardize_dtype(
            t.dtype))))
    return specs


def pack_inputs(model: keras.Model, arrays: list[np.ndarray]) -> Any:
    """Arranges one batch's arrays in the structure ``model`` is called with."""
    struct = getattr(model, "_inputs_struct", None)
    if struct is not None:
        return tree.pack_sequence_as(struct, list(arrays))
    return arrays[0] if len(arrays) == 1 else list(arrays)


def is_one_shot(data: Any) -> bool:
    """True for iterators (generators...) that can be read only once."""
    return (not isinstance(data, (np.ndarray, Mapping, tf.data.Dataset, keras.utils.PyDataset))
            and not tf.is_tensor(data) and isinstance(data, Iterator))


def check_batching(batch_size: Any, steps: Any) -> None:
    """Raises ``ValueError`` unless ``batch_size`` is a positive integer and ``steps`` one or
    None."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
            or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be a positive integer.")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, (int, np.integer))
                              or steps < 1):
        raise ValueError(f"steps={steps!r} must be a positive integer or None.")


def num_batches(data: Any, batch_size: int = 32, steps: int | None = None) -> int | None:
    """How many batches :func:`iter_batches` will yield, when that is known without reading."""
    check_batching(batch_size, steps)
    count = None
    if isinstance(data, tf.data.Dataset):
        card = int(data.cardinality())
        count = card if card >= 0 else None
    elif isinstance(data, np.ndarray) or tf.is_tensor(data):
        count = math.ceil(int(data.shape[0]) / batch_size) if data.shape else None
    elif isinstance(data, Mapping) and data:
        first = next(iter(data.values()))
        count = math.ceil(len(first) / batch_size) if hasattr(first, "__len__") else None
    elif hasattr(data, "__len__") and not is_one_shot(data):
        count = len(data)
    if steps is not None:
        count = steps if count is None else min(count, steps)
    return count


def iter_batches(data: Any, specs: list[InputSpec], batch_size: int = 32,
                 steps: int | None = None) -> Iterator[list[np.ndarray]]:
    """Yields checked batches: one numpy array per model input, cast to the input dtype.

    Args:
        data: a ``tf.data.Dataset``, numpy array / tensor, dict of arrays, or iterable of
            batches (see the module docstring).
        specs: the model's inputs (:func:`input_specs`).
        batch_size: batch size for arrays and unbatched datasets.
        steps: stop after this many batches (None: all).

    Raises:
        ValueError: empty data, a batch with the wrong shape, dtype, no samples or non-finite
            values (the message names the batch, the input and the expected shape), an
            infinite dataset without ``steps``, or data of an unsupported type.

    Example:
        >>> next(iter_batches(np.ones((5, 3), "float32"), input_specs(model), 2))[0].shape
        (2, 3)
    """
    check_batching(batch_size, steps)
    source = _source(data, specs, int(batch_size), steps)
    count = 0
    for x in source:
        if steps is not None and count >= steps:
            break
        yield _check_batch(x, specs, count)
        count += 1
    if count == 0:
        raise ValueError(f"calibration data is empty: {type(data).__name__} produced no batch; "
                         f"expected batches of shape "
                         f"{', '.join(s.describe() for s in specs)}.")


def _source(data: Any, specs: list[InputSpec], batch_size: int,
            steps: int | None) -> Iterable[Any]:
    if data is None:
        raise ValueError("calibration data is None; pass a tf.data.Dataset, a numpy array or "
                         "an iterable of batches.")
    if isinstance(data, tf.data.Dataset):
        return _dataset(data, specs, batch_size, steps)
    if isinstance(data, np.ndarray) or tf.is_tensor(data):
        return _slices({specs[0].name: data} if len(specs) == 1 else data, specs, batch_size)
    if isinstance(data, Mapping):
        return _slices(data, specs, batch_size)
    if isinstance(data, keras.utils.PyDataset):
        return (keras.utils.unpack_x_y_sample_weight(data[i])[0] for i in range(len(data)))
    if isinstance(data, (str, bytes)) or not isinstance(data, Iterable):
        raise ValueError(f"calibration data of type {type(data).__name__} is not supported; "
                         "pass a tf.data.Dataset, a numpy array, a dict of arrays or an "
                         "iterable of batches.")
    return (keras.utils.unpack_x_y_sample_weight(item)[0] for item in data)


def _dataset(ds: tf.data.Dataset, specs: list[InputSpec], batch_size: int,
             steps: int | None) -> Iterable[Any]:
    if int(ds.cardinality()) == int(tf.data.INFINITE_CARDINALITY) and steps is None:
        raise ValueError("calibration dataset is infinite (repeat()); pass steps=N.")
    x_spec = keras.utils.unpack_x_y_sample_weight(ds.element_spec)[0]
    flat = [s for s in tree.flatten(x_spec) if isinstance(s, tf.TensorSpec)]
    if len(flat) == len(specs) and all(
            s.shape.rank is not None and s.shape.rank == len(spec.shape) - 1
            for s, spec in zip(flat, specs)):
        ds = ds.batch(batch_size)  # elements are single samples
    return (keras.utils.unpack_x_y_sample_weight(el)[0] for el in ds.as_numpy_iterator())


def _slices(arrays: Any, specs: list[InputSpec], batch_size: int) -> Iterator[Any]:
    if not isinstance(arrays, Mapping):
        raise ValueError(f"a model with {len(specs)} inputs needs a dict of arrays keyed by "
                         f"input name ({[s.name for s in specs]}) or a dataset, got "
                         f"{type(arrays).__name__}.")
    missing = [s.name for s in specs if s.name not in arrays]
    if missing:
        raise ValueError(f"calibration data has no array for input(s) {missing}; got keys "
                         f"{sorted(arrays)}.")
    columns = [np.asarray(arrays[s.name]) for s in specs]
    for column, spec in zip(columns, specs):
        if column.ndim == 0:
            raise ValueError(f"calibration input {spec.name!r} is a scalar; expected an array "
                             f"of shape {tuple(spec.shape)} (batch axis first).")
    total = columns[0].shape[0]
    if total == 0:
        raise ValueError(f"calibration data is empty: 0 samples; expected arrays of shape "
                         f"{', '.join(s.describe() for s in specs)}.")
    for start in range(0, total, batch_size):
        yield [c[start:start + batch_size] for c in columns]


def _check_batch(x: Any, specs: list[InputSpec], index: int) -> list[np.ndarray]:
    where = f"calibration batch {index}"
    if isinstance(x, Mapping):
        missing = [s.name for s in specs if s.name not in x]
        if missing:
            raise ValueError(f"{where}: no value for input(s) {missing}; got keys {sorted(x)}.")
        values = [x[s.name] for s in specs]
    elif len(specs) == 1:
        values = [x[0] if isinstance(x, (list, tuple)) and len(x) == 1 else x]
    elif isinstance(x, (list, tuple)) and len(x) == len(specs):
        values = list(x)
    else:
        raise ValueError(f"{where}: the model has {len(specs)} inputs "
                         f"({', '.join(s.describe() for s in specs)}); give each batch as one "
                         f"array per input (a tuple, or a dict keyed by input name). A tuple "
                         f"or list at the top level is read as a list of batches: wrap a "
                         f"single batch as [(x1, x2)], or pass a dict of arrays.")
    arrays = [_check_array(v, spec, where) for v, spec in zip(values, specs)]
    sizes = {a.shape[0] for a in arrays}
    if len(sizes) > 1:
        raise ValueError(f"{where}: inputs have different batch sizes {sorted(sizes)}.")
    return arrays


def _check_array(value: Any, spec: InputSpec, where: str) -> np.ndarray:
    expected = f"expected shape {tuple(spec.shape)} (batch axis first), dtype {spec.dtype}"
    if isinstance(value, (tf.RaggedTensor, tf.SparseTensor)):
        raise ValueError(f"{where}: input {spec.name!r} is a {type(value).__name__}; {expected}.")
    arr = np.asarray(value.numpy() if tf.is_tensor(value) else value)
    want_float = spec.dtype.kind == "f"
    allowed = "iuf" if want_float else "iu"
    if arr.dtype.kind not in allowed:
        raise ValueError(f"{where}: input {spec.name!r} has dtype {arr.dtype}, which cannot be "
                         f"used for a {spec.dtype} input; {expected}.")
    if arr.ndim != len(spec.shape) or any(
            want is not None and got != want for got, want in zip(arr.shape[1:], spec.shape[1:])):
        raise ValueError(f"{where}: input {spec.name!r} has shape {arr.shape}; {expected}.")
    if arr.shape[0] == 0:
        raise ValueError(f"{where}: input {spec.name!r} has no samples (shape {arr.shape}).")
    if arr.dtype.kind == "f":
        finite = np.isfinite(arr)
        if not finite.all():
            bad = arr.size - int(np.count_nonzero(finite))
            raise ValueError(f"{where}: input {spec.name!r} holds {bad} non-finite value(s) "
                             f"(NaN or Inf) out of {arr.size}; calibration data must be finite.")
    return arr.astype(spec.dtype, copy=False)
