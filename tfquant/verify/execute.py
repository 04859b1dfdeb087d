"""The three executions compared by :func:`tfquant.verify`: inputs and the TFLite interpreters.

* :func:`collect_inputs` turns the user's data (arrays, a dict, a ``tf.data.Dataset``) into one
  float array per model input.
* :func:`keras_order` lines the interpreter's inputs and outputs up with the Keras model's.
* :func:`tflite_inputs` converts them to what the ``.tflite`` model takes (float, or int8
  quantized as TFLite's QUANTIZE op does: round half away from zero).
* :func:`run_interpreter` runs LiteRT with the reference kernels (``BUILTIN_REF``, keeping every
  intermediate tensor) or with its default XNNPACK path, in batches.

Example:
    >>> xs = collect_inputs(x_test, num_inputs=1)                          # doctest: +SKIP
    >>> outs, every = run_interpreter(data, tflite_inputs(data, xs), reference=True,
    ...                               keep=[3, 7])                         # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np


def collect_inputs(data: Any, num_inputs: int, input_names: Sequence[str] = (),
                   max_samples: int | None = None) -> list[np.ndarray]:
    """One float32 array per model input from ``data``.

    Args:
        data: an array (single-input models), a list/tuple of arrays (one per input), a dict
            keyed by input name, any of these as the ``x`` of an ``(x, y)`` tuple (as
            ``model.fit`` takes it; the labels are dropped), or a ``tf.data.Dataset`` of
            any of these.
        num_inputs: the number of model inputs.
        input_names: the Keras input names (for dict data).
        max_samples: keep at most this many samples.

    Raises:
        ValueError: the data does not match the model's inputs (says how).
    """
    import tensorflow as tf

    if isinstance(data, tf.data.Dataset):
        batches: list[list[np.ndarray]] = []
        total = 0
        for element in data:
            if isinstance(element, (tuple, list)) and len(element) > 1 and (
                    num_inputs == 1 or isinstance(element[0], (tuple, list, dict))):
                element = element[0]            # (x, y) or (x, y, weights)
            arrays = _split(element, num_inputs, input_names)
            if not batches:
                batches = [[] for _ in arrays]
            for store, a in zip(batches, arrays):
                store.append(a if a.ndim > 0 else a[None])
            total += len(arrays[0])
            if max_samples is not None and total >= max_samples:
                break
        if not batches:
            raise ValueError("the dataset given to verify is empty")
        arrays = [np.concatenate(b) for b in batches]
    else:
        arrays = _split(data, num_inputs, input_names)
    if max_samples is not None:
        arrays = [a[:max_samples] for a in arrays]
    sizes = {len(a) for a in arrays}
    if len(sizes) != 1 or 0 in sizes:
        raise ValueError(f"the model inputs need the same, non-zero number of samples; got "
                         f"{[len(a) for a in arrays]}")
    for i, a in enumerate(arrays):
        bad = int(np.size(a) - np.count_nonzero(np.isfinite(a)))
        if bad:
            name = input_names[i] if i < len(input_names) else f"input {i}"
            raise ValueError(f"data for {name!r} has {bad} non-finite (NaN/Inf) values: the "
                             "executions cannot be compared on them")
    return arrays


def _split(data: Any, num_inputs: int, input_names: Sequence[str]) -> list[np.ndarray]:
    if isinstance(data, tuple) and len(data) in (2, 3) and (
            num_inputs == 1 or isinstance(data[0], (tuple, list, dict))):
        data = data[0]                          # (x, y) or (x, y, weights), as in model.fit
    if isinstance(data, dict):
        missing = [n for n in input_names if n not in data]
        if missing:
            raise ValueError(f"data has no entry for model inputs {missing} "
                             f"(keys: {sorted(data)})")
        return [np.asarray(data[n], np.float32) for n in input_names]
    if isinstance(data, (list, tuple)) and num_inputs > 1:
        if len(data) != num_inputs:
            raise ValueError(f"the model has {num_inputs} inputs, data gives {len(data)} arrays")
        return [np.asarray(d, np.float32) for d in data]
    return [np.asarray(data, np.float32)]


def quantize_like_tflite(x: np.ndarray, scale: float, zero_point: int,
                         dtype: np.dtype) -> np.ndarray:
    """Float -> integer exactly as TFLite's QUANTIZE: ``round_half_away(x / scale) + zp``."""
    info = np.iinfo(dtype)
    scaled = x.astype(np.float32) / np.float32(scale)
    q = np.sign(scaled) * np.floor(np.abs(scaled) + np.float32(0.5)) + zero_point
    return np.clip(q, info.min, info.max).astype(dtype)


def _interpreter(flatbuffer: bytes, reference: bool, preserve: bool = False):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    if reference:
        return Interpreter(model_content=flatbuffer,
                           experimental_op_resolver_type=OpResolverType.BUILTIN_REF,
                           experimental_preserve_all_tensors=preserve)
    return Interpreter(model_content=flatbuffer, num_threads=2)


