"""quantize_model / quantize_annotate_* / quantize_apply on Sequential, Functional and nested
models: graph structure, the annotation report, float fallbacks, errors, and that the model
passed in is left untouched."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfquant
from tfquant.layers import QuantizeAnnotate, QuantizeWrapper
from tfquant.layers.registry import _REGISTRY
from tfquant.quantizers import Quantizer
from tfquant.specs import LayerSpec, QuantConfig, TensorSpec

ACTIONS = {"quantize", "fold", "fused", "passthrough", "float"}


@keras.saving.register_keras_serializable(package="tfquant_tests")
class AffineCustom(keras.layers.Layer):
    """A layer tfquant knows nothing about."""

    def call(self, x):
        return 2.0 * x + 1.0


def _predict(model, x):
    """Eager inference (no tf.function tracing: fast for these tiny models)."""
    return keras.ops.convert_to_numpy(model(tf.constant(x), training=False))


def _disable_all(model):
    for layer in model.layers:
        if isinstance(layer, QuantizeWrapper):
            for q in layer.quantizers.values():
                q.enabled = False
        elif isinstance(layer, Quantizer):
            layer.enabled = False


def _producer(model, layer_name, index=0):
    node = model.get_layer(layer_name)._inbound_nodes[0]
    return keras.tree.flatten(node.input_tensors)[index]._keras_history.operation


def _snapshot(model):
    return {
        "layers": [id(layer) for layer in model.layers],
        "weights": [(v.path, v.numpy().tobytes()) for v in model.weights],
        "variables": [id(v) for v in model.weights],
        "configs": [layer.get_config() for layer in model.layers],
        "nodes": [len(layer._inbound_nodes) for layer in model.layers],
        "attrs": [dict(vars(layer)).keys() for layer in model.layers],
    }


def _cnn():
    inp = keras.Input((8, 8, 3), name="image")
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv")(inp)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU(6.0, name="relu6")(x)
    y = keras.layers.DepthwiseConv2D(3, padding="same", name="dw")(x)
    y = keras.layers.BatchNormalization(name="dw_bn")(y)
    y = keras.layers.ReLU(name="dw_relu")(y)
    x = keras.layers.Add(name="add")([x, y])
    x = keras.layers.MaxPooling2D(name="pool")(x)
    x = keras.layers.Flatten(name="flat")(x)
    x = keras.layers.Dense(3, activation="softmax", name="head")(x)
    model = keras.Model(inp, x, name="cnn")
    _randomize_bn(model)
    return model


def _randomize_bn(model, seed=0):
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 1.5, c), rng.normal(0, 0.2, c),
                               rng.normal(0, 0.2, c), rng.uniform(0.5, 2.0, c)])


def test_functional_structure_report_and_float_equivalence(rng):
    model = _cnn()
    qmodel = tfquant.quantize_model(model)
    report = qmodel.quantization_report
    expected = {"conv": "quantize", "bn": "fold", "relu6": "fused", "dw": "quantize",
                "dw_bn": "fold", "dw_relu": "fused", "add": "quantize", "pool": "passthrough",
                "flat": "passthrough", "head": "quantize"}
    assert {e.name: e.action for e in report.entries} == expected
    assert all(e.action in ACTIONS and e.detail for e in report.entries)
    assert report.float_layers == []
    assert "'bn'" in report["conv"].detail and "folded" in report["conv"].detail
    assert "per-channel" in report["conv"].detail and "per-tensor" in report["head"].detail
    assert str(report).count("\n") == len(expected) + 1  # header, rule, one line per layer
    # wrappers: conv+bn folded, relu fused (the conv has no output quantizer, relu6 has one)
    conv = qmodel.get_layer("quant_conv")
    assert conv.batchnorm is not None and conv.output_quantizer is None
    assert qmodel.get_layer("quant_relu6").output_quantizer is not None
    assert isinstance(_producer(qmodel, "quant_conv"), Quantizer)  # the model input
    # no quantizer between add and pool / flat / head (they share add's grid)
    assert not any(isinstance(layer, Quantizer) and layer.name.startswith(("pool", "flat"))
                   for layer in qmodel.layers)
    x = rng.uniform(0, 1, size=(4, 8, 8, 3)).astype(np.float32)
    _disable_all(qmodel)
    np.testing.assert_allclose(_predict(qmodel, x), _predict(model, x),
                               atol=1e-5)


def test_sequential(rng):
    model = keras.Sequential([
        keras.Input((6,)), keras.layers.Dense(8, name="d1"),
        keras.layers.BatchNormalization(name="bn1"), keras.layers.Activation("relu", name="act"),
        keras.layers.Dropout(0.5, name="drop"), keras.layers.Dense(2, name="d2")], name="seq")
    _randomize_bn(model)
    qmodel = tfquant.quantize_model(model)
    actions = {e.name: e.action for e in qmodel.quantization_report.entries}
    assert actions == {"d1": "quantize", "bn1": "fold", "act": "fused", "drop": "passthrough",
                       "d2": "quantize"}
    x = rng.normal(size=(5, 6)).astype(np.float32)
    _disable_all(qmodel)
    np.testing.assert_allclose(_predict(qmodel, x), _predict(model, x),
                               atol=1e-5)


def test_nested_functional_and_sequential_are_inlined(rng):
    inner_in = keras.Input((6,))
    h = keras.layers.Dense(6, name="inner_fc")(inner_in)
    h = keras.layers.BatchNormalization(name="inner_bn")(h)
    h = keras.layers.ReLU(name="inner_relu")(h)
    inner = keras.Model(inner_in, h, name="inner")
    deeper = keras.Model(inner_in, inner(inner_in), name="deeper")  # two levels of nesting
    seq = keras.Sequential([keras.Input((6,)), keras.layers.Dense(6, name="seq_fc")],
                           name="seqsub")
    inp = keras.Input((4,))
    x = keras.layers.Dense(6, name="fc0")(inp)
    x = keras.layers.Add(name="add")([deeper(x), seq(x)])
    out = keras.layers.Dense(3, name="head")(x)
    model = keras.Model(inp, out, name="outer")
    _randomize_bn(inner)
    qmodel = tfquant.quantize_model(model)
    names = [e.name for e in qmodel.quantization_report.entries]
    assert set(names) == {"fc0", "inner_fc", "inner_bn", "inner_relu", "seq_fc", "add", "head"}
    assert qmodel.quantization_report["inner_bn"].action == "fold"
    assert not any(isinstance(layer, keras.Model) for layer in qmodel.layers)
    x = rng.normal(size=(5, 4)).astype(np.float32)
    _disable_all(qmodel)
    np.testing.assert_allclose(_predict(qmodel, x), _predict(model, x),
                               atol=1e-5)


def test_unsupported_layer_is_float_and_its_consumer_quantizes_its_input(rng):
    inp = keras.Input((4,))
    x = keras.layers.Dense(6, name="fc0")(inp)
    x = AffineCustom(name="custom")(x)
    out = keras.layers.Dense(3, name="fc1")(x)
    model = keras.Model(inp, out)
    qmodel = tfquant.quantize_model(model)
    entry = qmodel.quantization_report["custom"]
    assert entry.action == "float" and "AffineCustom" in entry.detail
    assert qmodel.quantization_report.float_layers == ["custom"]
    custom = qmodel.get_layer("custom")
    assert type(custom) is AffineCustom  # not wrapped
    feeding = _producer(qmodel, "quant_fc1")
    assert isinstance(feeding, Quantizer)  # fc1 reads a quantized copy of custom's output
    assert _producer(qmodel, feeding.name) is custom
    # numerically: fc1's input is FakeQuant(custom output) with that quantizer's range
    x = rng.normal(size=(5, 4)).astype(np.float32)
    sub = keras.Model(qmodel.inputs, feeding.output)
    got = _predict(sub, x)
    raw = _predict(keras.Model(qmodel.inputs, custom.output), x)
    # FakeQuant clips to the *nudged* range (zero point on the grid), not the raw statistics
    params = feeding.quant_params()
    lo, hi = float(params.min), float(params.max)
    assert np.all(got >= lo - 1e-6) and np.all(got <= hi + 1e-6)
    k = (got - lo) / float(params.scale)
    np.testing.assert_allclose(k, np.round(k), atol=1e-3)
    assert not np.allclose(got, raw)


def test_subclassed_model_raises_naming_it():
    class Net(keras.Model):
        def __init__(self):
            super().__init__(name="my_subclassed_net")
            self.fc = keras.layers.Dense(2)

        def call(self, x):
            return self.fc(x)

    net = Net()
    net(np.zeros((1, 3), np.float32))
    with pytest.raises(ValueError, match="'my_subclassed_net'"):
        tfquant.quantize_model(net)
    with pytest.raises(ValueError, match="'my_subclassed_net'"):
        tfquant.quantize_annotate_model(net)


def test_already_quantized_model_raises():
    qmodel = tfquant.quantize_model(_cnn())
    with pytest.raises(ValueError, match="already quantized"):
        tfquant.quantize_model(qmodel)
    with pytest.raises(ValueError, match="already quantized"):
        tfquant.quantize_apply(qmodel)


def test_unbuilt_sequential_raises():
    with pytest.raises(ValueError, match="not built"):
        tfquant.quantize_model(keras.Sequential([keras.layers.Dense(2)], name="lazy"))


def test_annotate_layer_then_apply_quantizes_only_annotated():
    inp = keras.Input((4,))
    x = tfquant.quantize_annotate_layer(keras.layers.Dense(5, name="a"))(inp)
    x = keras.layers.Dense(5, name="b")(x)
    x = tfquant.quantize_annotate_layer(
        keras.layers.Dense(2, name="c"),
        LayerSpec(TensorSpec(bits=4, symmetric=True, narrow_range=True, learner="minmax"),
                  TensorSpec(bits=6)))(x)
    annotated = keras.Model(inp, x)
    assert isinstance(annotated.layers[1], QuantizeAnnotate)
    qmodel = tfquant.quantize_apply(annotated)
    report = qmodel.quantization_report
    assert [(e.name, e.action) for e in report.entries] == [
        ("a", "quantize"), ("b", "float"), ("c", "quantize")]
    assert "not annotated" in report["b"].detail
    assert type(qmodel.get_layer("b")) is keras.layers.Dense
    c = qmodel.get_layer("quant_c")
    assert c.weight_quantizers["kernel"].spec.bits == 4 and c.output_quantizer.spec.bits == 6
    assert isinstance(_producer(qmodel, "quant_c"), Quantizer)  # b's float output re-quantized
    # the annotated layers' weights are copied, not shared
    assert qmodel.get_layer("quant_a").layer is not annotated.layers[1].layer
    np.testing.assert_array_equal(qmodel.get_layer("quant_a").layer.kernel.numpy(),
                                  annotated.layers[1].layer.kernel.numpy())


def test_annotate_model_then_apply_equals_quantize_model():
    model = _cnn()
    annotated = tfquant.quantize_annotate_model(model)
    assert any(isinstance(layer, QuantizeAnnotate) for layer in annotated.layers)
    via_apply = tfquant.quantize_apply(annotated, config="tflite_int8")
    direct = tfquant.quantize_model(model, config="tflite_int8")
    assert via_apply.quantization_report.to_records() == direct.quantization_report.to_records()
    assert [type(layer).__name__ for layer in via_apply.layers] == \
        [type(layer).__name__ for layer in direct.layers]


def test_apply_without_annotations_raises():
    with pytest.raises(ValueError, match="no QuantizeAnnotate"):
        tfquant.quantize_apply(keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)]))


def test_register_layer_for_user_layer(rng):
    class Doubler(keras.layers.Layer):
        def call(self, x):
            return 2.0 * x

    class Projection(keras.layers.Layer):
        def build(self, shape):
            self.w = self.add_weight(shape=(shape[-1], 3), name="w")

        def call(self, x):
            return x @ self.w

    try:
        tfquant.register_layer(Doubler, kind="output")
        tfquant.register_layer(Projection, kind="weighted", weights=[("w", -1)],
                               forward=lambda layer, x, weights, mid: x @ weights["w"])
        inp = keras.Input((4,))
        out = Projection(name="proj")(Doubler(name="dbl")(inp))
        model = keras.Model(inp, out)
        qmodel = tfquant.quantize_model(model)
        actions = {e.name: e.action for e in qmodel.quantization_report.entries}
        assert actions == {"dbl": "quantize", "proj": "quantize"}
        proj = qmodel.get_layer("quant_proj")
        assert set(proj.weight_quantizers) == {"w"}
        x = rng.normal(size=(3, 4)).astype(np.float32)
        _disable_all(qmodel)
        np.testing.assert_allclose(_predict(qmodel, x), _predict(model, x),
                                   atol=1e-5)
    finally:
        _REGISTRY.pop(Doubler, None)
        _REGISTRY.pop(Projection, None)
    with pytest.raises(TypeError):
        tfquant.register_layer(object)


def test_input_model_is_never_modified(rng):
    model = _cnn()
    x = rng.uniform(size=(2, 8, 8, 3)).astype(np.float32)
    before_pred = _predict(model, x)
    before = _snapshot(model)
    for fn in (lambda m: tfquant.quantize_model(m),
               lambda m: tfquant.quantize_model(m, config="lsq_w4a4"),
               lambda m: tfquant.quantize_apply(tfquant.quantize_annotate_model(m))):
        qmodel = fn(model)
        with tf.GradientTape() as tape:  # one eager training step: states and weights move
            loss = tf.reduce_sum(qmodel(x, training=True) ** 2)
        grads = tape.gradient(loss, qmodel.trainable_weights)
        for var, grad in zip(qmodel.trainable_weights, grads):
            if grad is not None:
                var.assign_sub(0.1 * grad)
        after = _snapshot(model)
        assert after["layers"] == before["layers"]
        assert after["variables"] == before["variables"]
        assert after["weights"] == before["weights"]  # bit-identical
        assert after["configs"] == before["configs"] and after["nodes"] == before["nodes"]
        assert after["attrs"] == before["attrs"]
        own = {id(v) for v in model.weights}
        assert not own & {id(v) for v in qmodel.weights}  # nothing shared
    np.testing.assert_array_equal(_predict(model, x), before_pred)


def test_config_skip_and_activation_off():
    model = _cnn()
    cfg = QuantConfig(by_name={"head": {"skip": True}, "add": {"activations": None}})
    qmodel = tfquant.quantize_model(model, cfg)
    report = qmodel.quantization_report
    assert report["head"].action == "float" and "skipped" in report["head"].detail
    assert report["add"].action == "float"
    assert type(qmodel.get_layer("head")) is keras.layers.Dense
    # a skipped BN is not folded
    qmodel = tfquant.quantize_model(model, QuantConfig(by_name={"bn": {"skip": True}}))
    assert qmodel.quantization_report["bn"].action == "float"
    assert qmodel.get_layer("quant_conv").batchnorm is None



def test_config_names_that_match_no_layer_raise_and_change_nothing():
    """A by_name key or by_regex pattern matching no layer (a typo, or a pattern that matches
    only part of a name) raises, naming it; the user's model is left as it was."""
    model = _cnn()
    before = _snapshot(model)
    cfg = QuantConfig(by_name={"haed": {"skip": True}, "head": {"weights": {"bits": 6}}},
                      by_regex={"dw_": {"activations": {"bits": 6}}, "dw.*": {"skip": False}})
    with pytest.raises(ValueError) as err:
        tfquant.quantize_model(model, cfg)
    message = str(err.value)
    assert "by_name key 'haed'" in message and "by_regex pattern 'dw_'" in message
    assert "'head'" not in message.split("Its layers")[0]          # matching entries not listed
    assert "'dw.*'" not in message
    assert "Its layers:" in message and "'dw_relu'" in message
    assert _snapshot(model) == before
    # a by_type key naming no layer class (a typo) raises too; a Keras class the model does
    # not use (as the presets list) is fine
    with pytest.raises(ValueError, match="by_type key 'Conv2d' \\(no layer class"):
        tfquant.quantize_model(model, QuantConfig(by_type={"Conv2d": {"weights": {"bits": 4}}}))
    tfquant.quantize_model(model, QuantConfig(by_type={"Conv1D": {"weights": {"bits": 4}}}))
    # the same config without the two strays quantizes, and its entries take effect
    cfg = QuantConfig(by_name={"head": {"weights": {"bits": 6}}},
                      by_regex={"dw.*": {"activations": {"bits": 6}}})
    qmodel = tfquant.quantize_model(model, cfg)
    assert qmodel.get_layer("quant_head").weight_quantizers["kernel"].spec.bits == 6
    assert qmodel.get_layer("quant_dw_relu").output_quantizer.spec.bits == 6



