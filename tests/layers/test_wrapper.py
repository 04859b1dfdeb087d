"""QuantizeWrapper without BN: weights, fused/non-fused activations, fixed output ranges,
separable and transposed convolutions, errors."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfquant.layers import QuantizeWrapper
from tfquant.layers.registry import FIXED_OUTPUT_RANGES
from tfquant.quantizers import MinMaxQuantizer
from tfquant.specs import LayerSpec, TensorSpec

W_SPEC = TensorSpec(bits=8, symmetric=True, per_axis=False, narrow_range=True, learner="minmax")
A_SPEC = TensorSpec(bits=8, learner="ema")


def _wrap(layer, x, weights=W_SPEC, acts=A_SPEC, **kw):
    w = QuantizeWrapper(layer, LayerSpec(weights, acts), **kw)
    w(x)
    return w


def _fq_sym(w, ref, axis=None):
    if axis is None:
        a = np.abs(w).max()
    else:
        red = tuple(i for i in range(w.ndim) if i != axis % w.ndim)
        a = np.abs(w).max(axis=red)
    return ref.fake_quant(w, -a, a, 8, True, axis=axis)[0]


def test_dense_relu_inference(rng, ref):
    layer = keras.layers.Dense(6, activation="relu", name="fc")
    x = rng.normal(size=(5, 4)).astype(np.float32)
    w = _wrap(layer, x)
    assert w.pre_activation_quantizer is None  # ReLU is fused: one quantizer after it
    kernel, bias = layer.get_weights()
    pre = np.maximum(x @ _fq_sym(kernel, ref) + bias, 0)
    lo, hi = (float(t) for t in w.output_quantizer.current_range())
    expected, _ = ref.fake_quant(pre, lo, hi, 8, False)
    got = w(x, training=False).numpy()
    np.testing.assert_array_equal(ref.grid_index(got, lo, hi, 8, False),
                                  ref.grid_index(expected, lo, hi, 8, False))


@pytest.mark.parametrize("activation", ["tanh", "sigmoid", "softmax"])
def test_non_fusable_activation_gets_two_quantizers_and_fixed_range(activation, rng, ref):
    layer = keras.layers.Dense(6, activation=activation, name="fc")
    x = rng.normal(size=(5, 4)).astype(np.float32)
    w = _wrap(layer, x)
    assert isinstance(w.pre_activation_quantizer, MinMaxQuantizer)
    lo_fixed, hi_fixed = FIXED_OUTPUT_RANGES[activation]
    out_q = w.output_quantizer
    assert out_q.spec.learner == "fixed"
    # TFLite's int8 output parameters: sigmoid/softmax 1/256 zp -128, tanh 1/128 zp 0
    p = out_q.quant_params()
    if activation == "tanh":
        assert (float(p.scale), int(p.zero_point)) == (1.0 / 128.0, 0)
    else:
        assert (float(p.scale), int(p.zero_point)) == (1.0 / 256.0, -128)
    w(x, training=True)  # the EMA pre-activation range observes a batch
    kernel, bias = layer.get_weights()
    pre = x @ _fq_sym(kernel, ref) + bias
    lo, hi = (float(t) for t in w.pre_activation_quantizer.current_range())
    pre_q, _ = ref.fake_quant(pre, lo, hi, 8, False)
    act = {"tanh": np.tanh, "sigmoid": lambda v: 1 / (1 + np.exp(-v)),
           "softmax": lambda v: np.exp(v) / np.exp(v).sum(-1, keepdims=True)}[activation]
    expected, _ = ref.fake_quant(act(pre_q.astype(np.float64)), lo_fixed, hi_fixed, 8, False)
    got = w(x, training=False).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_fixed_output_range_for_8_and_16_bits_only(rng):
    """TFLite's int16 LOGISTIC/TANH/SOFTMAX write scale 1/32768 with zero point 0 (the int8
    ones their own fixed ranges); other widths keep a learned range."""
    x = rng.normal(size=(2, 4)).astype(np.float32)
    w = _wrap(keras.layers.Dense(3, activation="sigmoid"), x,
              acts=TensorSpec(bits=16, symmetric=True))
    params = w.output_quantizer.quant_params()
    assert w.output_quantizer.spec.learner == "fixed"
    np.testing.assert_allclose(params.scale, 1.0 / 32768.0, rtol=1e-7)
    assert int(np.asarray(params.zero_point)) == 0
    w = _wrap(keras.layers.Dense(3, activation="sigmoid"), x,
              acts=TensorSpec(bits=12, symmetric=True))
    assert w.output_quantizer.spec.learner == "ema"


def test_separable_conv_intermediate_quantizer(rng, ref):
    layer = keras.layers.SeparableConv2D(4, 3, name="sep")
    x = rng.normal(size=(2, 6, 6, 3)).astype(np.float32)
    w = _wrap(layer, x, weights=W_SPEC.replace(per_axis=True))
    assert w.intermediate_quantizer is not None
    assert set(w.weight_quantizers) == {"depthwise_kernel", "pointwise_kernel"}
    assert w.weight_quantizers["depthwise_kernel"].axis == (-2, -1)
    for q in w.quantizers.values():
        q.enabled = False
    np.testing.assert_allclose(w(x).numpy(), layer(x).numpy(), atol=1e-5)
    for q in w.quantizers.values():
        q.enabled = True
    w.output_quantizer.enabled = False
    dk, pk, bias = layer.get_weights()
    dk_q = ref.fake_quant(dk, -np.abs(dk).max((0, 1)), np.abs(dk).max((0, 1)), 8, True,
                          axis=(-2, -1))[0]
    pk_q = _fq_sym(pk, ref, axis=-1)
    mid = tf.nn.depthwise_conv2d(x, dk_q, [1, 1, 1, 1], "VALID").numpy()
    lo, hi = (float(t) for t in w.intermediate_quantizer.current_range())
    mid_q, _ = ref.fake_quant(mid, lo, hi, 8, False)
    expected = tf.nn.conv2d(mid_q, pk_q, 1, "VALID").numpy() + bias
    np.testing.assert_allclose(w(x, training=False).numpy(), expected, atol=2e-5)


def test_conv_transpose_per_channel_on_axis_minus_2(rng, ref):
    layer = keras.layers.Conv2DTranspose(5, 3, strides=2, padding="same", name="up")
    x = rng.normal(size=(2, 4, 4, 3)).astype(np.float32)
    w = _wrap(layer, x, weights=W_SPEC.replace(per_axis=True))
    w.output_quantizer.enabled = False
    kernel, bias = layer.get_weights()  # (kh, kw, out, in)
    assert w.weight_quantizers["kernel"].axis == -2
    assert w.weight_quantizers["kernel"].quant_params().scale.shape == (5,)
    kq = _fq_sym(kernel, ref, axis=-2)
    expected = tf.nn.conv2d_transpose(x, kq, (2, 8, 8, 5), 2, "SAME").numpy() + bias
    np.testing.assert_allclose(w(x, training=False).numpy(), expected, atol=2e-5)


@pytest.mark.parametrize("make", [
    lambda: keras.layers.Conv1D(3, 3, padding="causal", dilation_rate=2),
    lambda: keras.layers.Conv2D(3, 3, strides=2, padding="same", activation="relu6"),
    lambda: keras.layers.DepthwiseConv2D(3, padding="same"),
    lambda: keras.layers.Dense(3, activation="gelu"),
], ids=["conv1d_causal", "conv2d_relu6", "depthwise_same", "dense_gelu"])
def test_disabled_wrapper_equals_float_layer(make, rng):
    layer = make()
    shape = (2, 9, 3) if isinstance(layer, keras.layers.Conv1D) else \
        (2, 5) if isinstance(layer, keras.layers.Dense) else (2, 7, 7, 3)
    x = rng.normal(size=shape).astype(np.float32)
    w = _wrap(layer, x, weights=W_SPEC.replace(per_axis=not isinstance(layer,
                                                                        keras.layers.Dense)))
    for q in w.quantizers.values():
        q.enabled = False
    np.testing.assert_allclose(w(x).numpy(), layer(x).numpy(), atol=1e-5)
    np.testing.assert_allclose(w(x, training=True).numpy(), layer(x).numpy(), atol=1e-5)


def test_output_kind_layer(rng, ref):
    add = keras.layers.Add(name="add")
    a, b = (rng.normal(size=(3, 4)).astype(np.float32) for _ in range(2))
    w = QuantizeWrapper(add, LayerSpec(None, A_SPEC))
    y = w([a, b], training=True).numpy()  # first EMA step: range = batch min / max
    s = a + b
    expected, _ = ref.fake_quant(s, min(s.min(), 0), max(s.max(), 0), 8, False)
    np.testing.assert_allclose(y, expected, atol=1e-6)
    assert w.weight_quantizers == {} and set(w.quantizers) == {"output"}


def test_quantize_output_false(rng):
    w = _wrap(keras.layers.Dense(3), rng.normal(size=(2, 4)).astype(np.float32),
              quantize_output=False)
    assert w.output_quantizer is None and set(w.quantizers) == {"weights/kernel"}


def test_weights_none_keeps_weights_float(rng):
    layer = keras.layers.Dense(3)
    x = rng.normal(size=(2, 4)).astype(np.float32)
    w = _wrap(layer, x, weights=None)
    w.output_quantizer.enabled = False
    np.testing.assert_array_equal(w(x).numpy(), layer(x).numpy())


def test_training_updates_weight_range_and_passes_gradients(rng):
    layer = keras.layers.Dense(3)
    x = rng.normal(size=(4, 5)).astype(np.float32)
    w = _wrap(layer, x)
    q = w.weight_quantizers["kernel"]
    np.testing.assert_allclose(q.max.numpy(), layer.kernel.numpy().max(), rtol=1e-6)
    layer.kernel.assign(layer.kernel * 2.0)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(w(x, training=True) ** 2)
    grad = tape.gradient(loss, layer.kernel)
    np.testing.assert_allclose(q.max.numpy(), layer.kernel.numpy().max(), rtol=1e-6)
    assert grad is not None and np.abs(grad.numpy()).sum() > 0


def test_unregistered_layer_raises_naming_it():
    class Custom(keras.layers.Layer):
        def call(self, x):
            return x

    with pytest.raises(ValueError, match="'mystery'.*register_layer"):
        QuantizeWrapper(Custom(name="mystery"), LayerSpec())


def test_per_axis_activation_raises_naming_layer():
    with pytest.raises(ValueError, match="'fc7'.*per_axis"):
        QuantizeWrapper(keras.layers.Dense(3, name="fc7"),
                        LayerSpec(W_SPEC, A_SPEC.replace(per_axis=True)))


def test_a_layer_applied_twice_counts_training_steps_not_calls():
    """A Conv2D applied to two inputs runs its quantizers twice per training step; freeze_step
    counts training steps (it froze the range after half the steps asked for), the same as for
    a layer applied once."""
    import tfquant
    from tfquant import QuantConfig

    rng = np.random.default_rng(0)
    x = rng.random((16, 8, 8, 1)).astype(np.float32)
    y = rng.integers(0, 4, 16)
    cfg = QuantConfig.preset("tflite_int8").with_overrides(
        by_name={"sh": {"activations": {"freeze_step": 3}}})
    keras.utils.set_random_seed(0)
    a, b = keras.Input((8, 8, 1), name="a"), keras.Input((8, 8, 1), name="b")
    shared = keras.layers.Conv2D(3, 3, padding="same", name="sh")
    joined = keras.layers.Add(name="add")([shared(a), shared(b)])
    out = keras.layers.Dense(4, name="fc")(keras.layers.Flatten(name="flat")(joined))
    qmodel = tfquant.quantize_model(keras.Model([a, b], out), cfg)
    qmodel.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    quantizer = qmodel.get_layer("quant_sh").output_quantizer
    tops = []
    for step in range(5):
        batch = x * (step + 1)             # growing inputs: the range grows until it is frozen
        qmodel.train_on_batch([batch, batch], y)
        tops.append(float(quantizer.current_range()[1]))
    assert tops[0] < tops[1] < tops[2]     # steps 0, 1, 2 update the EMA range
    assert tops[3] == tops[2] == tops[4]   # frozen from step 3
    assert int(quantizer.steps.numpy()) == 10 and int(quantizer.training_step()) == 5


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_quantized_model_trains_and_exports_under_a_mixed_precision_policy(policy):
    """Quantizers and wrappers compute in float32 (TF's FakeQuant takes float32 only; under a
    global mixed policy fit and predict raised a dtype TypeError); the export agrees with
    the Keras model as under float32."""
    import tfquant

    rng = np.random.default_rng(1)
    x = rng.random((32, 8, 8, 1)).astype(np.float32)
    y = rng.integers(0, 4, 32)
    keras.mixed_precision.set_global_policy(policy)
    try:
        keras.utils.set_random_seed(1)
        model = keras.Sequential([keras.Input((8, 8, 1)),
                                  keras.layers.Conv2D(4, 3, activation="relu", name="conv"),
                                  keras.layers.BatchNormalization(name="bn"),
                                  keras.layers.Flatten(name="flat"),
                                  keras.layers.Dense(4, name="fc")])
        qmodel = tfquant.quantize_model(model)
        assert qmodel.get_layer("quant_conv").compute_dtype == "float32"
        qmodel.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        qmodel.fit(x, y, epochs=1, batch_size=8, verbose=0)
        assert np.all(np.isfinite(qmodel.predict(x, verbose=0)))
        report = tfquant.verify(qmodel, tfquant.export.tflite(qmodel), x, xnnpack=False)
        assert report.bit_exact_fraction == 1.0 and report.within_tolerance
    finally:
        keras.mixed_precision.set_global_policy("float32")
