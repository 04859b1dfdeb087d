"""NNI-style config lists -> QuantConfig: the examples of NNI's documentation, NNI's matching
rules (last matching entry wins, op_types AND op_names, "default", exclude), the key mapping
and the error messages."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import tfquant
from tfquant.config_list import ConfigListQuantConfig, from_config_list
from tfquant.quantizers import BinaryQuantizer, DoReFaQuantizer, LSQQuantizer, MinMaxQuantizer
from tfquant.specs import QuantConfig, TensorSpec

# NNI's QAT_Quantizer documentation example (layer names of its MNIST model).
NNI_QAT_EXAMPLE = [{
    "quant_types": ["weight", "input"],
    "quant_bits": {"weight": 8, "input": 8},
    "op_names": ["conv1", "conv2"],
}, {
    "quant_types": ["output"],
    "quant_bits": {"output": 8},
    "op_names": ["relu1", "relu2"],
}, {
    "quant_types": ["output", "weight", "input"],
    "quant_bits": {"output": 8, "weight": 8, "input": 8},
    "op_names": ["fc1", "fc2"],
}]
# NNI's DoReFaQuantizer / NaiveQuantizer examples.
NNI_DOREFA_EXAMPLE = [{"quant_types": ["weight"], "quant_bits": 8, "op_types": ["default"]}]
# NNI's BNNQuantizer example (PyTorch op types).
NNI_BNN_EXAMPLE = [{
    "quant_bits": 1, "quant_types": ["weight"], "op_types": ["Conv2d", "Linear"],
    "op_names": ["conv1", "conv2", "fc1", "fc2"],
}, {
    "quant_bits": 1, "quant_types": ["output"], "op_types": ["ReLU"],
    "op_names": ["relu1", "relu2"],
}]


def _nni_mnist_model():
    """NNI's example network (conv1-relu1-pool-conv2-relu2-pool-fc1-relu3-fc2) in Keras."""
    inp = keras.Input((28, 28, 1))
    x = keras.layers.Conv2D(8, 5, name="conv1")(inp)
    x = keras.layers.ReLU(name="relu1")(x)
    x = keras.layers.MaxPooling2D(name="pool1")(x)
    x = keras.layers.Conv2D(16, 5, name="conv2")(x)
    x = keras.layers.ReLU(name="relu2")(x)
    x = keras.layers.MaxPooling2D(name="pool2")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(32, name="fc1")(x)
    x = keras.layers.ReLU(name="relu3")(x)
    out = keras.layers.Dense(10, name="fc2")(x)
    return keras.Model(inp, out)


def _types(layer_cls):
    return [c.__name__ for c in layer_cls.__mro__ if issubclass(c, keras.layers.Layer)]


CONV, DENSE, RELU, BN = (_types(keras.layers.Conv2D), _types(keras.layers.Dense),
                         _types(keras.layers.ReLU), _types(keras.layers.BatchNormalization))


def test_nni_qat_example_resolves_per_entry():
    cfg = from_config_list(NNI_QAT_EXAMPLE)
    assert isinstance(cfg, QuantConfig)
    conv1 = cfg.resolve("conv1", CONV)
    assert not conv1.skip and conv1.weights.bits == 8 and conv1.activations.bits == 8
    # unsaid settings come from the tflite_int8 preset: per-channel symmetric narrow weights
    assert (conv1.weights.symmetric, conv1.weights.per_axis, conv1.weights.narrow_range,
            conv1.weights.learner) == (True, True, True, "minmax")
    relu1 = cfg.resolve("relu1", RELU)
    assert relu1.weights is None and relu1.activations.learner == "ema"
    fc2 = cfg.resolve("fc2", DENSE)
    assert fc2.weights.per_axis is False  # the preset's Dense rule still applies
    assert cfg.resolve("relu3", RELU).skip  # no entry: float, as in NNI
    assert cfg.resolve("conv3", CONV).skip


