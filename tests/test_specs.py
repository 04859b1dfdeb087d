"""TensorSpec / LayerSpec / QuantConfig: precedence, presets, validation."""

from __future__ import annotations

import json

import pytest

from tfquant.specs import PRESETS, LayerSpec, QuantConfig, TensorSpec


def test_precedence_global_type_regex_name():
    cfg = QuantConfig(
        LayerSpec(TensorSpec(bits=8), TensorSpec(bits=8)),
        by_type={"Dense": {"weights": {"bits": 6, "per_axis": True}}},
        by_regex={r"fc.*": {"weights": {"bits": 5}, "activations": {"bits": 7}}},
        by_name={"fc1": {"weights": {"bits": 4}}})
    # name beats regex beats type beats global; untouched fields come from lower levels
    fc1 = cfg.resolve("fc1", "Dense")
    assert fc1.weights.bits == 4 and fc1.activations.bits == 7 and fc1.weights.per_axis
    fc2 = cfg.resolve("fc2", "Dense")
    assert fc2.weights.bits == 5 and fc2.activations.bits == 7 and fc2.weights.per_axis
    other = cfg.resolve("head", "Dense")
    assert other.weights.bits == 6 and other.activations.bits == 8 and other.weights.per_axis
    conv = cfg.resolve("conv", "Conv2D")
    assert conv.weights.bits == 8 and not conv.weights.per_axis
    # the regex must match the whole name
    assert cfg.resolve("my_fc", "Dense").weights.bits == 6
    # a name override applies even when the type has no override
    assert cfg.resolve("fc1", "Conv2D").weights.bits == 4


def test_type_precedence_follows_class_hierarchy():
    cfg = QuantConfig(by_type={"BaseConv": {"weights": {"bits": 6}},
                               "Conv2D": {"weights": {"bits": 4}},
                               "Layer": {"activations": {"bits": 16}}})
    hierarchy = ["Conv2D", "BaseConv", "Layer"]  # most derived first
    spec = cfg.resolve("c", hierarchy)
    assert spec.weights.bits == 4 and spec.activations.bits == 16
    spec = cfg.resolve("d", ["DepthwiseConv2D", "BaseDepthwiseConv", "Layer"])
    assert spec.weights.bits == 8 and spec.activations.bits == 16


def test_later_overrides_win_within_a_level():
    cfg = QuantConfig(by_name={"a": {"weights": {"bits": 4}}})
    cfg2 = cfg.with_overrides(by_name={"a": {"weights": {"bits": 6}}})
    assert cfg.resolve("a", "Dense").weights.bits == 4
    assert cfg2.resolve("a", "Dense").weights.bits == 6



def test_overrides_nest_instead_of_replacing():
    """A later override changes only the keys it names (here it keeps the TFLite preset's
    per-tensor Dense rule while setting the bits); a non-dict value (None) replaces."""
    cfg = QuantConfig.preset("tflite_int8").with_overrides(
        by_type={"Dense": {"weights": {"bits": 4}}}, by_name={"fc": {"activations": None}})
    fc = cfg.resolve("fc", "Dense")
    assert fc.weights.bits == 4 and fc.weights.per_axis is False and fc.activations is None
    cfg2 = cfg.with_overrides(by_name={"fc": {"activations": {"bits": 6}}})
    assert cfg2.resolve("fc", "Dense").activations.bits == 6
    assert cfg.resolve("fc", "Dense").activations is None          # the original is unchanged
    assert PRESETS["tflite_int8"]["by_type"]["Dense"] == {"weights": {"per_axis": False}}


def test_default_config_keeps_the_tflite_per_type_rules():
    """``QuantConfig()`` stands for the tflite_int8 preset: Dense (and the other types whose
    kernels reach TFLite through a reshape or transpose) per-tensor, Conv2D per-channel, also
    with the user's own by_type entries; an explicit global spec takes only what it is given."""
    cfg = QuantConfig(by_type={"Dense": {"weights": {"bits": 6}}})
    assert cfg.resolve("fc", "Dense").weights.per_axis is False
    assert cfg.resolve("fc", "Dense").weights.bits == 6
    assert cfg.resolve("c", "Conv2D").weights.per_axis is True
    assert QuantConfig().resolve("t", "Conv2DTranspose").weights.per_axis is False
    explicit = QuantConfig(PRESETS["tflite_int8"]["global"])
    assert explicit.resolve("fc", "Dense").weights.per_axis is True
    assert QuantConfig.from_dict({"by_name": {"fc": {"skip": True}}}).resolve(
        "x", "Dense").weights.per_axis is False


def test_none_switches_tensor_off_and_skip():
    cfg = QuantConfig(by_name={"fc": {"weights": None}, "head": {"skip": True}})
    assert cfg.resolve("fc", "Dense").weights is None
    assert cfg.resolve("fc", "Dense").activations is not None
    assert cfg.resolve("head", "Dense").skip and not cfg.resolve("fc", "Dense").skip


