"""SQNR: the dB formula, and per-layer SQNR of a quantized model against its float twin.

* :func:`sqnr` / :func:`sqnr_from_powers`: ``10 * log10(signal power / noise power)`` of a
  quantized tensor against its float reference;
* :func:`layer_sqnr` / :func:`group_sqnr`: per-layer SQNR of the quantized model against its
  float twin (the same model with every quantizer off).

The probing machinery they run on lives next to this module and is re-exported here: the
quantizers grouped per float layer and :func:`enabled_only` in :mod:`tfquant.analysis.groups`,
the analysis data and the forward pass in :mod:`tfquant.analysis.batches`.

Example:
    >>> qmodel = tfquant.quantize_model(model)
    >>> tfquant.ptq.calibrate(qmodel, x_calib, verbose=0)
    >>> layer_sqnr(qmodel, x_calib)
    {'input_layer_quantizer': 47.9, 'fc1': 38.1, 'fc2': 31.5}
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import keras
import numpy as np

# the probing machinery, re-exported: analysis modules and tests import it from here
from tfquant.analysis.batches import (  # noqa: F401 - re-exported
    Batch, _is_xy, _signature, _slice, load_batches, predict)
from tfquant.analysis.groups import (  # noqa: F401 - re-exported
    LayerGroup, _walk, all_model_quantizers, enabled_only, layer_groups)


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
