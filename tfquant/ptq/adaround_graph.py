"""AdaRound's view of the model graph: which layers it optimises and what reaches them.

:func:`adaroundable_layers` lists the weighted layers AdaRound can round, :func:`layer_consumers`
and :func:`fused_activation` find the ReLU/ReLU6 TFLite fuses after a layer (the reconstruction
is taken after it; :func:`relu_after` is the walk past folded BatchNormalizations, shared with
:func:`tfquant.ptq.auto.layer_groups`), and :func:`collect_layer_data` runs the model up to a layer's input, with
the quantizers on or off. The driver is :func:`tfquant.ptq.adaround.adaround`.

Example:
    >>> consumers = layer_consumers(qmodel)
    >>> for wrapper in adaroundable_layers(qmodel):
    ...     act = fused_activation(wrapper, consumers)
    ...     x_hat = collect_layer_data(qmodel, wrapper, [x_calib])
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import keras
import numpy as np

from tfquant.layers.registry import activation_name
from tfquant.layers.wrapper import QuantizeWrapper
from tfquant.ptq.data import input_specs, iter_batches, pack_inputs
from tfquant.quantizers import Quantizer

#: Activations a reconstruction may be taken after (they are fused into the layer by TFLite).
RECONSTRUCT_AFTER = ("relu", "relu6")

__all__ = ["adaroundable_layers", "collect_layer_data", "fused_activation", "layer_consumers",
           "relu_after", "RECONSTRUCT_AFTER"]


def _all_quantizers(model: keras.Model) -> list[Quantizer]:
    found = []
    for layer in model.layers:
        if isinstance(layer, Quantizer):
            found.append(layer)
        elif isinstance(layer, QuantizeWrapper):
            found.extend(layer.quantizers.values())
    return found


def layer_consumers(model: keras.Model) -> dict[int, list[Any]]:
    """``id(layer) -> [layers reading its output]`` in a Functional model."""
    result: dict[int, list[Any]] = {}
    for nodes in model._nodes_by_depth.values():  # noqa: SLF001 - Functional graph walk
        for node in nodes:
            if node.operation is None or node.is_input:
                continue
            for t in node.input_tensors:
                result.setdefault(id(t._keras_history.operation), []).append(node.operation)
    return result


def fused_activation(wrapper: QuantizeWrapper, consumers: dict | None = None
                     ) -> Callable | None:
    """The ReLU/ReLU6 applied to ``wrapper``'s output before it is quantized, if any: its own
    activation, or a ReLU layer that TFLite fuses into it (after a folded BN's stand-in).

    Args:
        wrapper: a weighted layer's wrapper.
        consumers: :func:`layer_consumers` of its model (None: follow the layers' outbound
            nodes, right when the wrapper belongs to a single model).

    Example:
        >>> fused_activation(qmodel.get_layer("quant_conv1"), layer_consumers(qmodel))
        <ReLU name=relu1, built=True>
    """
    own = activation_name(getattr(wrapper.layer, "activation", None))
    if own in RECONSTRUCT_AFTER:
        return wrapper.layer.activation
    if own != "linear" or wrapper.quantize_output:
        return None
    relu, _ = relu_after(wrapper, consumers)
    return None if relu is None else relu.layer


def relu_after(op: Any, consumers: dict | None = None
               ) -> tuple[QuantizeWrapper | None, list[keras.layers.Layer]]:
    """Follows ``op``'s output past folded BatchNormalizations to a ReLU/ReLU6 layer.

    The walk goes from layer to layer while each has a single consumer; an ``Identity`` (the
    stand-in :func:`tfquant.quantize_model` leaves for a folded BatchNormalization) is
    passed, and the first other layer ends it. The caller decides whether ``op`` may fuse an
    activation at all (:func:`fused_activation`, :func:`tfquant.ptq.auto.layer_groups`).

    Args:
        op: a layer of a Functional model (usually a weighted layer's wrapper).
        consumers: :func:`layer_consumers` of its model (None: follow the layers' outbound
            nodes, right when ``op`` belongs to a single model).

    Returns:
        ``(relu, passed)``: the wrapper of the ReLU/ReLU6 activation layer the walk ends on
        (None when it ends elsewhere, or at a layer with no or several consumers), and the
        ``Identity`` layers passed on the way, in order, whatever the walk ends on.

    Example:
        >>> relu, folded = relu_after(qmodel.get_layer("quant_conv1"), layer_consumers(qmodel))
        >>> relu.layer.name, [bn.name for bn in folded]
        ('relu1', ['bn1'])
    """
    def following(layer) -> list[Any]:
        if consumers is not None:
            return consumers.get(id(layer), [])
        return [node.operation for node in getattr(layer, "_outbound_nodes", [])]

    passed: list[keras.layers.Layer] = []
    while True:
        after = following(op)
        if len(after) != 1:
            return None, passed
        op = after[0]
        if not isinstance(op, keras.layers.Identity):
            break
        passed.append(op)  # stands in for a folded BatchNormalization
    if (isinstance(op, QuantizeWrapper) and op.rule.kind == "activation"
            and activation_name(op.layer) in RECONSTRUCT_AFTER):
        return op, passed
    return None, passed


def adaroundable_layers(qmodel: keras.Model) -> list[QuantizeWrapper]:
    """The wrappers AdaRound can optimise, in topological order: weighted layers with exactly
    one enabled weight quantizer, called once in the model.

    Example:
        >>> [w.layer.name for w in adaroundable_layers(qmodel)]
        ['conv1', 'conv2', 'predictions']
    """
    found = []
    for op in qmodel.operations:
        if not isinstance(op, QuantizeWrapper) or op.rule.kind != "weighted":
            continue
        if len(op.weight_quantizers) != 1 or len(op._inbound_nodes) != 1:  # noqa: SLF001
            continue
        if not next(iter(op.weight_quantizers.values())).enabled:
            continue
        found.append(op)
    return found


def _input_tensor(wrapper: QuantizeWrapper):
    tensors = wrapper._inbound_nodes[0].input_tensors  # noqa: SLF001
    if len(tensors) != 1:
        raise ValueError(f"layer {wrapper.layer.name!r} has {len(tensors)} inputs; AdaRound "
                         "handles single-input layers")
    return tensors[0]


def _take_batches(qmodel: keras.Model, data: Any, batch_size: int,
                  num_batches: int | None) -> list[Any]:
    """Up to ``num_batches`` checked batches of ``data`` (the rules of
    :func:`tfquant.ptq.data.iter_batches`), packed the way ``qmodel`` is called."""
    batches = []
    try:
        for arrays in iter_batches(data, input_specs(qmodel), batch_size, num_batches):
            batches.append(pack_inputs(qmodel, [a.astype(np.float32, copy=False)
                                                if a.dtype.kind == "f" else a
                                                for a in arrays]))
    except ValueError as err:
        raise ValueError(f"AdaRound: {err}") from err
    return batches


def _split(batches: list[Any], size: int) -> list[Any]:
    """Re-batches ``batches`` into chunks of at most ``size`` samples (for memory)."""
    out = []
    for x in batches:
        n = int(keras.tree.flatten(x)[0].shape[0])
        for start in range(0, n, size):
            out.append(keras.tree.map_structure(lambda t: t[start:start + size], x))
    return out


class _Toggle:
    """Context manager: every quantizer of a model disabled (float model) inside."""

    def __init__(self, model: keras.Model):
        self.quantizers = _all_quantizers(model)

    def __enter__(self):
        self.saved = [q.enabled for q in self.quantizers]
        for q in self.quantizers:
            q.enabled = False
        return self

    def __exit__(self, *exc):
        for q, flag in zip(self.quantizers, self.saved):
            q.enabled = flag
        return False


def collect_layer_data(qmodel: keras.Model, wrapper: QuantizeWrapper, batches: Sequence[Any],
                       quantized: bool = True) -> np.ndarray:
    """The input of ``wrapper`` in ``qmodel`` for every sample of ``batches``.

    Args:
        qmodel: the quantized model.
        wrapper: one of its :class:`QuantizeWrapper` layers.
        batches: model-input batches.
        quantized: True: the input as the quantized model computes it (every quantizer as it
            is now); False: with every quantizer disabled (the float model, current weights).

    Returns:
        The concatenated inputs, float32 numpy.

    Example:
        >>> x_hat = collect_layer_data(qmodel, qmodel.get_layer("quant_conv2"), [x])
    """
    tensor = _input_tensor(wrapper)
    inputs = qmodel.inputs[0] if len(qmodel.inputs) == 1 else qmodel.inputs
    sub = keras.Model(inputs, tensor)
    outs = []

    def run():
        # Eager calls: quantizers read their ``enabled`` flag when called, and a fresh
        # tf.function per layer would retrace (and warn) for every layer.
        for x in batches:
            outs.append(np.asarray(sub(x, training=False)))

    if quantized:
        run()
    else:
        with _Toggle(qmodel):
            run()
    return np.concatenate(outs, axis=0)
