"""Which Keras layer produced which TFLite tensor, from the names the converter keeps.

The converter names a tensor after the TensorFlow ops it came from, joined with ``;`` when ops
were fused, e.g. ``model_1/quant_relu1_1/relu1_1/Relu;model_1/quant_conv1_1/convolution``. Each
path component is a Keras name scope: a layer name, possibly with a ``_<n>`` suffix that TF adds
to keep scopes unique. A tensor belongs to the last layer (in the model's order) that its name
mentions: for a fused Conv + ReLU that is the ReLU layer, whose quantizer gives the tensor its
scale. When several tensors name the same layer (a Dense followed by its softmax), the layer's
output is the last of them.

Example:
    >>> layer_for_tensor("m_1/quant_relu1_1/relu1_1/Relu;m_1/quant_conv1_1/convolution",
    ...                  ["quant_conv1", "quant_relu1"])
    'quant_relu1'
"""

from __future__ import annotations

import re
from typing import Collection, Sequence

_SUFFIX = re.compile(r"^(.*)_\d+$")


def _candidates(component: str, known: dict[str, int]) -> str | None:
    if component in known:
        return component
    match = _SUFFIX.match(component)
    if match and match.group(1) in known:
        return match.group(1)
    return None


def layer_for_tensor(tensor_name: str, layer_names: Sequence[str]) -> str | None:
    """The last layer of ``layer_names`` (model order) that ``tensor_name`` mentions, or None."""
    known = {name: i for i, name in enumerate(layer_names)}
    best = None
    for part in tensor_name.split(";"):
        for component in part.split("/"):
            found = _candidates(component.split(":")[0], known)
            if found is not None and (best is None or known[found] > known[best]):
                best = found
    return best


def match_tensors(tensors: Sequence[tuple[int, str]], layer_names: Sequence[str],
                  requantized: Collection[int] = ()) -> dict[int, str]:
    """Maps TFLite tensor index -> Keras layer name for the tensors that are layer outputs.

    Args:
        tensors: ``(index, name)`` of the op outputs, in execution order.
        layer_names: the Keras layers in model order.
        requantized: tensors of requantize ops (an int8 QUANTIZE the converter inserts to move
            a layer's output onto the grid of an op that shares its inputs' parameters); they
            carry the layer's name but not its quantizer's grid, so they stand for the layer
            only when no other tensor does.

    Returns:
        One entry per matched layer: the last tensor (in execution order) that names it.
    """
    last: dict[str, int] = {}
    for index, name in tensors:
        layer = layer_for_tensor(name, layer_names)
        if layer is not None and (index not in requantized or layer not in last):
            last[layer] = index
    return {index: layer for layer, index in last.items()}