def test_nni_qat_example_quantizes_a_model(rng):
    qmodel = tfquant.quantize_model(_nni_mnist_model(), from_config_list(NNI_QAT_EXAMPLE))
    report = qmodel.quantization_report
    assert report["relu3"].action == "float"
    assert report["relu1"].action == "fused"  # quantized after conv1, where TFLite fuses it
    assert set(report.quantized_layers) == {"conv1", "relu1", "conv2", "relu2", "fc1", "fc2"}
    y = qmodel(rng.uniform(size=(2, 28, 28, 1)).astype(np.float32), training=False)
    assert y.shape == (2, 10)


def test_bnn_example_with_pytorch_op_types():
    cfg = from_config_list(NNI_BNN_EXAMPLE)
    conv1 = cfg.resolve("conv1", CONV)
    assert conv1.weights.learner == "binary" and conv1.activations is None
    assert cfg.resolve("fc2", DENSE).weights.learner == "binary"
    relu = cfg.resolve("relu2", RELU)
    assert relu.activations.learner == "binary" and relu.weights is None
    # op_types and op_names must both match: a ReLU named conv1 is not a Conv2d
    assert cfg.resolve("conv1", RELU).skip
    assert cfg.resolve("conv9", CONV).skip


def test_default_op_type_means_weighted_layers():
    cfg = from_config_list(NNI_DOREFA_EXAMPLE, algorithm="dorefa")
    for types in (CONV, DENSE, _types(keras.layers.DepthwiseConv2D),
                  _types(keras.layers.Conv1DTranspose)):
        spec = cfg.resolve("any", types)
        assert spec.weights.learner == "dorefa" and spec.weights.bits == 8
        assert spec.activations is None
    assert cfg.resolve("relu", RELU).skip
    assert cfg.resolve("add", _types(keras.layers.Add)).skip


def test_last_matching_entry_wins_as_a_whole():
    general = {"quant_types": ["weight", "output"], "quant_bits": 8, "op_types": ["Dense"]}
    special = {"quant_types": ["weight"], "quant_bits": 4, "op_names": ["fc1"]}
    cfg = from_config_list([general, special])
    fc1 = cfg.resolve("fc1", DENSE)
    assert fc1.weights.bits == 4 and fc1.activations is None  # not merged with `general`
    assert cfg.resolve("fc2", DENSE).weights.bits == 8
    # reversed order: NNI lets the later, more general entry override the name entry
    cfg = from_config_list([special, general])
    assert cfg.resolve("fc1", DENSE).weights.bits == 8
    assert cfg.matching_entry("fc1", DENSE).index == 1


def test_exclude_and_batchnorm_folding():
    cfg = from_config_list([
        {"quant_types": ["weight", "output"], "quant_bits": 8, "op_types": ["default"]},
        {"exclude": True, "op_names": ["fc2"]}])
    assert cfg.resolve("fc2", DENSE).skip and not cfg.resolve("fc1", DENSE).skip
    inp = keras.Input((6,))
    x = keras.layers.Dense(4, name="fc1")(inp)
    x = keras.layers.BatchNormalization(name="bn")(x)
    out = keras.layers.Dense(3, name="fc2")(x)
    report = tfquant.quantize_model(keras.Model(inp, out), cfg).quantization_report
    assert report["bn"].action == "fold"  # unmatched BN still folds into fc1
    assert report["fc2"].action == "float"
    cfg = from_config_list([cfg.config_list[0], {"exclude": True, "op_types": ["BatchNorm1d"]}])
    assert cfg.resolve("bn", BN).skip  # an explicit exclude keeps it unfolded


@pytest.mark.parametrize("scheme,expected", [
    ("per_tensor_affine", (False, False, False)),
    ("per_tensor_symmetric", (True, False, True)),
    ("per_channel_affine", (False, True, False)),
    ("per_channel_symmetric", (True, True, True)),
])
def test_quant_scheme_and_dtype_mapping(scheme, expected):
    cfg = from_config_list([{"quant_types": ["weight", "output"], "op_types": ["Conv2D"],
                             "quant_bits": {"weight": 4, "output": 6},
                             "quant_scheme": {"weight": scheme},
                             "quant_dtype": {"weight": "uint", "output": "int"},
                             "quant_start_step": 100}])
    spec = cfg.resolve("c", CONV)
    w, a = spec.weights, spec.activations
    assert (w.symmetric, w.per_axis, w.narrow_range) == expected
    assert (w.bits, w.signed, a.bits, a.signed) == (4, False, 6, True)
    assert w.quant_start_step == a.quant_start_step == 100


