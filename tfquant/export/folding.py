"""The folded float model: BatchNorm folded into weights, fake-quant removed."""

from __future__ import annotations

import inspect

import keras
import numpy as np

from tfquant.layers.wrapper import QuantizeWrapper
from tfquant.quantizers import Quantizer


def folded_float_model(qmodel: keras.Model, *, quantized_weights: bool = False) -> keras.Model:
    """A float copy of ``qmodel`` with every quantizer removed and folded BNs merged.

    Weighted layers hold ``W * gamma / sigma`` and the bias ``(b - mean) * gamma / sigma +
    beta``, exactly the tensors TFLite sees; their names are those of the float layers, so an
    encodings file can refer to them: a weight is ``"<layer>/<attribute>"`` (its
    ``variable.path``), a standalone quantizer becomes an ``Identity`` layer of the same name
    and a folded BatchNormalization an ``Identity`` under its own name. ``keras.ops`` calls
    of a Functional model (e.g. ``keras.ops.add(a, b)``; no weights) are carried over as
    they are. The model is not compiled (no optimizer state is copied).

    Args:
        qmodel: a quantized model.
        quantized_weights: False (default) keeps the float (BN-folded) weights; True stores
            each quantized weight as its fake-quantized value (``scale * q``), i.e. the
            weights the quantized model computes with (activations stay float).

    Returns:
        The float Keras model.

    Example:
        >>> float_model = folded_float_model(qat)
        >>> on_grid = folded_float_model(qat, quantized_weights=True)
    """
    def clone(layer):
        if isinstance(layer, Quantizer):
            return keras.layers.Identity(name=layer.name)
        if not isinstance(layer, keras.layers.Layer):
            return _clone_operation(layer)
        if not isinstance(layer, QuantizeWrapper):
            return layer.__class__.from_config(layer.get_config())
        inner = layer.layer
        config = inner.get_config()
        if layer.batchnorm is not None and "use_bias" in config:
            config["use_bias"] = True
        return inner.__class__.from_config(config)

    def call(layer, *args, **kwargs):
        accepted = inspect.signature(layer.call).parameters
        if not any(p.kind == p.VAR_KEYWORD for p in accepted.values()):
            kwargs = {k: v for k, v in kwargs.items() if k in accepted}
        return layer(*args, **kwargs)

    pairs = []

    def record(layer):
        new = clone(layer)
        pairs.append((layer, new))
        return new

    float_model = keras.models.clone_model(qmodel, clone_function=record, call_function=call)
    for old, new in pairs:
        if isinstance(old, QuantizeWrapper):
            weights = old.folded_weights()
            if quantized_weights:
                for attr, quantizer in old.weight_quantizers.items():
                    weights[attr] = quantizer(weights[attr], training=False)
            values = [np.asarray(weights[attr]) for attr, _ in old.rule.weights]
            bias = old.folded_bias()
            if bias is not None:
                values.append(bias.numpy())
            new.set_weights(values)
        elif isinstance(old, keras.layers.Layer) and not isinstance(old, Quantizer) \
                and old.weights:
            new.set_weights(old.get_weights())
    # clone_model compiles the copy of a compiled model; exporters want the bare graph.
    return keras.Model(float_model.inputs, float_model.outputs, name=qmodel.name)


def _clone_operation(op: keras.Operation) -> keras.Operation:
    """A copy of a ``keras.ops`` operation (e.g. the ``Add`` of ``keras.ops.add(a, b)``).

    Operations hold no weights; the copy is made from the operation's config, so the folded
    graph does not add a node to ``qmodel``'s own operation. An operation whose config cannot
    rebuild it (arguments Keras cannot serialize) is reused as it is: it is stateless, so both
    graphs compute the same values.
    """
    try:
        return op.__class__.from_config(op.get_config())
    except (NotImplementedError, TypeError, ValueError):
        return op