def test_a_layer_read_only_by_a_concatenate_is_rounded_once_by_it():
    """TFLite computes such a layer directly on the concatenation's grid: no output quantizer
    of its own (with one, Keras rounded twice). A layer read by other ops too, or a model
    output, keeps its quantizer (TFLite requantizes it), and so does a fixed-range softmax."""
    inp = keras.Input((8, 8, 3), name="image")
    only = keras.layers.Conv2D(4, 3, padding="same", name="only")(inp)
    fused = keras.layers.Conv2D(4, 3, padding="same", name="fused_conv")(inp)
    fused = keras.layers.ReLU(name="fused_relu")(fused)
    shared = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="shared")(inp)
    side = keras.layers.Conv2D(4, 1, name="side")(shared)
    cat = keras.layers.Concatenate(name="cat")([only, fused, shared])
    head = keras.layers.Dense(3, name="head")(keras.layers.Flatten(name="flat")(cat))
    model = keras.Model(inp, [head, side])
    qmodel = tfquant.quantize_model(model)
    report = qmodel.quantization_report
    assert qmodel.get_layer("quant_only").output_quantizer is None
    assert qmodel.get_layer("quant_fused_relu").output_quantizer is None
    assert qmodel.get_layer("quant_fused_conv").output_quantizer is None
    assert qmodel.get_layer("quant_shared").output_quantizer is not None
    assert qmodel.get_layer("quant_cat").output_quantizer is not None
    assert "rounded once, by 'cat'" in report["only"].detail
    assert "output 8-bit" not in report["only"].detail
    assert "fused activation 'fused_relu' by its consumer's quantizer" in \
        report["fused_conv"].detail
    # no input quantizer was added in front of the Concatenate for the unquantized inputs
    assert not [layer.name for layer in qmodel.layers if layer.name.endswith("_quantizer")
                and not layer.name.startswith("image")]


