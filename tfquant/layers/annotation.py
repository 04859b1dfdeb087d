"""``QuantizeAnnotate``: a transparent marker saying "quantize this layer" (tfmot-style)."""

from __future__ import annotations

from typing import Any

import keras

from tfquant.specs import LayerSpec


@keras.saving.register_keras_serializable(package="tfquant")
class QuantizeAnnotate(keras.layers.Wrapper):
    """Marks ``layer`` for :func:`tfquant.quantize_apply`; behaves exactly like ``layer``.

    Args:
        layer: the layer to quantize.
        spec: an optional :class:`~tfquant.specs.LayerSpec` (or dict) that overrides the
            config for this layer.

    Example:
        >>> dense = QuantizeAnnotate(keras.layers.Dense(10))
    """

    def __init__(self, layer: keras.layers.Layer, spec: LayerSpec | dict | None = None,
                 **kwargs: Any):
        kwargs.setdefault("name", f"annotate_{layer.name}")
        super().__init__(layer, **kwargs)
        self.spec = spec if spec is None or isinstance(spec, LayerSpec) else \
            LayerSpec.from_dict(spec)

    def build(self, input_shape):
        if not self.layer.built:
            self.layer.build(input_shape)
        self.built = True

    def call(self, inputs, *args, **kwargs):
        return self.layer(inputs, *args, **kwargs)

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape)

    def get_config(self):
        config = super().get_config()
        config["spec"] = None if self.spec is None else self.spec.to_dict()
        return config
