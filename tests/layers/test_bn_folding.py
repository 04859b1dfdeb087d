"""QuantizeWrapper with a folded BatchNormalization (Conv2D, DepthwiseConv2D, Dense), against
float Keras layers and an independent numpy / tf.nn computation of what TFLite runs."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfquant.layers import QuantizeWrapper
from tfquant.specs import LayerSpec, TensorSpec

EPS = 1e-3


def _spec(per_axis=True, **layer_kwargs):
    weights = TensorSpec(bits=8, symmetric=True, per_axis=per_axis, narrow_range=True,
                         learner="minmax")
    return LayerSpec(weights, TensorSpec(bits=8, learner="ema"), **layer_kwargs)


def _make_layer(kind):
    if kind == "conv":
        return keras.layers.Conv2D(4, 3, name="conv"), (2, 6, 6, 3)
    if kind == "conv_relu":
        return keras.layers.Conv2D(4, 3, activation="relu", name="conv"), (2, 6, 6, 3)
    if kind == "depthwise":
        return keras.layers.DepthwiseConv2D(3, depth_multiplier=2, name="dw"), (2, 6, 6, 3)
    if kind == "dense":
        return keras.layers.Dense(5, name="fc"), (8, 7)
    raise AssertionError(kind)


def _setup(kind, rng, spec=None):
    """A float layer + BN with random non-trivial statistics, and a wrapper over copies."""
    layer, x_shape = _make_layer(kind)
    bn = keras.layers.BatchNormalization(momentum=0.8, epsilon=EPS, name="bn")
    x = rng.normal(0.2, 1.0, size=x_shape).astype(np.float32)
    out = layer(x)
    bn(out)
    c = out.shape[-1]
    weights = [rng.normal(0.0, 0.5, size=w.shape).astype(np.float32)
               for w in layer.get_weights()]
    layer.set_weights(weights)
    bn.set_weights([rng.uniform(0.5, 1.5, c), rng.normal(0.0, 0.3, c),
                    rng.normal(0.0, 0.5, c), rng.uniform(0.3, 2.0, c)])
    layer_copy = layer.__class__.from_config(layer.get_config())
    bn_copy = bn.__class__.from_config(bn.get_config())
    layer_copy(x)
    bn_copy(layer_copy(x))
    layer_copy.set_weights(layer.get_weights())
    bn_copy.set_weights(bn.get_weights())
    wrapper = QuantizeWrapper(layer_copy, spec or _spec(per_axis=kind != "dense"),
                              batchnorm=bn_copy)
    wrapper(x)
    return layer, bn, wrapper, x


def _disable(wrapper):
    for q in wrapper.quantizers.values():
        q.enabled = False


def _fold_numpy(layer, bn):
    gamma, beta, mean, var = (w.astype(np.float64) for w in bn.get_weights())
    g = gamma / np.sqrt(var + EPS)
    kernel, bias = (w.astype(np.float64) for w in layer.get_weights())
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        folded = kernel * g.reshape(kernel.shape[-2:])
    else:
        folded = kernel * g
    return folded.astype(np.float32), ((bias - mean) * g + beta).astype(np.float32)


def _fq_weights_numpy(folded, per_axis, depthwise, ref):
    """Symmetric narrow-range 8-bit FakeQuant of the folded kernel with its abs-max range."""
    if not per_axis:
        a = np.abs(folded).max()
        return ref.fake_quant(folded, -a, a, 8, True)[0]
    axis = (-2, -1) if depthwise else -1
    red = tuple(range(folded.ndim - (2 if depthwise else 1)))
    a = np.abs(folded).max(axis=red)
    return ref.fake_quant(folded, -a, a, 8, True, axis=axis)[0]


def _raw_op(layer, x, kernel):
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        return tf.nn.depthwise_conv2d(x, kernel, [1, 1, 1, 1], "VALID").numpy()
    if isinstance(layer, keras.layers.Conv2D):
        return tf.nn.conv2d(x, kernel, 1, "VALID").numpy()
    return (x.astype(np.float64) @ kernel.astype(np.float64)).astype(np.float32)


KINDS = ["conv", "conv_relu", "depthwise", "dense"]


@pytest.mark.parametrize("kind", KINDS)
def test_disabled_equals_float_inference(kind, rng):
    layer, bn, wrapper, x = _setup(kind, rng)
    _disable(wrapper)
    expected = bn(layer(x), training=False).numpy()
    if kind == "conv_relu":  # keras applies the activation inside the conv, before BN
        layer.activation = keras.activations.linear
        expected = np.maximum(bn(layer(x), training=False).numpy(), 0)
    np.testing.assert_allclose(wrapper(x, training=False).numpy(), expected, atol=1e-5,
                               rtol=1e-5)


@pytest.mark.parametrize("kind", ["conv", "depthwise", "dense"])
def test_disabled_equals_float_training_and_moving_stats(kind, rng):
    layer, bn, wrapper, x0 = _setup(kind, rng)
    _disable(wrapper)
    initial_mean = bn.moving_mean.numpy().copy()
    for step in range(3):
        x = (x0 * (1.0 + step) + 0.1 * step).astype(np.float32)
        expected = bn(layer(x), training=True).numpy()  # batch statistics
        got = wrapper(x, training=True).numpy()
        np.testing.assert_allclose(got, expected, atol=2e-5, rtol=1e-5)
        np.testing.assert_allclose(wrapper.batchnorm.moving_mean.numpy(),
                                   bn.moving_mean.numpy(), atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(wrapper.batchnorm.moving_variance.numpy(),
                                   bn.moving_variance.numpy(), atol=1e-5, rtol=1e-5)
    # the moving statistics really moved
    assert np.abs(wrapper.batchnorm.moving_mean.numpy() - initial_mean).min() > 1e-3


@pytest.mark.parametrize("kind", KINDS)
def test_quantized_inference_equals_tflite_computation(kind, rng, ref):
    layer, bn, wrapper, x = _setup(kind, rng)
    wrapper.output_quantizer.enabled = False
    folded, bias = _fold_numpy(layer, bn)
    per_axis = kind != "dense"
    wq = _fq_weights_numpy(folded, per_axis, kind == "depthwise", ref)
    expected = _raw_op(layer, x, wq) + bias
    if kind == "conv_relu":
        expected = np.maximum(expected, 0)
    got = wrapper(x, training=False).numpy()
    np.testing.assert_allclose(got, expected, atol=2e-5, rtol=1e-5)
    # quantization is not a no-op: the float model differs by more than the tolerance
    _disable(wrapper)
    assert np.abs(wrapper(x, training=False).numpy() - expected).max() > 1e-4
    # with the output quantizer: FakeQuant of that with the quantizer's range
    for q in wrapper.quantizers.values():
        q.enabled = True
    lo, hi = (float(t) for t in wrapper.output_quantizer.current_range())
    want, _ = ref.fake_quant(expected, lo, hi, 8, False)
    got = wrapper(x, training=False).numpy()
    np.testing.assert_array_equal(ref.grid_index(got, lo, hi, 8, False),
                                  ref.grid_index(want, lo, hi, 8, False))


@pytest.mark.parametrize("kind", ["conv", "dense"])
def test_quantized_training_uses_batch_stats(kind, rng, ref):
    """Training: y = BN_train(conv(x, FQ(W g)) / g + b) (single-convolution folding)."""
    layer, bn, wrapper, x = _setup(kind, rng)
    wrapper.output_quantizer.enabled = False
    folded, _ = _fold_numpy(layer, bn)
    gamma, beta, mean, var = bn.get_weights()
    g = gamma / np.sqrt(var + EPS)
    wq = _fq_weights_numpy(folded, kind != "dense", False, ref)
    unfolded = _raw_op(layer, x, wq) / g + layer.get_weights()[1]
    axes = tuple(range(unfolded.ndim - 1))
    b_mean, b_var = unfolded.mean(axes), unfolded.var(axes)
    expected = (unfolded - b_mean) / np.sqrt(b_var + EPS) * gamma + beta
    got = wrapper(x, training=True).numpy()
    np.testing.assert_allclose(got, expected, atol=5e-5, rtol=1e-4)
    np.testing.assert_allclose(wrapper.batchnorm.moving_mean.numpy(),
                               0.8 * mean + 0.2 * b_mean, atol=1e-5, rtol=1e-5)


def test_bn_freeze_step(rng):
    layer, bn, wrapper, x0 = _setup("conv", rng, _spec(bn_freeze_step=2))
    wrapper.output_quantizer.enabled = False
    train = tf.function(lambda t: wrapper(t, training=True))
    stats = []
    for step in range(4):
        x = (x0 * (1.0 + step)).astype(np.float32)
        before = wrapper.batchnorm.moving_mean.numpy().copy()
        got = train(tf.constant(x)).numpy()
        after = wrapper.batchnorm.moving_mean.numpy().copy()
        stats.append(not np.array_equal(before, after))
        infer = wrapper(x, training=False).numpy()
        if step < 2:  # batch statistics: normalised output, differs from the folded inference
            assert np.abs(got - infer).max() > 1e-3
        else:  # frozen: folded moving statistics, exactly the inference computation
            np.testing.assert_allclose(got, infer, atol=1e-6)
    assert stats == [True, True, False, False]


def test_dense_without_bias_and_bn_without_scale_center(rng, ref):
    layer = keras.layers.Dense(3, use_bias=False, name="fc")
    bn = keras.layers.BatchNormalization(center=False, scale=False, epsilon=EPS)
    x = rng.normal(size=(6, 4)).astype(np.float32)
    bn(layer(x))
    bn.set_weights([rng.normal(size=3), rng.uniform(0.5, 2.0, 3)])
    w = QuantizeWrapper(layer, _spec(per_axis=False), batchnorm=bn)
    w.build((None, 4))
    w.output_quantizer.enabled = False
    mean, var = bn.get_weights()
    g = 1.0 / np.sqrt(var + EPS)
    folded = (layer.get_weights()[0] * g).astype(np.float32)
    wq = _fq_weights_numpy(folded, False, False, ref)
    expected = x @ wq - mean * g
    np.testing.assert_allclose(w(x, training=False).numpy(), expected, atol=2e-5)


def test_fold_into_non_foldable_layer_raises():
    with pytest.raises(ValueError, match="'add'"):
        QuantizeWrapper(keras.layers.Add(name="add"), LayerSpec(),
                        batchnorm=keras.layers.BatchNormalization())


@pytest.mark.parametrize("layer", [
    keras.layers.Conv2D(4, 3, data_format="channels_first", name="conv_cf"),
    keras.layers.DepthwiseConv2D(3, data_format="channels_first", name="conv_cf"),
])
def test_fold_into_channels_first_layer_raises(layer):
    """The folding broadcasts over the last axis; TF's CPU Conv2D cannot even run NCHW, and
    the annotator never folds into a channels-first layer, so the wrapper refuses it."""
    with pytest.raises(ValueError, match="'conv_cf'.*channels_first"):
        QuantizeWrapper(layer, _spec(bn_freeze_step=2),
                        batchnorm=keras.layers.BatchNormalization(axis=1, name="bn"))


def test_fold_bn_over_another_axis_raises():
    wrapper = QuantizeWrapper(keras.layers.Conv2D(4, 3, name="conv"), _spec(),
                              batchnorm=keras.layers.BatchNormalization(axis=1, name="bn"))
    with pytest.raises(ValueError, match="'conv'.*'bn'.*axis=1"):
        wrapper.build((None, 4, 6, 6))


def test_quantize_model_keeps_channels_first_bn_unfolded():
    """quantize_model with bn_freeze_step on channels_first Conv2D -> BN(axis=1): the BN is not
    folded (so the wrapper's check above is never hit) and stays a layer of its own."""
    import dataclasses

    import tfquant
    from tfquant.specs import QuantConfig

    config = QuantConfig(dataclasses.replace(QuantConfig().global_spec, bn_freeze_step=2))
    inputs = keras.Input((3, 6, 6))
    y = keras.layers.Conv2D(4, 3, data_format="channels_first", name="conv")(inputs)
    y = keras.layers.BatchNormalization(axis=1, name="bn")(y)
    qmodel = tfquant.quantize_model(keras.Model(inputs, y), config)
    wrappers = {l.layer.name: l for l in qmodel.layers if isinstance(l, QuantizeWrapper)}
    assert set(wrappers) == {"conv", "bn"}
    assert wrappers["conv"].batchnorm is None
    assert wrappers["bn"].layer.axis in (1, [1])
