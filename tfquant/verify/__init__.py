"""``tfquant.verify``: does the exported ``.tflite`` compute what the Keras model computes?

Runs the same inputs through four executions and compares them with TFLite's reference kernels:

1. the Keras fake-quant model (``qmodel``);
2. the integer simulator, :meth:`tfquant.simulate.IntegerModel.from_tflite` of the file;
3. the TFLite interpreter with the reference kernels (``OpResolverType.BUILTIN_REF``), every
   intermediate tensor kept (``experimental_preserve_all_tensors=True``): the oracle;
4. the TFLite interpreter on its default path (XNNPACK), reported only.

Intermediate tensors are matched to Keras layers by the layer names the converter keeps in the
tensor names (:mod:`tfquant.verify.matching`), giving a per-layer table that names the first
layer where two executions disagree.

Example:
    >>> data = tfquant.export.tflite(qat, "m.tflite")                 # doctest: +SKIP
    >>> report = tfquant.verify(qat, "m.tflite", x_test)              # doctest: +SKIP
    >>> report.bit_exact_fraction, report.max_abs_diff_lsb            # doctest: +SKIP
    (1.0, 1.0)
    >>> print(report)                                                 # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import numpy as np

from tfquant.layers.wrapper import QuantizeWrapper
from tfquant.verify.execute import (collect_inputs, io_details, keras_order,
                                    run_interpreter, tflite_inputs)
from tfquant.verify.local import local_outputs
from tfquant.verify.matching import layer_for_tensor, match_tensors
from tfquant.verify.report import (MIN_LOCAL_EXACT, MIN_WITHIN_1LSB, LayerComparison,
                                   VerificationReport,
                                   lsb_diff, within_1lsb)

__all__ = ["verify", "VerificationReport", "LayerComparison", "MIN_LOCAL_EXACT",
           "MIN_WITHIN_1LSB",
           "layer_for_tensor", "match_tensors"]

_ACTIVATION_DTYPES = (np.int8, np.int16, np.uint8, np.float32)


_RESHAPES = ("RESHAPE", "SQUEEZE", "EXPAND_DIMS")


def _describe(flatbuffer: bytes) -> tuple[list[dict], dict[int, dict], dict[int, int]]:
    """Op outputs ``[{position, op, index, computed_by}]`` (activations only, execution order;
    ``computed_by``: the op whose arithmetic made the values, looking through reshapes), tensor
    details by index, and the int8 source of each DEQUANTIZE output."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=flatbuffer)
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    rows, dequantized, computed_by = [], {}, {}
    for op in interpreter._get_ops_details():  # noqa: SLF001 - the public API has no op list
        if op["op_name"] == "DEQUANTIZE":
            dequantized[int(op["outputs"][0])] = int(op["inputs"][0])
        inputs = [int(i) for i in op["inputs"] if int(i) >= 0]
        # a QUANTIZE of an integer tensor moves values to another grid (the converter inserts
        # one where a tensor feeds an op that needs its inputs on a shared grid)
        requantize = op["op_name"] == "QUANTIZE" and bool(inputs) and \
            tensors[inputs[0]]["dtype"] in _ACTIVATION_DTYPES
        # the op whose arithmetic produced the values (reshapes only move them; a concatenation
        # copies its inputs, some of which a requantize may have rounded)
        source = "REQUANTIZE" if requantize else op["op_name"]
        if source in _RESHAPES and inputs and inputs[0] in computed_by:
            source = computed_by[inputs[0]]
        if source == "CONCATENATION" and any(computed_by.get(i) == "REQUANTIZE" for i in inputs):
            source = "REQUANTIZE"
        for index in op["outputs"]:
            computed_by[int(index)] = source
            detail = tensors.get(int(index))
            if detail is not None and detail["dtype"] in _ACTIVATION_DTYPES:
                rows.append({"position": int(op["index"]), "op": op["op_name"],
                             "index": int(index), "computed_by": source,
                             "requantize": bool(requantize)})
    return rows, tensors, dequantized


_SIMULATORS: dict[bytes, Any] = {}
_CACHE_SIZE = 4


def _simulator(flatbuffer: bytes):
    """``IntegerModel.from_tflite``, cached for the last few models: verifying the same file
    again reuses its XLA compilation (most of a small model's verification time)."""
    from tfquant.simulate import IntegerModel

    key = hashlib.sha256(flatbuffer).digest()
    if key not in _SIMULATORS:
        while len(_SIMULATORS) >= _CACHE_SIZE:
            _SIMULATORS.pop(next(iter(_SIMULATORS)))
        _SIMULATORS[key] = IntegerModel.from_tflite(flatbuffer)
    return _SIMULATORS[key]