def test_algorithms_and_one_bit():
    entry = [{"quant_types": ["weight", "output"], "quant_bits": 4, "op_types": ["Dense"],
              "quant_scheme": "per_tensor_symmetric"}]
    lsq = from_config_list(entry, algorithm="lsq").resolve("fc", DENSE)
    assert (lsq.weights.learner, lsq.activations.learner) == ("lsq", "lsq")
    entry[0]["quant_scheme"] = {"weight": "per_tensor_symmetric",
                                "output": "per_tensor_affine"}
    lsq = from_config_list(entry, algorithm="lsq").resolve("fc", DENSE)
    assert (lsq.weights.learner, lsq.activations.learner) == ("lsq", "lsq_plus")
    twn = from_config_list(entry, algorithm="twn").resolve("fc", DENSE)
    assert twn.weights.learner == "ternary" and twn.activations.learner == "ema"
    one = from_config_list([{"quant_types": ["weight", "output"], "op_types": ["Dense"],
                             "quant_bits": {"weight": 1, "output": 8}}]).resolve("fc", DENSE)
    assert one.weights.learner == "binary" and one.weights.symmetric
    assert one.activations.learner == "ema" and one.activations.bits == 8


def test_per_layer_bits_reach_the_quantizers(rng):
    inp = keras.Input((10,))
    x = keras.layers.Dense(32, name="fc1")(inp)
    x = keras.layers.Dense(32, name="fc2")(x)
    out = keras.layers.Dense(4, name="fc3")(x)
    config_list = [
        {"quant_types": ["weight", "input", "output"], "quant_bits": 8, "op_types": ["Linear"]},
        {"quant_types": ["weight", "output"], "quant_bits": {"weight": 2, "output": 4},
         "op_names": ["fc2"]},
        {"quant_types": ["weight"], "quant_bits": 1, "op_names": ["fc3"]},
    ]
    qmodel = tfquant.quantize_model(keras.Model(inp, out),
                                    QuantConfig.from_config_list(config_list, algorithm="dorefa"))
    x = rng.normal(size=(64, 10)).astype(np.float32)
    qmodel(x, training=True)
    fc1, fc2, fc3 = (qmodel.get_layer(f"quant_fc{i}") for i in (1, 2, 3))
    assert isinstance(fc1.weight_quantizers["kernel"], DoReFaQuantizer)
    assert fc1.weight_quantizers["kernel"].spec.bits == 8
    assert isinstance(fc3.weight_quantizers["kernel"], BinaryQuantizer)
    assert fc3.output_quantizer is None
    w2 = fc2.weight_quantizers["kernel"](fc2.layer.kernel, training=False).numpy()
    assert len(np.unique(w2)) == 4  # 2-bit DoReFa: 4 levels
    w3 = fc3.weight_quantizers["kernel"](fc3.layer.kernel, training=False).numpy()
    assert len(np.unique(w3)) == 2
    out2 = keras.Model(qmodel.inputs, fc2.output)(x, training=False).numpy()
    assert isinstance(fc2.output_quantizer, MinMaxQuantizer)
    assert len(np.unique(out2)) <= 16  # 4-bit output


def test_with_overrides_keeps_the_list():
    cfg = from_config_list(NNI_QAT_EXAMPLE, algorithm="lsq")
    cfg2 = cfg.with_overrides(by_name={"fc1": {"weights": {"bits": 3}}})
    assert isinstance(cfg2, ConfigListQuantConfig)
    assert cfg2.resolve("fc1", DENSE).weights.bits == 3
    assert cfg2.resolve("fc1", DENSE).weights.learner == "lsq"
    assert cfg2.resolve("relu3", RELU).skip
    d = cfg2.to_dict()
    assert d["config_list"] == NNI_QAT_EXAMPLE and d["algorithm"] == "lsq"