def test_first_last_bits():
    qmodel = tfquant.quantize_model(_cnn(), "lsq_w4a4")
    bits = {name: qmodel.get_layer(f"quant_{name}").weight_quantizers["kernel"].spec.bits
            for name in ("conv", "dw", "head")}
    assert bits == {"conv": 8, "dw": 4, "head": 8}
    # the fused ReLU6 after 'conv' keeps its own (4-bit) spec, and the report says so
    assert qmodel.get_layer("quant_relu6").output_quantizer.spec.bits == 4
    assert "fused activation 'relu6' 4-bit" in qmodel.quantization_report["conv"].detail


def test_name_and_regex_overrides_win_over_first_last_bits():
    """first_last_bits ranks between the type and the regex/name overrides: an explicit
    override of the first or last layer is what the model gets (it used to be overwritten
    with 8 bits, so auto()'s 16-bit fallback for the last layer changed nothing)."""
    cfg = QuantConfig.preset("lsq_w4a4").with_overrides(
        by_type={"Dense": {"weights": {"bits": 3}}},
        by_regex={"con.*": {"weights": {"bits": 2}}},
        by_name={"head": {"weights": {"bits": 6}, "activations": {"bits": 16,
                                                                  "symmetric": True}}})
    qmodel = tfquant.quantize_model(_cnn(), cfg)
    head = qmodel.get_layer("quant_head")
    assert head.weight_quantizers["kernel"].spec.bits == 6
    assert head.output_quantizer.spec.bits == 16
    assert qmodel.get_layer("quant_conv").weight_quantizers["kernel"].spec.bits == 2
    # a type override alone does not beat first_last_bits
    qmodel = tfquant.quantize_model(_cnn(), QuantConfig.preset("lsq_w4a4").with_overrides(
        by_type={"Dense": {"weights": {"bits": 3}}}))
    assert qmodel.get_layer("quant_head").weight_quantizers["kernel"].spec.bits == 8
    assert "weights 8-bit" in qmodel.quantization_report["head"].detail


