"""Per-layer differences that ORIGINATE at a layer (not carried in from earlier layers).

Comparing each Keras layer output with TFLite's tensor mixes two things: the layer's own
rounding differences and the 1-LSB differences it received from the layers before. To tell them
apart, :func:`local_outputs` recomputes every matched Keras layer from the TFLite reference
kernels' values of its inputs (dequantized): any difference left is made by that layer alone.

Example:
    >>> local = local_outputs(qmodel, xs, {"pool1": ref_pool1, ...}, ["relu2"])  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _history(tensor: Any):
    history = getattr(tensor, "_keras_history", None)
    if history is None:
        raise ValueError("not a symbolic Keras tensor")
    return history[0], history[1], history[2]


def _reads_shared_layer(layer: Any) -> bool:
    """Whether one of ``layer``'s inputs comes from a layer called more than once."""
    for tensor in layer._inbound_nodes[0].input_tensors:
        producer = getattr(tensor, "_keras_history", None)
        if producer is not None and len(producer[0]._inbound_nodes) > 1:
            return True
    return False


def local_outputs(qmodel: Any, xs: list[np.ndarray], reference: dict[str, np.ndarray],
                  targets: list[str], input_targets: list[str] = (),
                  batch_size: int = 256) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Each target layer's output, computed from the reference values of the layers before it.

    Args:
        qmodel: a functional Keras model.
        xs: the float model inputs.
        reference: layer name -> float value of that layer's output in the reference execution
            (already dequantized, same shape as the Keras output).
        targets: the layers to recompute (each from its inputs; its own reference is not used).
        input_targets: layers whose (single) input to return, from the reference values.
        batch_size: samples per evaluation.

    Returns:
        ``(outputs, inputs)``: layer name -> recomputed output, and layer name -> its input
        (layers that cannot be recomputed from reference values alone are left out: layers
        called more than once, and layers reading one).
    """
    inputs = {id(t): i for i, t in enumerate(qmodel.inputs)}
    results: dict[str, list[np.ndarray]] = {t: [] for t in targets}
    input_results: dict[str, list[np.ndarray]] = {t: [] for t in input_targets}
    for start in range(0, len(xs[0]), batch_size):
        cache: dict[int, Any] = {}
        stop = start + batch_size

        def value(tensor, use_reference: bool = True):
            key = (id(tensor), use_reference)
            if key in cache:
                return cache[key]
            if id(tensor) in inputs:
                out = xs[inputs[id(tensor)]][start:stop]
            else:
                layer, node_index, tensor_index = _history(tensor)
                if use_reference and layer.name in reference and len(layer._inbound_nodes) == 1:
                    out = reference[layer.name][start:stop]
                else:
                    node = layer._inbound_nodes[node_index]
                    values = {id(t): value(t) for t in node.input_tensors}
                    args, kwargs = node.arguments.fill_in(values)
                    out = layer(*args, **kwargs)
                    if isinstance(out, (list, tuple)):
                        out = out[tensor_index]
                    out = np.asarray(out)
            cache[key] = out
            return out

        for store, attribute, use_reference in ((results, "output", False),
                                                (input_results, "input", True)):
            for name in list(store):
                try:
                    layer = qmodel.get_layer(name)
                    if len(layer._inbound_nodes) != 1:
                        raise ValueError("layer called more than once")
                    if attribute == "output" and _reads_shared_layer(layer):
                        # a shared layer has no single reference value: the recomputed input
                        # would carry that layer's own differences into this one's
                        raise ValueError("input from a layer called more than once")
                    store[name].append(value(getattr(layer, attribute), use_reference))
                except (ValueError, AttributeError, TypeError, KeyError, IndexError):
                    store.pop(name)
    return ({name: np.concatenate(parts) for name, parts in results.items() if parts},
            {name: np.concatenate(parts) for name, parts in input_results.items() if parts})