def io_details(flatbuffer: bytes) -> tuple[list[dict], list[dict]]:
    """The interpreter's input and output details (names, dtypes, shapes, quantization)."""
    interpreter = _interpreter(flatbuffer, reference=True)
    return interpreter.get_input_details(), interpreter.get_output_details()


def keras_order(flatbuffer: bytes, input_names: Sequence[str],
                num_outputs: int) -> tuple[list[int], list[int]]:
    """How the interpreter's inputs and outputs line up with the Keras model's.

    The interpreter lists a multi-input/-output model's tensors in no particular order; its
    serving signature names the inputs after the Keras inputs and the outputs ``output_0``,
    ``output_1``, ... in the Keras order. Without such a signature the orders are taken to
    be the same.

    Args:
        flatbuffer: the ``.tflite`` bytes.
        input_names: the Keras model's input names, in its order.
        num_outputs: the number of Keras model outputs.

    Returns:
        ``(inputs, outputs)``: for every interpreter input (output), in the interpreter's
        order, the position of the matching Keras input (output).
    """
    interpreter = _interpreter(flatbuffer, reference=True)
    in_details = interpreter.get_input_details()
    out_details = interpreter.get_output_details()
    inputs, outputs = list(range(len(in_details))), list(range(len(out_details)))
    signatures = interpreter.get_signature_list()
    if len(signatures) != 1:
        return inputs, outputs
    runner = interpreter.get_signature_runner(next(iter(signatures)))
    by_index = {d["index"]: name for name, d in runner.get_input_details().items()}
    names = [by_index.get(d["index"]) for d in in_details]
    if sorted(n for n in names if n is not None) == sorted(input_names):
        inputs = [list(input_names).index(n) for n in names]
    by_index = {d["index"]: name for name, d in runner.get_output_details().items()}
    names = [by_index.get(d["index"]) for d in out_details]
    keras_names = [f"output_{k}" for k in range(num_outputs)]
    if sorted(n for n in names if n is not None) == sorted(keras_names):
        outputs = [keras_names.index(n) for n in names]
    return inputs, outputs


def tflite_inputs(flatbuffer: bytes, xs: list[np.ndarray]) -> list[np.ndarray]:
    """The arrays to feed the ``.tflite`` model: float as given, integer inputs quantized."""
    inputs, _ = io_details(flatbuffer)
    if len(inputs) != len(xs):
        raise ValueError(f"the TFLite model has {len(inputs)} inputs, the data {len(xs)}")
    fed = []
    for detail, x in zip(inputs, xs):
        expected = tuple(int(d) for d in detail["shape"][1:])
        if tuple(x.shape[1:]) != expected:
            raise ValueError(f"TFLite input {detail['name']!r} has shape (batch, *{expected}), "
                             f"the data {x.shape}: is the .tflite the export of this model?")
        if detail["dtype"] == np.float32:
            fed.append(x.astype(np.float32))
        else:
            scale, zero_point = detail["quantization"]
            fed.append(quantize_like_tflite(x, scale, zero_point, detail["dtype"]))
    return fed


def run_interpreter(flatbuffer: bytes, xs: list[np.ndarray], *, reference: bool,
                    keep: Sequence[int] = (), batch_size: int = 256
                    ) -> tuple[list[np.ndarray], dict[int, np.ndarray]]:
    """Runs the TFLite model on ``xs`` (already in the model's input types) in batches.

    Args:
        flatbuffer: the ``.tflite`` bytes.
        xs: one array per input, as returned by :func:`tflite_inputs`.
        reference: True for the reference kernels (``OpResolverType.BUILTIN_REF``), False for
            the default resolver (XNNPACK, 2 threads).
        keep: tensor indices to return as well (reference kernels only; the interpreter is
            then built with ``experimental_preserve_all_tensors=True``).
        batch_size: samples per invocation.

    Returns:
        ``(outputs, tensors)``: the model outputs in the interpreter's order and the kept
        intermediate tensors by index.
    """
    interpreter = _interpreter(flatbuffer, reference, preserve=bool(keep))
    inputs = interpreter.get_input_details()
    outputs = interpreter.get_output_details()
    total = len(xs[0])
    out_parts: list[list[np.ndarray]] = [[] for _ in outputs]
    kept: dict[int, list[np.ndarray]] = {i: [] for i in keep}
    allocated = None
    for start in range(0, total, batch_size):
        batch = [x[start:start + batch_size] for x in xs]
        if allocated != len(batch[0]):
            for detail, b in zip(inputs, batch):
                interpreter.resize_tensor_input(detail["index"], list(b.shape))
            interpreter.allocate_tensors()
            allocated = len(batch[0])
        for detail, b in zip(inputs, batch):
            interpreter.set_tensor(detail["index"], np.ascontiguousarray(b, detail["dtype"]))
        interpreter.invoke()
        for store, detail in zip(out_parts, outputs):
            store.append(interpreter.get_tensor(detail["index"]).copy())
        for index in keep:
            kept[index].append(interpreter.get_tensor(index).copy())
    return ([np.concatenate(p) for p in out_parts],
            {i: np.concatenate(p) for i, p in kept.items()})