def test_per_axis_activation_config_raises_naming_layer():
    cfg = QuantConfig(LayerSpec(activations=TensorSpec(per_axis=True)))
    with pytest.raises(ValueError, match="layer 'conv'.*per_axis"):
        tfquant.quantize_model(_cnn(), cfg)
    cfg = QuantConfig(by_name={"add": {"activations": {"per_axis": True}}})
    with pytest.raises(ValueError, match="layer 'add'.*per_axis"):
        tfquant.quantize_model(_cnn(), cfg)


def test_shared_layer_and_functional_ops(rng):
    inp = keras.Input((4,))
    shared = keras.layers.Dense(4, name="shared")
    x = shared(shared(inp))
    x = keras.ops.multiply(x, 2.0)
    x = keras.ops.sin(x)
    out = keras.layers.Dense(2, name="out")(x)
    model = keras.Model(inp, out)
    qmodel = tfquant.quantize_model(model)
    report = qmodel.quantization_report
    assert report["shared"].action == "quantize"
    # element-wise arithmetic ops are quantized like the Multiply layer; others stay float
    assert any(e.type == "Multiply" and e.action == "quantize" for e in report.entries)
    assert any(e.type == "Sin" and e.action == "float" and "keras.ops" in e.detail
               for e in report.entries)
    xs = rng.normal(size=(3, 4)).astype(np.float32)
    _disable_all(qmodel)
    np.testing.assert_allclose(_predict(qmodel, xs), _predict(model, xs),
                               atol=1e-5)