def _quant(detail: dict) -> tuple[float | None, int | None]:
    scale, zero_point = detail["quantization"]
    return (float(scale), int(zero_point)) if scale else (None, None)


def _output_step(detail: dict, tensors: dict[int, dict], dequantized: dict[int, int]
                 ) -> float | None:
    """1 LSB of a model output (a float output: the scale of its DEQUANTIZE's input)."""
    scale, _ = _quant(detail)
    source = dequantized.get(int(detail["index"]))
    if scale is None and source is not None:
        scale, _ = _quant(tensors[source])
    return scale


def _dequantize(q: np.ndarray, detail: dict) -> np.ndarray:
    scale, zero_point = _quant(detail)
    if scale is None or q.dtype == np.float32:
        return q.astype(np.float64)
    return scale * (q.astype(np.float64) - zero_point)


def _keras_layers(qmodel) -> list:
    return [layer for layer in qmodel.layers if not type(layer).__name__ == "InputLayer"]


def _display_name(layer) -> str:
    inner = getattr(layer, "layer", None)
    return inner.name if inner is not None and hasattr(inner, "name") else layer.name


def _pre_activation(wrapper, x: np.ndarray, batch_size: int) -> np.ndarray:
    """The quantized pre-activation of a QuantizeWrapper whose activation TFLite runs as its
    own op (a Dense with softmax): the tensor TFLite writes before that op."""
    import tensorflow as tf

    parts = []
    for start in range(0, len(x), batch_size):
        y = wrapper._weighted_call(tf.constant(x[start:start + batch_size]),  # noqa: SLF001
                                   training=False)
        parts.append(np.asarray(wrapper.pre_activation_quantizer(y, training=False)))
    return np.concatenate(parts)


def _run_keras(qmodel, xs: list[np.ndarray], layer_names: list[str], pre_names: list[str],
               batch_size: int) -> tuple[list[np.ndarray], dict[str, np.ndarray],
                                         dict[str, np.ndarray]]:
    """Model outputs, the outputs of ``layer_names`` and the pre-activations of ``pre_names``
    (empty dicts when the layers cannot be probed, e.g. layers called more than once)."""
    import keras

    arg = xs[0] if len(xs) == 1 else xs
    outputs = qmodel.predict(arg, batch_size=batch_size, verbose=0)
    outputs = list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]
    outputs = [np.asarray(o) for o in outputs]
    if not layer_names and not pre_names:
        return outputs, {}, {}
    try:
        probe = keras.Model(qmodel.inputs,
                            [qmodel.get_layer(n).output for n in layer_names]
                            + [qmodel.get_layer(n).input for n in pre_names])
        values = probe.predict(arg, batch_size=batch_size, verbose=0)
    except (ValueError, AttributeError, TypeError):
        return outputs, {}, {}
    values = list(values) if isinstance(values, (list, tuple)) else [values]
    layer_values = dict(zip(layer_names, values))
    pre_values = {n: _pre_activation(qmodel.get_layer(n), v, batch_size)
                  for n, v in zip(pre_names, values[len(layer_names):])}
    return outputs, layer_values, pre_values


def _pre_activation_tensors(rows: list[dict], tensors: dict[int, dict], layers: list,
                            matched: dict[int, str]) -> dict[int, str]:
    """TFLite tensor -> wrapper name for the pre-activations of wrappers that have one."""
    names = [layer.name for layer in layers]
    outputs = {layer: index for index, layer in matched.items()}
    found = {}
    for layer in layers:
        if getattr(layer, "pre_activation_quantizer", None) is None or layer.name not in outputs:
            continue
        earlier = [r["index"] for r in rows
                   if layer_for_tensor(tensors[r["index"]]["name"], names) == layer.name
                   and r["index"] != outputs[layer.name]]
        if earlier:
            found[earlier[-1]] = layer.name
    return found


