"""Reference model architectures used by the demo, the tests and the benchmarks.

Every builder produces a Functional model with deterministically named layers and
seeded initializers, and takes the Keras module to build with, so the very same
function builds the architecture with Keras 3 (``import keras``, the default) or
with legacy ``tf_keras`` (used by the tfmot baseline)::

    import keras
    model = small_cnn((28, 28, 1), 10, seed=0)                 # Keras 3
    import tf_keras
    model = small_cnn((28, 28, 1), 10, keras_module=tf_keras)  # Keras 2 / tfmot

Only layer types that exist in both Keras 3 and ``tf_keras`` are used: ``Input``,
``Conv2D``, ``DepthwiseConv2D``, ``BatchNormalization``, ``ReLU`` (``max_value=6``
for ReLU6), ``MaxPooling2D``, ``Add``, ``GlobalAveragePooling2D``, ``Flatten`` and
``Dense``.

Convolutions followed by batch normalization have ``use_bias=False`` (as in
``keras.applications``); the classifier is a ``Dense`` named ``"predictions"``
with a softmax activation (or linear logits with ``softmax=False``).

The module imports neither Keras nor the rest of ``tfquant`` at import time, so it
can be loaded by file path in the tfmot worker's legacy-Keras environment.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Union

__all__ = [
    "MODELS",
    "build",
    "mobilenet_v2_style",
    "resnet_style",
    "small_cnn",
]

KerasModule = Union[ModuleType, str, None]
Shape = Sequence[int]


def _resolve_keras(keras_module: KerasModule) -> Any:
    """Returns the Keras module to build with (Keras 3 by default)."""
    if keras_module is None:
        return importlib.import_module("keras")
    if isinstance(keras_module, str):
        return importlib.import_module(keras_module)
    return keras_module


class _Builder:
    """Creates named layers whose initializers get distinct, deterministic seeds."""

    def __init__(self, keras_module: KerasModule, seed: int) -> None:
        self.k = _resolve_keras(keras_module)
        self.layers = self.k.layers
        self._seed = int(seed)
        self._count = 0

    def init(self, kind: str = "glorot_uniform") -> Any:
        """Returns a fresh seeded initializer; each call gets the next seed."""
        self._count += 1
        cls = {
            "glorot_uniform": self.k.initializers.GlorotUniform,
            "he_normal": self.k.initializers.HeNormal,
        }[kind]
        return cls(seed=self._seed * 1000 + self._count)

    def conv(
        self,
        x: Any,
        filters: int,
        kernel_size: int,
        name: str,
        strides: int = 1,
        use_bias: bool = False,
    ) -> Any:
        return self.layers.Conv2D(
            filters,
            kernel_size,
            strides=strides,
            padding="same",
            use_bias=use_bias,
            kernel_initializer=self.init("he_normal"),
            name=name,
        )(x)

    def depthwise(self, x: Any, kernel_size: int, name: str, strides: int = 1) -> Any:
        return self.layers.DepthwiseConv2D(
            kernel_size,
            strides=strides,
            padding="same",
            use_bias=False,
            depthwise_initializer=self.init("he_normal"),
            name=name,
        )(x)

    def bn(self, x: Any, name: str) -> Any:
        return self.layers.BatchNormalization(momentum=0.9, epsilon=1e-3, name=name)(x)

    def relu(self, x: Any, name: str, max_value: Optional[float] = None) -> Any:
        return self.layers.ReLU(max_value=max_value, name=name)(x)

    def head(self, x: Any, num_classes: int, softmax: bool) -> Any:
        return self.layers.Dense(
            num_classes,
            activation="softmax" if softmax else None,
            kernel_initializer=self.init("glorot_uniform"),
            name="predictions",
        )(x)


def _check_shape(input_shape: Shape) -> Tuple[int, int, int]:
    shape = tuple(int(d) for d in input_shape)
    if len(shape) != 3:
        raise ValueError(f"input_shape must be (height, width, channels), got {input_shape!r}")
    return shape  # type: ignore[return-value]


def small_cnn(
    input_shape: Shape = (28, 28, 1),
    num_classes: int = 10,
    *,
    seed: int = 0,
    keras_module: KerasModule = None,
    widths: Sequence[int] = (16, 32, 32),
    softmax: bool = True,
    name: str = "small_cnn",
) -> Any:
    """Builds a small plain CNN: (Conv-BN-ReLU [-MaxPool]) x3, Flatten, Dense.

    Layers: ``conv{i}`` / ``bn{i}`` / ``relu{i}`` for each stage ``i`` (1-based),
    ``pool{i}`` (2x2 max pooling) after every stage but the last, ``flatten`` and
    ``predictions``. With the default widths it has about 30k parameters on
    28x28x1 inputs and about 16k on 8x8x1 inputs.

    Args:
        input_shape: ``(height, width, channels)``.
        num_classes: Number of output classes.
        seed: Seed of every initializer (same seed, same weights).
        keras_module: The Keras module (``keras`` or ``tf_keras``), or its name;
            ``None`` means Keras 3.
        widths: Filters of the conv stages (2 or more stages).
        softmax: Softmax classifier if ``True``, linear logits otherwise.
        name: Model name.

    Returns:
        An uncompiled Functional model.
    """
    shape = _check_shape(input_shape)
    b = _Builder(keras_module, seed)
    inputs = b.k.Input(shape=shape, name="input")
    x = inputs
    for i, filters in enumerate(widths, start=1):
        x = b.conv(x, filters, 3, name=f"conv{i}")
        x = b.bn(x, name=f"bn{i}")
        x = b.relu(x, name=f"relu{i}")
        if i < len(widths):
            x = b.layers.MaxPooling2D(2, name=f"pool{i}")(x)
    x = b.layers.Flatten(name="flatten")(x)
    outputs = b.head(x, num_classes, softmax)
    return b.k.Model(inputs, outputs, name=name)


#: (expansion, output channels, stride) of each inverted residual block.
MOBILENET_V2_BLOCKS: Tuple[Tuple[int, int, int], ...] = (
    (4, 16, 1),
    (4, 24, 2),
    (4, 24, 1),
    (4, 32, 2),
)


def mobilenet_v2_style(
    input_shape: Shape = (28, 28, 1),
    num_classes: int = 10,
    *,
    seed: int = 0,
    keras_module: KerasModule = None,
    stem_filters: int = 16,
    blocks: Sequence[Tuple[int, int, int]] = MOBILENET_V2_BLOCKS,
    softmax: bool = True,
    name: str = "mobilenet_v2_style",
) -> Any:
    """Builds a tiny MobileNetV2-style network of inverted residual blocks.

    Stem: ``stem_conv`` (3x3, stride 2) - ``stem_bn`` - ``stem_relu`` (ReLU6).
    Block ``i`` (1-based), for each ``(expansion, out_channels, stride)``:
    ``block{i}_expand`` (1x1 conv) - ``block{i}_expand_bn`` - ``block{i}_expand_relu``
    (ReLU6), ``block{i}_depthwise`` (3x3 DepthwiseConv2D) - ``block{i}_depthwise_bn``
    - ``block{i}_depthwise_relu`` (ReLU6), ``block{i}_project`` (1x1 conv) -
    ``block{i}_project_bn`` (linear bottleneck), and ``block{i}_add`` (Add with the
    block input) when the stride is 1 and the channel counts match. The expansion
    stage is omitted when ``expansion == 1``. Then ``gap``
    (GlobalAveragePooling2D) and ``predictions``.

    With the defaults (blocks 1 and 3 residual) it has about 21k parameters.

    Args:
        input_shape: ``(height, width, channels)``.
        num_classes: Number of output classes.
        seed: Seed of every initializer (same seed, same weights).
        keras_module: The Keras module (``keras`` or ``tf_keras``), or its name;
            ``None`` means Keras 3.
        stem_filters: Filters of the stem convolution.
        blocks: ``(expansion, out_channels, stride)`` per inverted residual block.
        softmax: Softmax classifier if ``True``, linear logits otherwise.
        name: Model name.

    Returns:
        An uncompiled Functional model.
    """
    shape = _check_shape(input_shape)
    b = _Builder(keras_module, seed)
    inputs = b.k.Input(shape=shape, name="input")
    x = b.conv(inputs, stem_filters, 3, strides=2, name="stem_conv")
    x = b.bn(x, name="stem_bn")
    x = b.relu(x, name="stem_relu", max_value=6.0)
    channels = stem_filters
    for i, (expansion, out_channels, stride) in enumerate(blocks, start=1):
        p = f"block{i}"
        shortcut = x
        if expansion != 1:
            x = b.conv(x, channels * expansion, 1, name=f"{p}_expand")
            x = b.bn(x, name=f"{p}_expand_bn")
            x = b.relu(x, name=f"{p}_expand_relu", max_value=6.0)
        x = b.depthwise(x, 3, strides=stride, name=f"{p}_depthwise")
        x = b.bn(x, name=f"{p}_depthwise_bn")
        x = b.relu(x, name=f"{p}_depthwise_relu", max_value=6.0)
        x = b.conv(x, out_channels, 1, name=f"{p}_project")
        x = b.bn(x, name=f"{p}_project_bn")
        if stride == 1 and out_channels == channels:
            x = b.layers.Add(name=f"{p}_add")([shortcut, x])
        channels = out_channels
    x = b.layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = b.head(x, num_classes, softmax)
    return b.k.Model(inputs, outputs, name=name)


#: (filters, stride) of each basic residual block.
RESNET_BLOCKS: Tuple[Tuple[int, int], ...] = ((16, 1), (32, 2), (32, 1))


def resnet_style(
    input_shape: Shape = (28, 28, 1),
    num_classes: int = 10,
    *,
    seed: int = 0,
    keras_module: KerasModule = None,
    stem_filters: int = 16,
    stem_strides: int = 2,
    blocks: Sequence[Tuple[int, int]] = RESNET_BLOCKS,
    softmax: bool = True,
    name: str = "resnet_style",
) -> Any:
    """Builds a small ResNet of basic residual blocks.

    Stem: ``stem_conv`` (3x3, stride ``stem_strides``) - ``stem_bn`` - ``stem_relu``.
    Block ``i`` (1-based), for each ``(filters, stride)``: ``block{i}_conv1`` (3x3,
    the block's stride) - ``block{i}_bn1`` - ``block{i}_relu1``, ``block{i}_conv2``
    (3x3) - ``block{i}_bn2``; the shortcut is the block input, or
    ``block{i}_shortcut_conv`` (1x1, strided) - ``block{i}_shortcut_bn`` when the
    shape changes; then ``block{i}_add`` (Add) and ``block{i}_relu2``. Then ``gap``
    (GlobalAveragePooling2D) and ``predictions``.

    With the defaults it has about 39k parameters.

    Args:
        input_shape: ``(height, width, channels)``.
        num_classes: Number of output classes.
        seed: Seed of every initializer (same seed, same weights).
        keras_module: The Keras module (``keras`` or ``tf_keras``), or its name;
            ``None`` means Keras 3.
        stem_filters: Filters of the stem convolution.
        stem_strides: Stride of the stem convolution (2 keeps 28x28 inputs cheap).
        blocks: ``(filters, stride)`` per basic block.
        softmax: Softmax classifier if ``True``, linear logits otherwise.
        name: Model name.

    Returns:
        An uncompiled Functional model.
    """
    shape = _check_shape(input_shape)
    b = _Builder(keras_module, seed)
    inputs = b.k.Input(shape=shape, name="input")
    x = b.conv(inputs, stem_filters, 3, strides=stem_strides, name="stem_conv")
    x = b.bn(x, name="stem_bn")
    x = b.relu(x, name="stem_relu")
    channels = stem_filters
    for i, (filters, stride) in enumerate(blocks, start=1):
        p = f"block{i}"
        shortcut = x
        y = b.conv(x, filters, 3, strides=stride, name=f"{p}_conv1")
        y = b.bn(y, name=f"{p}_bn1")
        y = b.relu(y, name=f"{p}_relu1")
        y = b.conv(y, filters, 3, name=f"{p}_conv2")
        y = b.bn(y, name=f"{p}_bn2")
        if stride != 1 or filters != channels:
            shortcut = b.conv(x, filters, 1, strides=stride, name=f"{p}_shortcut_conv")
            shortcut = b.bn(shortcut, name=f"{p}_shortcut_bn")
        x = b.layers.Add(name=f"{p}_add")([shortcut, y])
        x = b.relu(x, name=f"{p}_relu2")
        channels = filters
    x = b.layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = b.head(x, num_classes, softmax)
    return b.k.Model(inputs, outputs, name=name)


MODELS: Dict[str, Callable[..., Any]] = {
    "small_cnn": small_cnn,
    "mobilenet_v2_style": mobilenet_v2_style,
    "resnet_style": resnet_style,
}


def build(
    name: str,
    input_shape: Shape = (28, 28, 1),
    num_classes: int = 10,
    **kwargs: Any,
) -> Any:
    """Builds a reference architecture by name.

    Args:
        name: One of ``MODELS`` (``"small_cnn"``, ``"mobilenet_v2_style"``,
            ``"resnet_style"``).
        input_shape: ``(height, width, channels)``.
        num_classes: Number of output classes.
        **kwargs: Passed to the builder (``seed``, ``keras_module``, ...).

    Returns:
        An uncompiled Functional model.

    Raises:
        ValueError: If ``name`` is unknown.
    """
    try:
        builder = MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; expected one of {sorted(MODELS)}") from None
    return builder(input_shape, num_classes, **kwargs)