def test_presets_exist_with_their_schemes():
    for name in ("tflite_int8", "tflite_int16x8", "lsq_w4a4", "pact_w4a4", "w8a8_per_tensor"):
        assert name in PRESETS
        assert isinstance(QuantConfig.preset(name), QuantConfig)
    int8 = QuantConfig.preset("tflite_int8")
    conv = int8.resolve("conv", ["Conv2D", "BaseConv"])
    w, a = conv.weights, conv.activations
    assert (w.bits, w.symmetric, w.per_axis, w.narrow_range) == (8, True, True, True)
    assert (a.bits, a.symmetric, a.learner) == (8, False, "ema")
    assert not int8.resolve("fc", "Dense").weights.per_axis  # TFLite: no per-channel Dense
    a16 = QuantConfig.preset("tflite_int16x8").resolve("c", "Conv2D").activations
    assert a16.bits == 16 and a16.symmetric
    pt = QuantConfig.preset("w8a8_per_tensor").resolve("c", "Conv2D")
    assert not pt.weights.per_axis and pt.weights.bits == 8
    lsq = QuantConfig.preset("lsq_w4a4")
    spec = lsq.resolve("c", "Conv2D")
    assert (spec.weights.learner, spec.activations.learner) == ("lsq", "lsq_plus")
    assert spec.weights.bits == 4 and spec.activations.bits == 4 and lsq.first_last_bits == 8
    pact = QuantConfig.preset("pact_w4a4").resolve("c", "Conv2D")
    assert pact.activations.learner == "pact" and pact.activations.bits == 4
    assert pact.activations.init_min == 0.0 and pact.activations.regularization > 0
    # the default config is tflite_int8
    assert QuantConfig().global_spec == int8.global_spec
    assert QuantConfig.coerce(None).to_dict() == int8.to_dict()


def test_unknown_preset():
    with pytest.raises(ValueError, match="'tflite_int4'"):
        QuantConfig.preset("tflite_int4")
    with pytest.raises(ValueError, match="'nope'"):
        QuantConfig.coerce("nope")
    with pytest.raises(TypeError):
        QuantConfig.coerce(8)


@pytest.mark.parametrize("build,key", [
    (lambda: QuantConfig(by_name={"fc": {"wieghts": {"bits": 4}}}), "wieghts"),
    (lambda: QuantConfig(by_type={"Dense": {"weights": {"bitz": 4}}}), "bitz"),
    (lambda: QuantConfig(by_regex={"c.*": {"activations": {"per_channel": True}}}),
     "per_channel"),
    (lambda: QuantConfig.from_dict({"global": {}}), "global"),
    (lambda: QuantConfig.from_dict({"preset": "tflite_int8", "by_nmae": {}}), "by_nmae"),
    (lambda: TensorSpec.from_dict({"bits": 4, "symetric": True}), "symetric"),
    (lambda: LayerSpec.from_dict({"weights": None, "fold": False}), "fold"),
    (lambda: TensorSpec().replace(leaner="lsq"), "leaner"),
])
def test_unknown_key_raises_naming_key(build, key):
    with pytest.raises(ValueError, match=key):
        build()


@pytest.mark.parametrize("bits", [0, 1, 17, 32])
def test_bits_out_of_range_raise_naming_value(bits):
    with pytest.raises(ValueError, match=rf"bits={bits}\b"):
        TensorSpec(bits=bits)
    with pytest.raises(ValueError, match=rf"bits={bits}\b"):
        QuantConfig(by_type={"Dense": {"weights": {"bits": bits}}})
    with pytest.raises(ValueError, match=rf"{bits}\b"):
        QuantConfig(first_last_bits=bits)
    with pytest.raises(ValueError, match=rf"bits={bits}\b"):
        QuantConfig.from_dict({"global_spec": {"weights": {"bits": bits}}})


@pytest.mark.parametrize("bits", [2, 16])
def test_bits_limits_accepted(bits):
    assert TensorSpec(bits=bits).bits == bits


@pytest.mark.parametrize("kwargs,text", [
    ({"learner": "kmeans"}, "kmeans"), ({"ema_decay": 1.0}, "ema_decay"),
    ({"quant_start_step": -1}, "quant_start_step"), ({"freeze_step": -2}, "freeze_step"),
    ({"init_min": 1.0, "init_max": 1.0}, "init_min")])
def test_tensor_spec_validation(kwargs, text):
    with pytest.raises(ValueError, match=text):
        TensorSpec(**kwargs)


def test_invalid_regex():
    with pytest.raises(ValueError, match=r"'\(conv'"):
        QuantConfig(by_regex={"(conv": {"skip": True}})


def test_override_value_must_be_mapping():
    with pytest.raises(ValueError, match="weights"):
        LayerSpec().apply({"weights": 4})


def test_dict_round_trip_is_json_and_equivalent():
    cfg = QuantConfig.preset("lsq_w4a4").with_overrides(
        by_regex={"c.*": {"activations": {"bits": 6}}}, by_name={"fc": {"skip": True}})
    d = json.loads(json.dumps(cfg.to_dict()))
    back = QuantConfig.from_dict(d)
    for name, kind in (("c1", "Conv2D"), ("fc", "Dense"), ("x", "Add")):
        assert back.resolve(name, kind) == cfg.resolve(name, kind)
    assert back.first_last_bits == 8
    assert LayerSpec.from_dict(LayerSpec().to_dict()) == LayerSpec()
    assert TensorSpec.from_dict(TensorSpec(bits=3).to_dict()) == TensorSpec(bits=3)


def test_coerce_dict_with_preset():
    cfg = QuantConfig.coerce({"preset": "tflite_int16x8", "by_name": {"fc": {"skip": True}}})
    assert cfg.resolve("c", "Conv2D").activations.bits == 16
    assert cfg.resolve("fc", "Dense").skip
    assert not cfg.resolve("fc2", "Dense").weights.per_axis  # preset's by_type is kept



@pytest.mark.parametrize("make, message", [
    (lambda: TensorSpec(quant_start_step=10, freeze_step=5), "before quant_start_step"),
    (lambda: LayerSpec(bn_freeze_step=-1), "bn_freeze_step=-1"),
    (lambda: LayerSpec(bn_freeze_step=2.5), "bn_freeze_step=2.5"),
])
def test_contradictory_or_invalid_step_settings_raise(make, message):
    """A range frozen before quantization starts, a negative or fractional BN freeze step:
    accepted silently before."""
    with pytest.raises(ValueError, match=message):
        make()
