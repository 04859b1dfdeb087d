"""Exact BatchNormalization folding of a float model, and layer-by-layer model rebuilding.

``fold_batchnorm`` merges each BatchNormalization into the Conv / Depthwise / Dense (and
separable / transposed conv) layer before it: the new layer holds ``W * g`` and the bias
``(b - mean) * g + beta`` with ``g = gamma / sqrt(moving_var + eps)``, computed by
:meth:`tfquant.QuantizeWrapper.folded_weights` / ``folded_bias`` (the folding math lives there
only), and the BN disappears from the graph. Which BNs fold is decided by the annotator's plan
(the BN folds wherever ``quantize_model`` would fold it), restricted to producers without a
built-in non-linear activation (``Conv2D(activation="relu")`` then BN cannot be folded).

Example:
    >>> folded = fold_batchnorm(model)            # same outputs, no BatchNormalization
    >>> folded, stats = fold_batchnorm(model, with_statistics=True)
    >>> stats["conv1"].mean                      # BN beta: mean of conv1's new output
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
import keras
import numpy as np

from tfquant.annotate import _flat_copy, _plan
from tfquant.layers.registry import activation_name, rule_for
from tfquant.layers.wrapper import QuantizeWrapper
from tfquant.specs import LayerSpec, QuantConfig


@dataclasses.dataclass
class OutputStatistics:
    """Per-channel distribution of a layer's pre-activation output, from a folded BN.

    After folding, the layer's output is what the BN produced: per channel approximately
    ``N(beta, gamma^2)`` (Nagel et al. 2019). CLE rescales these with the channels; bias
    absorption and analytic bias correction read them.

    Attributes:
        batchnorm: name of the BatchNormalization the statistics come from.
        mean: ``beta`` per output channel (0 without ``center``).
        std: ``|gamma|`` per output channel (1 without ``scale``).
    """

    batchnorm: str
    mean: np.ndarray
    std: np.ndarray


def rebuild(model: keras.Model, edit: Callable[[keras.layers.Layer, dict], dict] | None = None,
            drop: frozenset[int] = frozenset(),
            weights: Callable[[keras.layers.Layer, keras.layers.Layer], list | None] | None = None
            ) -> keras.Model:
    """Copies a Functional model with fresh layers (one node each), weights copied.

    Args:
        model: a Functional model.
        edit: ``edit(old_layer, config) -> config`` adjusts a layer's config before the copy.
        drop: ``id`` of single-input layers to remove (their input takes their place).
        weights: ``weights(old, new)`` returns the new layer's weights (None: copy the old).

    Returns:
        The new model; ``model`` is not modified.
    """
    pairs = []

    def clone(op):
        if not isinstance(op, keras.layers.Layer) or id(op) in drop:
            return op
        config = op.get_config()
        if edit is not None:
            config = edit(op, config)
        new = op.__class__.from_config(config)
        pairs.append((op, new))
        return new

    def call(layer, *args, **kwargs):
        if id(layer) in drop:
            return args[0]
        return layer(*args, **kwargs)

    new_model = keras.models.clone_model(model, clone_function=clone, call_function=call)
    for old, new in pairs:
        values = weights(old, new) if weights is not None else None
        new.set_weights(old.get_weights() if values is None else values)
    return new_model


def _foldable_pairs(flat: keras.Model) -> dict[int, keras.layers.Layer]:
    """``id(weighted layer) -> BatchNormalization`` for every BN that folds exactly."""
    plan = _plan(flat, QuantConfig(), {}, annotate_all=True)
    found = {}
    for op in flat.operations:
        decision = plan.get(id(op))
        if decision is None or decision.batchnorm is None:
            continue
        if activation_name(getattr(op, "activation", None)) != "linear":
            continue  # conv -> act -> BN: the BN sees the activation's output
        found[id(op)] = decision.batchnorm
    return found


def _folded_values(layer: keras.layers.Layer, bn: keras.layers.Layer) -> list[np.ndarray]:
    folding = QuantizeWrapper(layer, LayerSpec(weights=None, activations=None), batchnorm=bn)
    weights = folding.folded_weights()
    return [np.asarray(weights[attr]) for attr, _ in rule_for(layer).weights] + \
        [np.asarray(folding.folded_bias())]


def _statistics(bn: keras.layers.Layer) -> OutputStatistics:
    channels = bn.moving_mean.shape[0]
    mean = np.asarray(bn.beta, np.float64) if bn.center else np.zeros(channels)
    std = np.abs(np.asarray(bn.gamma, np.float64)) if bn.scale else np.ones(channels)
    return OutputStatistics(bn.name, mean, std)


def fold_batchnorm(model: keras.Model, with_statistics: bool = False
                   ) -> keras.Model | tuple[keras.Model, dict[str, OutputStatistics]]:
    """A float copy of ``model`` with every foldable BatchNormalization folded exactly.

    Args:
        model: a Functional or Sequential float model (nested models are inlined); it is not
            modified.
        with_statistics: also return the folded BNs' output statistics.

    Returns:
        The folded Functional model (same outputs up to float rounding); with
        ``with_statistics``, also ``{layer name: OutputStatistics}`` for each layer a BN was
        folded into.

    Example:
        >>> folded = fold_batchnorm(model)
        >>> np.allclose(folded(x), model(x), atol=1e-5)
        True
    """
    flat, _ = _flat_copy(model)
    folds = _foldable_pairs(flat)
    if not folds:
        return (flat, {}) if with_statistics else flat
    stats = {}

    def edit(layer, config):
        if id(layer) in folds and "use_bias" in config:
            config = {**config, "use_bias": True}
        return config

    def weights(old, new):
        if id(old) not in folds:
            return None
        stats[new.name] = _statistics(folds[id(old)])
        return _folded_values(old, folds[id(old)])

    drop = frozenset(id(bn) for bn in folds.values())
    folded = rebuild(flat, edit=edit, drop=drop, weights=weights)
    return (folded, stats) if with_statistics else folded