SCALE = 3.0


def test_lambda_layer_and_feature_extraction(rng):
    offset = 0.5  # captured in a closure

    inp = keras.Input((4,))
    x = keras.layers.Dense(6, name="fc0")(inp)
    x = keras.layers.Lambda(lambda t: SCALE * t + offset, name="lam")(x)
    x = keras.layers.Dropout(0.2, name="drop")(x)
    out = keras.layers.Dense(2, name="fc1")(x)
    model = keras.Model(inp, out)
    qmodel = tfquant.quantize_model(model)
    assert qmodel.quantization_report["lam"].action == "float"
    # every layer of the quantized model belongs to its graph only: feature extraction works
    for name in ("lam", "drop", "quant_fc0"):
        assert len(qmodel.get_layer(name)._inbound_nodes) == 1
    features = keras.Model(qmodel.inputs, qmodel.get_layer("lam").output)
    xs = rng.normal(size=(3, 4)).astype(np.float32)
    _disable_all(qmodel)
    fc0 = model.get_layer("fc0")
    expected = SCALE * (xs @ fc0.kernel.numpy() + fc0.bias.numpy()) + offset
    np.testing.assert_allclose(_predict(features, xs), expected, atol=1e-5)
    np.testing.assert_allclose(_predict(qmodel, xs), _predict(model, xs),
                               atol=1e-5)



