"""relu_after: the walk past folded BatchNormalizations that fused_activation and
tfquant.ptq.auto.layer_groups share."""

from __future__ import annotations

import keras
import pytest

import tfquant
from tfquant.ptq.adaround_graph import fused_activation, layer_consumers, relu_after
from tfquant.ptq.auto import layer_groups

L = keras.layers


@pytest.fixture(scope="module")
def qmodel() -> keras.Model:
    # conv1 -> bn1 -> relu1: bn1 folds into conv1 (an Identity stays) and relu1 fuses;
    # conv2 -> bn2 -> add: bn2 folds, nothing to fuse.
    inp = keras.Input((8, 8, 3))
    h = L.Conv2D(4, 3, name="conv1")(inp)
    h = L.BatchNormalization(name="bn1")(h)
    h = L.ReLU(name="relu1")(h)
    h = L.Conv2D(4, 3, name="conv2")(h)
    h = L.BatchNormalization(name="bn2")(h)
    out = L.Flatten(name="flat")(L.Add(name="add")([h, h]))
    return tfquant.quantize_model(keras.Model(inp, out))


@pytest.mark.parametrize("use_consumers", [True, False])
def test_relu_after_passes_the_folded_bn_to_the_relu(qmodel, use_consumers):
    consumers = layer_consumers(qmodel) if use_consumers else None
    relu, passed = relu_after(qmodel.get_layer("quant_conv1"), consumers)
    assert relu is qmodel.get_layer("quant_relu1")
    assert passed == [qmodel.get_layer("bn1")]
    assert isinstance(passed[0], keras.layers.Identity)


def test_relu_after_reports_the_folded_bn_when_no_relu_follows(qmodel):
    relu, passed = relu_after(qmodel.get_layer("quant_conv2"), layer_consumers(qmodel))
    assert relu is None
    assert [layer.name for layer in passed] == ["bn2"]


def test_users_of_the_walk(qmodel):
    consumers = layer_consumers(qmodel)
    assert fused_activation(qmodel.get_layer("quant_conv1"), consumers) is \
        qmodel.get_layer("quant_relu1").layer
    assert fused_activation(qmodel.get_layer("quant_conv2"), consumers) is None
    assert layer_groups(qmodel) == {"conv1": ["conv1", "bn1", "relu1"],
                                    "conv2": ["conv2", "bn2"], "add": ["add"]}
