"""Quantized layers: the wrapper, the annotation marker and the layer-type registry."""

from tfquant.layers.annotation import QuantizeAnnotate
from tfquant.layers.registry import LayerRule, register_layer, rule_for
from tfquant.layers.wrapper import QuantizeWrapper

__all__ = ["QuantizeAnnotate", "QuantizeWrapper", "LayerRule", "register_layer", "rule_for"]
