"""SQNR and the probing machinery of the analysis tools.

This module holds what every analysis needs:

* :func:`sqnr`: ``10 * log10(signal power / noise power)`` of a quantized tensor against its
  float reference;
* :class:`LayerGroup` / :func:`layer_groups`: the quantizers of a quantized model grouped by the
  float layer they belong to (a ``QuantizeWrapper``'s weight and activation quantizers, or a
  standalone input quantizer);
* :func:`enabled_only`: a context manager that switches every quantizer off except a chosen
  few (``Quantizer.enabled``) and restores the flags afterwards;
* :func:`load_batches` / :func:`predict`: analysis data as in-memory batches and a forward pass
  traced afresh for the current quantizer configuration;
* :func:`layer_sqnr` / :func:`group_sqnr`: per-layer SQNR of the quantized model against its
  float twin (the same model with every quantizer off).

Example:
    >>> qmodel = tfquant.quantize_model(model)
    >>> tfquant.ptq.calibrate(qmodel, x_calib, verbose=0)
    >>> layer_sqnr(qmodel, x_calib)
    {'input_layer_quantizer': 47.9, 'fc1': 38.1, 'fc2': 31.5}
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from keras import tree

from tfquant._retracing import quiet_retracing, reset_compiled_functions
from tfquant.layers.wrapper import QuantizeWrapper
from tfquant.ptq.data import input_specs, iter_batches, pack_inputs
from tfquant.quantizers import Quantizer


# --------------------------------------------------------------------------- SQNR
def sqnr(reference: Any, quantized: Any) -> float:
    """Signal-to-quantization-noise ratio in dB: ``10 * log10(sum(ref^2) / sum((q - ref)^2))``.

    Powers are accumulated in float64 over every element.

    Args:
        reference: the float tensor (array-like).
        quantized: the quantized tensor, same shape.

    Returns:
        The SQNR in dB; ``inf`` when the two are identical, ``-inf`` when the reference is all
        zeros but the quantized tensor is not.

    Raises:
        ValueError: when the shapes differ.

    Example:
        >>> sqnr([1.0, -1.0], [1.1, -0.9])  # signal power 1, noise power 0.01
        20.0
    """
    ref = np.asarray(reference, np.float64)
    q = np.asarray(quantized, np.float64)
    if ref.shape != q.shape:
        raise ValueError(f"sqnr: shapes differ, reference {ref.shape} vs quantized {q.shape}")
    return sqnr_from_powers(float(np.sum(ref * ref)), float(np.sum((q - ref) ** 2)))


def sqnr_from_powers(signal: float, noise: float) -> float:
    """``10 * log10(signal / noise)`` with the conventions of :func:`sqnr` for zeros.

    Example:
        >>> sqnr_from_powers(100.0, 1.0)
        20.0
    """
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return round(10.0 * math.log10(signal / noise), 12)


# ------------------------------------------------------------------------ grouping
@dataclasses.dataclass
class LayerGroup:
    """The quantizers that belong to one float layer of a quantized model.

    Attributes:
        name: the float layer's name (a standalone quantizer's own name, e.g.
            ``"input_layer_quantizer"``, for the quantizers inserted on model inputs or on
            outputs of float layers).
        type: the float layer's class name (``"Quantizer"`` for a standalone quantizer).
        layer: the layer of the quantized model (a ``QuantizeWrapper`` or a ``Quantizer``).
        index: position in the model (graph order).
        weight_quantizers: ``label -> quantizer`` of the layer's weights.
        activation_quantizers: ``label -> quantizer`` of its activations (output, pre-activation,
            intermediate, or the standalone quantizer itself). Labels are ``layer/role`` as in
            :func:`tfquant.export.tflite.all_quantizers`.
    """

    name: str
    type: str
    layer: keras.layers.Layer
    index: int
    weight_quantizers: dict[str, Quantizer] = dataclasses.field(default_factory=dict)
    activation_quantizers: dict[str, Quantizer] = dataclasses.field(default_factory=dict)

    @property
    def quantizers(self) -> dict[str, Quantizer]:
        """Weight and activation quantizers together."""
        return {**self.weight_quantizers, **self.activation_quantizers}

    def output_tensor(self) -> keras.KerasTensor | None:
        """The symbolic output of :attr:`layer` (None for a layer called more than once)."""
        try:
            out = self.layer.output
        except (AttributeError, ValueError):
            return None
        return out if isinstance(out, keras.KerasTensor) else None


def _walk(model: keras.Model) -> Iterator[keras.layers.Layer]:
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _walk(layer)


def layer_groups(qmodel: keras.Model, include_disabled: bool = False) -> list[LayerGroup]:
    """The quantizers of ``qmodel`` grouped per float layer, in graph order.

    Args:
        qmodel: a quantized model (:func:`tfquant.quantize_model`).
        include_disabled: also list quantizers whose ``enabled`` flag is False (by default a
            quantizer switched off by the user is not analysed, and a layer left with none is
            not listed).

    Returns:
        A list of :class:`LayerGroup`.

    Example:
        >>> [g.name for g in layer_groups(qmodel)]
        ['input_layer_quantizer', 'conv', 'relu', 'fc']
    """
    groups = []

    def keep(q: Quantizer) -> bool:
        return include_disabled or q.enabled

    for layer in _walk(qmodel):
        if isinstance(layer, QuantizeWrapper):
            name = layer.layer.name
            weights = {f"{name}/weights/{attr}": q for attr, q in layer.weight_quantizers.items()
                       if keep(q)}
            acts = {f"{name}/{role}": q for role, q in layer.quantizers.items()
                    if not role.startswith("weights/") and keep(q)}
            if weights or acts:
                groups.append(LayerGroup(name, type(layer.layer).__name__, layer, len(groups),
                                         weights, acts))
        elif isinstance(layer, Quantizer) and keep(layer):
            groups.append(LayerGroup(layer.name, "Quantizer", layer, len(groups), {},
                                     {layer.name: layer}))
    return groups


def all_model_quantizers(qmodel: keras.Model) -> list[Quantizer]:
    """Every quantizer of ``qmodel`` (wrapped or standalone), enabled or not."""
    found = []
    for g in layer_groups(qmodel, include_disabled=True):
        found.extend(g.quantizers.values())
    return found


@contextlib.contextmanager
def enabled_only(qmodel: keras.Model, quantizers: Iterable[Quantizer],
                 candidates: Iterable[Quantizer] | None = None) -> Iterator[keras.Model]:
    """Within the block, only ``quantizers`` are enabled among ``candidates``.

    ``candidates`` defaults to the quantizers enabled on entry, so a quantizer the user switched
    off stays off. Every flag is restored on exit, and the model's cached Keras functions are
    dropped on entry and exit (``model.predict``/``evaluate`` re-trace with the new flags).

    Args:
        qmodel: the quantized model.
        quantizers: the quantizers to keep enabled.
        candidates: the quantizers that are toggled (default: those enabled now).

    Yields:
        ``qmodel``.

    Example:
        >>> with enabled_only(qmodel, []):          # the float model
        ...     y_float = qmodel(x, training=False)
    """
    every = all_model_quantizers(qmodel)
    saved = [(q, q.enabled) for q in every]
    pool = [q for q in every if q.enabled] if candidates is None else list(candidates)
    keep = {id(q) for q in quantizers}
    try:
        for q in pool:
            q.enabled = id(q) in keep
        reset_compiled_functions(qmodel)
        yield qmodel
    finally:
        for q, flag in saved:
            q.enabled = flag
        reset_compiled_functions(qmodel)


# ---------------------------------------------------------------------------- data
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


# ----------------------------------------------------------------------- per layer
def probe_model(qmodel: keras.Model, groups: list[LayerGroup]) -> tuple[keras.Model, list[str]]:
    """A model sharing ``qmodel``'s layers whose outputs are the groups' layer outputs.

    Returns:
        ``(probe, names)``: the probe outputs a dict keyed by the names of the groups that have a
        single output tensor.
    """
    outputs = {}
    for g in groups:
        t = g.output_tensor()
        if t is not None:
            outputs[g.name] = t
    return keras.Model(qmodel.inputs, outputs, name=f"{qmodel.name}_probe"), list(outputs)


def accumulate_powers(reference: Mapping[str, np.ndarray], quantized: Mapping[str, np.ndarray]
                      ) -> dict[str, tuple[float, float]]:
    """``name -> (signal power sum, noise power sum)`` of paired tensors (float64 sums)."""
    result = {}
    for name, ref in reference.items():
        r = np.asarray(ref, np.float64)
        q = np.asarray(quantized[name], np.float64)
        result[name] = (float(np.sum(r * r)), float(np.sum((q - r) ** 2)))
    return result


def layer_sqnr(qmodel: keras.Model, data: Any, batch_size: int = 32, steps: int | None = None,
               isolated: bool = False, eager: bool = False) -> dict[str, float]:
    """Per-layer SQNR (dB) of the quantized model's layer outputs against the float model's.

    The float reference is ``qmodel`` itself with every quantizer disabled (BN stays folded,
    which is exact in inference), so no float model is needed. Quantizer flags are restored.

    Args:
        qmodel: a quantized model with its ranges set (calibrated or trained).
        data: analysis inputs (anything :func:`load_batches` accepts; labels are ignored).
        batch_size: batch size for arrays.
        steps: use at most this many batches.
        isolated: when True, each layer's SQNR is measured with only that layer's quantizers
            enabled (its own error); when False (default) with every quantizer enabled (the
            error accumulated up to that layer).
        eager: run eagerly instead of tracing a function per configuration.

    Returns:
        ``layer name -> SQNR in dB`` in graph order (layers called more than once are left out).

    Example:
        >>> s = layer_sqnr(qmodel, x_calib, steps=4)
        >>> min(s, key=s.get)   # the noisiest layer output
        'fc2'
    """
    batches = load_batches(qmodel, data, batch_size, steps)
    accumulated, own = group_sqnr(qmodel, layer_groups(qmodel), batches, eager,
                                  accumulated=not isolated, isolated=isolated)
    return own if isolated else accumulated


def group_sqnr(qmodel: keras.Model, groups: list[LayerGroup], batches: list[Batch],
               eager: bool = False, accumulated: bool = True, isolated: bool = True
               ) -> tuple[dict[str, float], dict[str, float]]:
    """Accumulated and isolated SQNR (dB) of each of ``groups``' output on ``batches``.

    One float reference pass serves both: the accumulated SQNR is measured with every quantizer
    of ``groups`` on, the isolated one per group with only its own on (see :func:`layer_sqnr`).

    Args:
        qmodel, eager: as for :func:`layer_sqnr`.
        groups, batches: from :func:`layer_groups` and :func:`load_batches`.
        accumulated, isolated: which to measure (the other dict is left empty).

    Returns:
        ``(accumulated, isolated)``, each ``group name -> SQNR in dB`` in graph order.

    Example:
        >>> acc, iso = group_sqnr(qmodel, layer_groups(qmodel), load_batches(qmodel, x))
        >>> acc["fc2"], iso["fc2"]     # error accumulated up to fc2, fc2's own error
        (31.5, 36.2)
    """
    probe, names = probe_model(qmodel, groups)
    with enabled_only(qmodel, []):
        reference = predict(probe, batches, eager)
    acc: dict[str, float] = {}
    if accumulated:
        everything = [q for g in groups for q in g.quantizers.values()]
        with enabled_only(qmodel, everything):
            powers = accumulate_powers(reference, predict(probe, batches, eager))
        acc = {n: sqnr_from_powers(*powers[n]) for n in names}
    iso: dict[str, float] = {}
    if isolated:
        by_name = {g.name: g for g in groups}
        for n in names:
            with enabled_only(qmodel, by_name[n].quantizers.values()):
                out = predict(probe, batches, eager)
            iso[n] = sqnr_from_powers(*accumulate_powers({n: reference[n]}, {n: out[n]})[n])
    return acc, iso
