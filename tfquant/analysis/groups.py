"""The quantizers of a quantized model grouped per float layer, and switching them on and off.

* :class:`LayerGroup` / :func:`layer_groups`: the quantizers of a quantized model grouped by the
  float layer they belong to (a ``QuantizeWrapper``'s weight and activation quantizers, or a
  standalone input quantizer);
* :func:`all_model_quantizers`: every quantizer of the model, enabled or not;
* :func:`enabled_only`: a context manager that switches every quantizer off except a chosen
  few (``Quantizer.enabled``) and restores the flags afterwards.

Every analysis compares configurations of one quantized model this way.

Example:
    >>> [g.name for g in layer_groups(qmodel)]
    ['input_layer_quantizer', 'conv', 'relu', 'fc']
    >>> with enabled_only(qmodel, layer_groups(qmodel)[1].quantizers.values()):
    ...     y_conv_only = qmodel(x, training=False)      # only conv's quantizers on
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterable, Iterator

import keras

from tfquant._retracing import reset_compiled_functions
from tfquant.layers.wrapper import QuantizeWrapper
from tfquant.quantizers import Quantizer


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
    """Every quantizer of ``qmodel`` (wrapped or standalone), enabled or not.

    Example:
        >>> all(q.enabled for q in all_model_quantizers(tfquant.quantize_model(model)))
        True
    """
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
