"""Tests of the reference architectures (tfquant/zoo.py) built with Keras 3."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from tfquant import zoo

REPO_ROOT = Path(__file__).resolve().parents[1]
BUILDERS = [zoo.small_cnn, zoo.mobilenet_v2_style, zoo.resnet_style]
SHAPES = [(8, 8, 1), (28, 28, 1)]


def _types(model):
    return [type(layer).__name__ for layer in model.layers]


@pytest.mark.parametrize("builder", BUILDERS, ids=lambda b: b.__name__)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_builds_and_outputs_softmax(builder, shape):
    model = builder(shape, 10, seed=0)
    assert isinstance(model, keras.Model)
    assert model.name == builder.__name__
    assert tuple(model.input.shape) == (None, *shape)
    assert tuple(model.output.shape) == (None, 10)
    assert 5_000 < model.count_params() < 60_000
    x = np.random.default_rng(0).random((4, *shape), dtype=np.float32)
    y = np.asarray(model(x, training=False))
    assert y.shape == (4, 10)
    assert (y >= 0).all()
    np.testing.assert_allclose(y.sum(axis=-1), 1.0, rtol=1e-5)
    names = [layer.name for layer in model.layers]
    assert len(set(names)) == len(names)
    assert names[-1] == "predictions"
    assert model.get_layer("predictions").get_config()["activation"] == "softmax"


def test_small_cnn_layers():
    model = zoo.small_cnn((28, 28, 1), 10)
    types = _types(model)
    assert types.count("Conv2D") == 3
    assert types.count("BatchNormalization") == 3
    assert types.count("ReLU") == 3
    assert types.count("MaxPooling2D") == 2
    assert "Flatten" in types and types[-1] == "Dense"
    for i in (1, 2, 3):
        assert model.get_layer(f"conv{i}").use_bias is False
        # conv -> bn -> relu chains (what TFLite fuses)
        bn = model.get_layer(f"bn{i}")
        assert bn.input is model.get_layer(f"conv{i}").output
        assert model.get_layer(f"relu{i}").input is bn.output


def test_mobilenet_v2_style_layers():
    model = zoo.mobilenet_v2_style((28, 28, 1), 10)
    types = _types(model)
    for t in ("DepthwiseConv2D", "BatchNormalization", "ReLU", "Add",
              "GlobalAveragePooling2D", "Dense", "Conv2D"):
        assert t in types, t
    relus = [layer for layer in model.layers if isinstance(layer, keras.layers.ReLU)]
    assert relus and all(float(r.max_value) == 6.0 for r in relus)
    assert types.count("DepthwiseConv2D") == len(zoo.MOBILENET_V2_BLOCKS)
    # residual adds exactly where stride is 1 and the channels match
    adds = [layer.name for layer in model.layers if isinstance(layer, keras.layers.Add)]
    assert adds == ["block1_add", "block3_add"]
    for i in range(1, len(zoo.MOBILENET_V2_BLOCKS) + 1):
        for suffix in ("expand", "expand_bn", "expand_relu", "depthwise", "depthwise_bn",
                       "depthwise_relu", "project", "project_bn"):
            model.get_layer(f"block{i}_{suffix}")
    # linear bottleneck: no activation after the projection
    assert model.get_layer("block2_project_bn").output is model.get_layer("block3_expand").input


def test_mobilenet_v2_style_without_expansion():
    model = zoo.mobilenet_v2_style((8, 8, 1), 10, blocks=[(1, 16, 1), (2, 8, 2)])
    names = [layer.name for layer in model.layers]
    assert "block1_expand" not in names and "block2_expand" in names
    assert "block1_add" in names and "block2_add" not in names


def test_resnet_style_layers():
    model = zoo.resnet_style((28, 28, 1), 10)
    types = _types(model)
    assert types.count("Add") == len(zoo.RESNET_BLOCKS)
    assert "GlobalAveragePooling2D" in types and "DepthwiseConv2D" not in types
    names = [layer.name for layer in model.layers]
    assert "block2_shortcut_conv" in names  # stride 2 / 16 -> 32 channels
    assert "block1_shortcut_conv" not in names and "block3_shortcut_conv" not in names
    relus = [layer for layer in model.layers if isinstance(layer, keras.layers.ReLU)]
    assert all(r.max_value is None for r in relus)


@pytest.mark.parametrize("builder", BUILDERS, ids=lambda b: b.__name__)
def test_deterministic_with_seed(builder):
    a = builder((8, 8, 1), 10, seed=5).get_weights()
    b = builder((8, 8, 1), 10, seed=5).get_weights()
    c = builder((8, 8, 1), 10, seed=6).get_weights()
    assert len(a) == len(b) == len(c)
    for wa, wb in zip(a, b):
        np.testing.assert_array_equal(wa, wb)
    assert any(not np.array_equal(wa, wc) for wa, wc in zip(a, c))
    # distinct layers get distinct initial kernels (not one repeated seed)
    kernels = [w for w in a if w.ndim == 4 and w.shape[:2] == (3, 3)]
    assert len({k.tobytes()[:64] for k in kernels}) == len(kernels)


def test_build_by_name_and_keras_module_argument():
    model = zoo.build("small_cnn", (8, 8, 1), 3, seed=1, keras_module=keras)
    assert tuple(model.output.shape) == (None, 3)
    model = zoo.build("resnet_style", (8, 8, 1), 4, keras_module="keras", softmax=False)
    assert model.get_layer("predictions").get_config()["activation"] == "linear"
    with pytest.raises(ValueError, match="unknown model"):
        zoo.build("vgg16")
    with pytest.raises(ValueError, match="input_shape"):
        zoo.small_cnn((28, 28), 10)


def test_trains_a_little():
    (x, y), _ = _digits()
    model = zoo.small_cnn((8, 8, 1), 10, seed=0)
    model.compile(optimizer=keras.optimizers.Adam(1e-2),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    hist = model.fit(x[:512], y[:512], batch_size=64, epochs=3, verbose=0)
    assert hist.history["loss"][-1] < hist.history["loss"][0]


def _digits():
    from tfquant.datasets import load_digits

    return load_digits()


def test_module_import_is_light():
    """zoo.py must not import keras/tensorflow at import time (tfmot worker)."""
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('z', {str(REPO_ROOT / 'tfquant' / 'zoo.py')!r})\n"
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
        "bad = [k for k in ('keras', 'tensorflow', 'tfquant') if k in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