def test_report_describes_a_weighted_layer_whose_activation_tflite_runs_apart():
    """Dense + softmax/swish: a quantizer before the activation and one after it (softmax on
    TFLite's fixed range); the report said only 'output 8-bit (ema)'."""
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="relu",
                                                                    name="h"),
                              keras.layers.Dense(3, activation="swish", name="sw"),
                              keras.layers.Dense(2, activation="softmax", name="fc")])
    qmodel = tfquant.quantize_model(model)
    report = qmodel.quantization_report
    assert report["h"].detail.endswith("output 8-bit (ema)")
    assert "pre-activation 8-bit (ema); output after swish 8-bit (ema)" in report["sw"].detail
    assert "output after softmax TFLite's fixed softmax range" in report["fc"].detail
    fc = qmodel.get_layer("quant_fc")
    assert fc.pre_activation_quantizer is not None
    assert fc.output_quantizer.spec.learner == "fixed"


def _shared_block_model(share_conv: bool = True):
    """Two inputs through Conv -> BN -> ReLU (the conv shared, or one conv per input) -> Add."""
    rng = np.random.default_rng(3)
    a, b = keras.Input((8, 8, 3), name="a"), keras.Input((8, 8, 3), name="b")
    convs = ([keras.layers.Conv2D(4, 3, name="shared_conv")] * 2 if share_conv else
             [keras.layers.Conv2D(4, 3, name=f"conv_{i}") for i in range(2)])
    bn = keras.layers.BatchNormalization(name="shared_bn")
    relu = keras.layers.ReLU(name="shared_relu")
    out = keras.layers.Add(name="add")([relu(bn(convs[0](a))), relu(bn(convs[1](b)))])
    model = keras.Model([a, b], out)
    bn.set_weights([rng.uniform(0.5, 1.5, 4), rng.normal(0, 0.3, 4), rng.normal(0, 0.3, 4),
                    rng.uniform(0.5, 1.5, 4)])
    return model