def verify(qmodel: Any, tflite: str | os.PathLike | bytes, data: Any, *, per_layer: bool = True,
           xnnpack: bool = True, max_samples: int | None = None,
           batch_size: int = 256) -> VerificationReport:
    """Compares a quantized Keras model, the integer simulator and TFLite on the same inputs.

    Args:
        qmodel: the quantized Keras model (QAT or calibrated) the ``.tflite`` was exported from.
        tflite: path or flatbuffer bytes of its int8 export (int8 or float32 inputs/outputs).
        data: float inputs: an array, a list of arrays (multi-input), a dict by input name,
            an ``(x, y)`` tuple of these, or a ``tf.data.Dataset`` (``(x, y)`` elements are
            fine); labels are ignored.
            int8-input models get the data quantized as TFLite's QUANTIZE op does.
        per_layer: also compare every intermediate tensor (the per-layer table).
        xnnpack: also run TFLite's default path (XNNPACK) and report its agreement.
        max_samples: use at most this many samples.
        batch_size: samples per interpreter / Keras call.

    Returns:
        A :class:`VerificationReport`: ``bit_exact_fraction`` (simulator vs reference kernels),
        ``max_abs_diff_lsb`` / ``within_1lsb_fraction`` (Keras vs reference), XNNPACK figures,
        and ``per_layer`` rows; ``str(report)`` is a table, ``report.to_dict()`` JSON-ready.

    Raises:
        FileNotFoundError: the ``.tflite`` path does not exist.
        ValueError: the file is not a valid TFLite model, or the data does not fit the model.

    Example:
        >>> report = tfquant.verify(qat, "m.tflite", x_test[:256])       # doctest: +SKIP
        >>> assert report.bit_exact_fraction == 1.0                      # doctest: +SKIP
        >>> report.first_disagreeing_layer                               # doctest: +SKIP
    """
    from tfquant.simulate import UnsupportedModelError
    from tfquant.simulate.tflite_reader import load_tflite_bytes

    flatbuffer = load_tflite_bytes(tflite)
    input_names = [getattr(t, "name", f"input_{i}") for i, t in enumerate(qmodel.inputs)]
    xs = collect_inputs(data, len(qmodel.inputs), input_names, max_samples)
    # the interpreter's input/output order can differ from the Keras model's
    input_order, output_order = keras_order(flatbuffer, input_names, len(qmodel.outputs))
    fed = tflite_inputs(flatbuffer, [xs[i] for i in input_order]
                        if len(input_order) == len(xs) else xs)
    in_details, out_details = io_details(flatbuffer)

    rows, tensors, dequantized = _describe(flatbuffer)
    keep = [r["index"] for r in rows] if per_layer else []
    ref_out, ref_all = run_interpreter(flatbuffer, fed, reference=True, keep=keep,
                                       batch_size=batch_size)

    # the integer simulator
    sim_out = sim_all = None
    simulator_error = None
    try:
        sim = _simulator(flatbuffer)
        sim_all = sim.run(*fed, return_all=True, key="index")
        sim_out = [sim_all[i] for i in sim.graph.outputs]
    except UnsupportedModelError as err:
        simulator_error = str(err)

    # Keras, its layers matched to TFLite tensors
    layers = _keras_layers(qmodel)
    names = [layer.name for layer in layers]
    matched = match_tensors([(r["index"], tensors[r["index"]]["name"]) for r in rows], names,
                            requantized={r["index"] for r in rows if r["requantize"]}) \
        if per_layer else {}
    # No per-layer Keras figure for a layer called more than once (one Keras output per call,
    # and ``layer.output`` is the first call's) or for a quantized layer without an output
    # quantizer (an activation fused into it, or a Concatenate, rounds it: its output is float).
    unmatched = {layer.name for layer in layers
                 if len(getattr(layer, "_inbound_nodes", ())) > 1
                 or (isinstance(layer, QuantizeWrapper) and layer.output_quantizer is None)}
    matched = {index: name for index, name in matched.items() if name not in unmatched}
    pre = _pre_activation_tensors(rows, tensors, layers, matched) if per_layer else {}
    keras_out, keras_layers, keras_pre = _run_keras(
        qmodel, xs, sorted(set(matched.values()), key=names.index), sorted(set(pre.values())),
        batch_size)
    if len(keras_out) != len(ref_out):
        raise ValueError(f"the TFLite model has {len(ref_out)} outputs, the Keras model "
                         f"{len(keras_out)}: is the .tflite the export of this model?")
    keras_out = [keras_out[k] for k in output_order]              # in the interpreter's order

    # model outputs
    steps = [_output_step(d, tensors, dequantized) for d in out_details]
    diffs, exact, xnn_exact, xnn_diffs, argmax = [], [], [], [], []
    xnn_out = run_interpreter(flatbuffer, fed, reference=False, batch_size=batch_size)[0] \
        if xnnpack else None
    for k, (detail, step) in enumerate(zip(out_details, steps)):
        ref_val = _dequantize(ref_out[k], detail)
        keras_val = keras_out[k].reshape(ref_val.shape)
        diffs.append(lsb_diff(keras_val, ref_val, step).reshape(-1))
        if ref_val.ndim == 2 and ref_val.shape[1] > 1:
            argmax.append(np.mean(keras_val.argmax(1) == ref_val.argmax(1)))
        if sim_out is not None:
            exact.append((sim_out[k].reshape(ref_out[k].shape) == ref_out[k]).reshape(-1))
        if xnn_out is not None:
            xnn_exact.append((xnn_out[k] == ref_out[k]).reshape(-1))
            xnn_diffs.append(lsb_diff(_dequantize(xnn_out[k], detail), ref_val, step).reshape(-1))
    diff = np.concatenate(diffs)
    counts = np.bincount(np.rint(diff).astype(np.int64)) if diff.size else np.zeros(0, int)

    # per-layer differences made by each layer itself (recomputed from the reference inputs)
    local, local_pre = {}, {}
    if per_layer and keras_layers:
        reference = {}
        for index, layer in matched.items():
            value = keras_layers.get(layer)
            if value is not None and value.size == ref_all[index].size:
                reference[layer] = _dequantize(ref_all[index], tensors[index]).reshape(
                    value.shape).astype(np.float32)
        local, pre_inputs = local_outputs(qmodel, xs, reference, list(reference),
                                          sorted(set(pre.values())), batch_size)
        local_pre = {n: _pre_activation(qmodel.get_layer(n), v, batch_size)
                     for n, v in pre_inputs.items()}

    # per-layer table
    table = []
    all_exact = None if sim_all is None else True
    for r in rows:
        index = r["index"]
        detail = tensors[index]
        if index not in ref_all:
            continue
        ref_val = ref_all[index]
        sim_frac = None
        if sim_all is not None and index in sim_all:
            sim_val = sim_all[index]
            same = sim_val.shape == ref_val.shape and bool(np.array_equal(sim_val, ref_val))
            sim_frac = 1.0 if same else (float(np.mean(sim_val == ref_val))
                                         if sim_val.shape == ref_val.shape else 0.0)
            all_exact = all_exact and same
        layer = matched.get(index) or pre.get(index)
        value = keras_layers.get(matched.get(index)) if index in matched else \
            keras_pre.get(pre.get(index))
        local_value = local.get(matched.get(index)) if index in matched else \
            local_pre.get(pre.get(index))
        k_max = k_within = k_exact = k_local = k_local_max = None
        scale, zero_point = _quant(detail)
        if value is not None and value.size == ref_val.size:
            d = lsb_diff(value.reshape(ref_val.shape), _dequantize(ref_val, detail), scale)
            k_max, k_within = float(np.round(d.max(), 3)), within_1lsb(d)
            k_exact = float(np.mean(d < 0.5))
        if local_value is not None and local_value.size == ref_val.size:
            d = lsb_diff(local_value.reshape(ref_val.shape), _dequantize(ref_val, detail), scale)
            k_local = float(np.mean(d < 0.5))
            k_local_max = float(np.round(d.max(), 3)) if d.size else 0.0
        label = None
        if layer is not None:
            label = _display_name(qmodel.get_layer(layer))
            label += " (pre-activation)" if index in pre else ""
        table.append(LayerComparison(
            position=r["position"], op=r["op"], tensor=detail["name"], layer=label,
            scale=scale, zero_point=zero_point, bit_exact_fraction=sim_frac,
            keras_exact_fraction=k_exact, keras_local_exact_fraction=k_local,
            max_abs_diff_lsb=k_max, within_1lsb_fraction=k_within,
            keras_local_max_diff_lsb=k_local_max,
            computed_by=r["computed_by"] if r["computed_by"] != r["op"] else None,
            bits=16 if np.dtype(detail["dtype"]) == np.int16 else 8))

    return VerificationReport(
        samples=len(xs[0]),
        bit_exact_fraction=None if sim_out is None else float(np.mean(np.concatenate(exact))),
        simulator_all_tensors_exact=all_exact if per_layer else None,
        max_abs_diff_lsb=float(np.round(diff.max(), 3)) if diff.size else 0.0,
        mean_abs_diff_lsb=float(diff.mean()) if diff.size else 0.0,
        within_1lsb_fraction=within_1lsb(diff),
        diff_histogram={i: int(c) for i, c in enumerate(counts) if c},
        argmax_agreement=float(np.mean(argmax)) if argmax else None,
        xnnpack_bit_exact_fraction=(float(np.mean(np.concatenate(xnn_exact)))
                                    if xnn_out is not None else None),
        xnnpack_max_abs_diff_lsb=(float(np.round(np.concatenate(xnn_diffs).max(), 3))
                                  if xnn_out is not None else None),
        per_layer=table, simulator_error=simulator_error,
        io_types=(np.dtype(in_details[0]["dtype"]).name, np.dtype(out_details[0]["dtype"]).name))