def test_lsq_config_list_builds_lsq_quantizers(rng):
    qmodel = tfquant.quantize_model(_nni_mnist_model(),
                                    from_config_list(NNI_QAT_EXAMPLE, algorithm="lsq"))
    q = qmodel.get_layer("quant_conv1").weight_quantizers["kernel"]
    assert isinstance(q, LSQQuantizer) and q.spec.learner == "lsq"


@pytest.mark.parametrize("config_list,message", [
    ([NNI_QAT_EXAMPLE[0], {"quant_types": ["weight"], "quant_bit": 8, "op_names": ["x"]}],
     r"config_list\[1\]: unknown key\(s\) \['quant_bit'\]"),
    ([{"quant_types": ["weight"], "op_types": ["Dense"], "quant_start": 5}],
     r"config_list\[0\]: unknown key\(s\) \['quant_start'\]"),
    ([{"quant_types": ["weights"], "op_types": ["Dense"]}],
     r"config_list\[0\]: unknown quant type\(s\) \['weights'\]"),
    ([{"quant_types": ["weight"], "quant_bits": 0, "op_types": ["Dense"]}],
     r"config_list\[0\]: quant_bits=0"),
    ([{"quant_types": ["weight"], "quant_bits": {"wieght": 4}, "op_types": ["Dense"]}],
     r"config_list\[0\]: 'quant_bits' has unknown quant type key\(s\) \['wieght'\]"),
    ([{"quant_types": ["weight"], "quant_scheme": "per_axis", "op_types": ["Dense"]}],
     r"config_list\[0\]: quant_scheme='per_axis'"),
    ([{"quant_types": ["weight"], "quant_dtype": "int8", "op_types": ["Dense"]}],
     r"config_list\[0\]: quant_dtype='int8'"),
    ([{"quant_types": ["output"], "quant_scheme": "per_channel_affine", "op_types": ["ReLU"]}],
     r"config_list\[0\]: .*activations per tensor"),
    ([{"quant_types": ["input", "output"], "quant_bits": {"input": 8, "output": 4},
       "op_types": ["Dense"]}], r"config_list\[0\]: 'input' and 'output'"),
    ([{"quant_types": ["weight"], "quant_bits": 8}], r"config_list\[0\]: needs 'op_types'"),
    ([{"quant_bits": 8, "op_types": ["Dense"]}], r"config_list\[0\]: 'quant_types' is required"),
    ([{"quant_types": ["weight"], "op_types": ["Dense"], "quant_start_step": -1}],
     r"config_list\[0\]: 'quant_start_step'"),
    ([["weight"]], r"config_list\[0\]: each entry must be a dict"),
    ({"quant_types": ["weight"]}, r"config_list must be a list"),
])
def test_invalid_lists_name_the_entry(config_list, message):
    with pytest.raises(ValueError, match=message):
        from_config_list(config_list)


def test_unknown_algorithm():
    with pytest.raises(ValueError, match="algorithm='qat8'"):
        from_config_list(NNI_DOREFA_EXAMPLE, algorithm="qat8")


def test_naive_w8_matches_the_nni_naive_list():
    naive = from_config_list([{"quant_types": ["weight"], "quant_bits": {"weight": 8},
                               "op_types": ["default"], "quant_scheme": "per_tensor_symmetric"}],
                             algorithm="naive")
    preset = QuantConfig.preset("naive_w8")
    for types in (CONV, DENSE):
        assert naive.resolve("l", types).weights == preset.resolve("l", types).weights
        assert preset.resolve("l", types).activations is None
    assert preset.resolve("l", DENSE).weights == TensorSpec(
        bits=8, symmetric=True, per_axis=False, narrow_range=True, learner="minmax")


def test_base_preset_fills_in_but_list_bits_win():
    cfg = from_config_list([{"quant_types": ["weight", "output"], "quant_bits": 2,
                             "op_types": ["default"]}], base="lsq_w4a4")
    assert cfg.first_last_bits is None  # lsq_w4a4 would force 8 bits on first/last layers
    spec = cfg.resolve("fc", DENSE)
    assert (spec.weights.learner, spec.activations.learner) == ("lsq", "lsq_plus")
    assert spec.weights.bits == spec.activations.bits == 2