def test_shared_conv_bn_relu_block_folds_and_fuses_at_every_call(rng):
    model = _shared_block_model()
    qmodel = tfquant.quantize_model(model)
    report = qmodel.quantization_report
    assert report["shared_bn"].action == "fold"
    assert report["shared_relu"].action == "fused"
    assert "folded and fused the same way at every call" in report["shared_conv"].detail
    xs = [rng.uniform(0, 1, (6, 8, 8, 3)).astype(np.float32) for _ in range(2)]
    _disable_all(qmodel)                       # folded inference == conv -> BN -> ReLU in float
    np.testing.assert_allclose(qmodel(xs, training=False).numpy(),
                               model(xs, training=False).numpy(), atol=1e-5)

    # training: the folded BN updates its moving statistics at both calls, as Keras' BN does
    y = rng.normal(size=(6, 6, 6, 4)).astype(np.float32)
    for m in (model, qmodel):
        m.compile(keras.optimizers.SGD(0.0), "mse")
        m.fit(xs, y, batch_size=6, verbose=0, shuffle=False)
    folded = [v for v in qmodel.get_layer("quant_shared_conv").weights
              if v.path.endswith("moving_mean")]
    np.testing.assert_allclose(folded[0].numpy(),
                               model.get_layer("shared_bn").moving_mean.numpy(), atol=1e-6)
    assert not np.allclose(folded[0].numpy(), _shared_block_model().get_layer(
        "shared_bn").moving_mean.numpy())

    qmodel = tfquant.quantize_model(_shared_block_model())
    qmodel.compile(keras.optimizers.Adam(1e-3), "mse")
    qmodel.fit(xs, y, epochs=2, verbose=0)
    flatbuffer = tfquant.export.tflite(qmodel, input_type="int8")   # strict: no float op
    result = tfquant.verify(qmodel, flatbuffer, xs)
    assert result.within_tolerance and result.bit_exact_fraction == 1.0


def test_shared_block_read_elsewhere_is_not_folded_and_says_why():
    a, b = keras.Input((8, 8, 3), name="a"), keras.Input((8, 8, 3), name="b")
    conv = keras.layers.Conv2D(4, 3, name="shared_conv")
    bn = keras.layers.BatchNormalization(name="bn")
    out = keras.layers.Add(name="add")([bn(conv(a)), conv(b)])    # BN after one call only
    report = tfquant.quantize_model(keras.Model([a, b], out)).quantization_report
    assert report["bn"].action == "quantize"
    assert "1x1 depthwise" in report["bn"].detail
    assert "applied 2 times (shared): folding a BatchNormalization" in (
        report["shared_conv"].detail)


def test_batchnorm_shared_by_two_convs_runs_as_one_carrier(rng):
    model = _shared_block_model(share_conv=False)
    qmodel = tfquant.quantize_model(model)
    report = qmodel.quantization_report
    assert report["conv_0"].action == report["conv_1"].action == "quantize"
    assert "1x1 depthwise" in report["shared_bn"].detail
    xs = [rng.uniform(0, 1, (6, 8, 8, 3)).astype(np.float32) for _ in range(2)]
    qmodel.compile(keras.optimizers.Adam(1e-3), "mse")
    qmodel.fit(xs, rng.normal(size=(6, 6, 6, 4)).astype(np.float32), verbose=0)
    result = tfquant.verify(qmodel, tfquant.export.tflite(qmodel, input_type="int8"), xs)
    assert result.within_tolerance
