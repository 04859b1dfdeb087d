"""Encodings JSON (AIMET 0.6.1 / 1.0.0): values by hand, names vs the exported files, round trips.

References: hand-computed scale/offset (numpy, TF's nudging written out), the tensor names found
in the ``.h5`` file (h5py) and the SavedModel (``tf.saved_model.load``).
"""

from __future__ import annotations

import copy
import json
import os
import re

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import h5py  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

import tfquant  # noqa: E402
from tfquant.export import encoding_targets, encodings, load_encodings  # noqa: E402

L = keras.layers
F32 = np.float32
CONFIGS = ("tflite_int8", "lsq_w4a4", "pact_w4a4")


def _float_model(seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    inp = keras.Input((8, 8, 3), name="image")
    x = L.Conv2D(8, 3, padding="same", use_bias=False, name="conv1")(inp)
    x = L.BatchNormalization(name="bn1")(x)
    x = L.ReLU(name="relu1")(x)
    y = L.DepthwiseConv2D(3, padding="same", name="dw")(x)
    y = L.ReLU(6.0, name="relu2")(y)
    y = L.Conv2D(8, 1, name="pw")(y)
    x = L.Add(name="add")([x, y])
    x = L.GlobalAveragePooling2D(name="gap")(x)
    out = L.Dense(5, activation="softmax", name="fc")(x)
    return keras.Model(inp, out)


@pytest.fixture(scope="module")
def data() -> np.ndarray:
    return np.random.default_rng(0).normal(0.5, 0.5, size=(48, 8, 8, 3)).astype(F32)


def _quantized(config: str, data: np.ndarray) -> keras.Model:
    """A quantized model whose ranges moved away from their initial values."""
    qmodel = tfquant.quantize_model(_float_model(), config)
    for i in range(3):
        qmodel(data[16 * i:16 * (i + 1)] * (1.0 + 0.5 * i), training=True)
    return qmodel


def _perturbed(config: str, data: np.ndarray) -> keras.Model:
    """The same model (same float weights and BN statistics) with different quantizer ranges."""
    qmodel = _quantized(config, data)
    for target in encoding_targets(qmodel):
        for var in target.quantizer.weights:
            if var.dtype == "float32":
                var.assign(var.numpy() * 1.7)
    return qmodel


@pytest.fixture(scope="module", params=CONFIGS)
def configured(request, data):
    """``(config name, quantized model)``."""
    return request.param, _quantized(request.param, data)


@pytest.fixture
def qmodel(configured):
    return configured[1]


def _state(qmodel):
    """Every variable of the model (float weights, BN statistics, quantizer ranges)."""
    return [v.numpy().copy() for v in qmodel.weights]


def _same_state(a, b) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


# ------------------------------------------------------------------- hand values
def test_values_by_hand(data):
    qmodel = _quantized("tflite_int8", data)
    wrapper = qmodel.get_layer("quant_add")
    wrapper.output_quantizer.set_range(-1.0, 3.0)
    kernel_q = qmodel.get_layer("quant_conv1").weight_quantizers["kernel"]
    amax = np.linspace(0.5, 1.2, 8).astype(F32)
    kernel_q.set_range(-amax, amax)

    # TF's nudging by hand, float32: scale = (max - min) / 255, zero point = round(-min / scale)
    scale = (F32(3.0) - F32(-1.0)) / F32(255)
    zp = int(np.floor(F32(1.0) / scale + F32(0.5)))
    assert zp == 64
    doc = encodings(qmodel, version="0.6.1")
    (add,) = doc["activation_encodings"]["add"]
    assert add["bitwidth"] == 8 and add["dtype"] == "int" and add["is_symmetric"] == "False"
    assert add["offset"] == -zp
    assert add["scale"] == pytest.approx(float(scale), rel=1e-7)
    assert add["min"] == pytest.approx(-zp * float(scale), rel=1e-6)
    assert add["max"] == pytest.approx((255 - zp) * float(scale), rel=1e-6)

    # symmetric narrow-range int8 weights: scale = 2 a / 254, offset -128 (AIMET convention)
    conv = doc["param_encodings"]["conv1/kernel"]
    assert len(conv) == 8
    assert [c["offset"] for c in conv] == [-128] * 8
    assert all(c["is_symmetric"] == "True" for c in conv)
    np.testing.assert_allclose([c["scale"] for c in conv], 2 * amax / 254, rtol=1e-6)
    np.testing.assert_allclose([c["max"] for c in conv], amax, rtol=1e-6)
    np.testing.assert_allclose([c["min"] for c in conv], -amax, rtol=1e-6)

    doc1 = encodings(qmodel, version="1.0.0")
    entry = {e["name"]: e for e in doc1["param_encodings"]}["conv1/kernel"]
    assert entry["enc_type"] == "PER_CHANNEL" and entry["is_sym"] is True and entry["bw"] == 8
    assert entry["offset"] == [-128] * 8 and entry["dtype"] == "INT"
    np.testing.assert_allclose(entry["scale"], 2 * amax / 254, rtol=1e-6)
    act = {e["name"]: e for e in doc1["activation_encodings"]}["add"]
    assert act["enc_type"] == "PER_TENSOR" and act["offset"] == [-zp] and act["is_sym"] is False


def test_4bit_offsets_and_levels(data):
    qmodel = _quantized("lsq_w4a4", data)
    doc = encodings(qmodel, version="1.0.0")
    params = {e["name"]: e for e in doc["param_encodings"]}
    acts = {e["name"]: e for e in doc["activation_encodings"]}
    # first and last weighted layers stay 8-bit in the preset
    assert params["conv1/kernel"]["bw"] == 8 and params["fc/kernel"]["bw"] == 8
    assert params["dw/kernel"]["bw"] == 4 and params["dw/kernel"]["offset"] == [-8] * 8
    for name in ("relu1", "relu2", "pw", "add", "gap"):
        assert acts[name]["bw"] == 4
        assert all(-15 <= o <= 0 for o in acts[name]["offset"])
    q = qmodel.get_layer("quant_pw").output_quantizer.quant_params()
    assert acts["pw"]["scale"] == [float(q.scale)]
    assert acts["pw"]["offset"] == [-(int(q.zero_point) + 8)]


# ------------------------------------------------------------------------ naming
def _h5_contents(path) -> tuple[set, set]:
    """(weight dataset paths under model_weights, layer names of model_config) via h5py."""
    datasets = []
    with h5py.File(path) as h5:
        h5["model_weights"].visititems(
            lambda name, obj: datasets.append(name) if isinstance(obj, h5py.Dataset) else None)
        config = json.loads(h5.attrs["model_config"])
    return set(datasets), {layer["config"]["name"] for layer in config["config"]["layers"]}


def _pb_contents(directory) -> tuple[set, set, set]:
    """(variable names, op name scopes of the serving function, its argument names), read from
    ``saved_model.pb`` with the SavedModel protobuf (no TensorFlow loading)."""
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    with open(os.path.join(directory, "saved_model.pb"), "rb") as f:
        proto.ParseFromString(f.read())
    graph = proto.meta_graphs[0].graph_def
    variables = {node.name for node in graph.node if node.op == "VarHandleOp"}
    scopes, arguments = set(), set()
    for function in graph.library.function:
        if "__call__" in function.signature.name and "signature_wrapper" not in \
                function.signature.name:
            arguments |= {arg.name for arg in function.signature.input_arg}
            for node in function.node_def:
                # <model>_<n>/<layer>_<n>/<op>: Keras numbers each traced call's name scope
                scopes |= {re.sub(r"_\d+$", "", part) for part in node.name.split("/")[:-1]}
    return variables, scopes, arguments


def test_names_exist_in_the_h5_and_savedmodel_files(qmodel, tmp_path):
    doc = encodings(qmodel, version="1.0.0")
    params = {e["name"]: e for e in doc["param_encodings"]}
    acts = [e["name"] for e in doc["activation_encodings"]]
    assert set(params) == {"conv1/kernel", "dw/kernel", "pw/kernel", "fc/kernel"}
    assert {"image", "relu1", "relu2", "pw", "add", "gap", "fc"} <= set(acts)
    assert "conv1" not in acts  # its ReLU is fused: the encoding sits on relu1's output

    datasets, layers = _h5_contents(tfquant.export.keras_h5(qmodel, tmp_path / "m.h5"))
    variables, scopes, arguments = _pb_contents(
        tfquant.export.saved_model(qmodel, tmp_path / "sm"))
    for name, entry in params.items():
        layer = name.split("/")[0]
        assert f"{layer}/{name}" in datasets, (name, datasets)
        assert name in variables, (name, variables)
        with h5py.File(tmp_path / "m.h5") as h5:
            shape = h5[f"model_weights/{layer}/{name}"].shape
        channels = shape[-2] * shape[-1] if layer == "dw" else shape[-1]
        assert len(entry["scale"]) in (1, channels), name
    for name in acts:
        layer = name.split("/")[0]
        assert layer in layers, (name, layers)
        assert layer in scopes or layer in arguments, (name, scopes, arguments)


# ------------------------------------------------------------------ round trips
@pytest.mark.parametrize("version", ["1.0.0", "0.6.1"])
def test_round_trip_gives_identical_outputs(configured, data, tmp_path, version):
    config, qmodel = configured
    path = tmp_path / "m.encodings.json"
    doc = encodings(qmodel, path, version=version)
    assert json.loads(path.read_text()) == doc
    other = _perturbed(config, data)
    x = data[:16]
    want = qmodel.predict(x, verbose=0)
    assert not np.array_equal(other.predict(x, verbose=0), want)
    load_encodings(other, path)
    np.testing.assert_array_equal(other.predict(x, verbose=0), want)
    assert encodings(other, version=version) == doc


@pytest.mark.parametrize("config", CONFIGS)
def test_round_trip_into_a_fresh_quantize_model(config, data, tmp_path):
    x = data[:16]
    source = tfquant.quantize_model(_float_model(), config)
    if config == "tflite_int8":
        tfquant.calibrate(source, data, verbose=0)  # ranges from data; weights untouched
    for target in encoding_targets(source):  # ranges (LSQ steps, PACT clips) off their init
        for var in target.quantizer.weights:
            if var.dtype == "float32":
                var.assign(var.numpy() * 1.7)
    want = source.predict(x, verbose=0)
    path = tmp_path / "m.encodings.json"
    encodings(source, path, version="1.0.0")

    fresh = tfquant.quantize_model(_float_model(), config)  # same float weights, own ranges
    assert not np.array_equal(fresh.predict(x, verbose=0), want)
    load_encodings(fresh, path)
    np.testing.assert_array_equal(fresh.predict(x, verbose=0), want)


def test_round_trip_from_scale_and_offset_only(configured, data):
    config, qmodel = configured
    doc = encodings(qmodel, version="0.6.1")
    doc.pop("tfquant")  # as written by another tool: no quantizer state
    other = _perturbed(config, data)
    load_encodings(other, doc)
    for mine, theirs in zip(encoding_targets(qmodel), encoding_targets(other)):
        p, r = mine.quantizer.quant_params(), theirs.quantizer.quant_params()
        np.testing.assert_array_equal(p.zero_point, r.zero_point)
        np.testing.assert_allclose(p.scale, r.scale, rtol=1e-5)
    x = data[:16]
    lsb = 1.0 / 256.0  # softmax output grid
    np.testing.assert_allclose(other.predict(x, verbose=0), qmodel.predict(x, verbose=0),
                               atol=1.01 * lsb, rtol=0)


@pytest.mark.parametrize("config", CONFIGS)
def test_scale_and_offset_only_into_a_fresh_quantize_model(config, data):
    """Another tool's file (no "tfquant" state) into an uncalibrated model: whether a
    quantizer is symmetric comes from its spec, not from its initial range (for "ema" and
    LSQ+ activations that range is symmetric, -init_max..init_max, its quantizers are not)."""
    x = data[:16]
    source = tfquant.quantize_model(_float_model(), config)
    tfquant.calibrate(source, data, verbose=0)  # ranges from data; weights and BN untouched
    want = source.predict(x, verbose=0)
    doc = encodings(source, version="1.0.0")
    doc.pop("tfquant")
    assert any(e["offset"][0] != -128 for e in doc["activation_encodings"]
               if e["bw"] == 8)  # asymmetric 8-bit encodings are in the file

    fresh = tfquant.quantize_model(_float_model(), config)
    assert not np.allclose(fresh.predict(x, verbose=0), want, rtol=0, atol=1e-3)
    load_encodings(fresh, doc)
    for mine, theirs in zip(encoding_targets(source), encoding_targets(fresh)):
        assert mine.name == theirs.name
        p, r = mine.quantizer.quant_params(), theirs.quantizer.quant_params()
        np.testing.assert_array_equal(r.zero_point, p.zero_point, err_msg=mine.name)
        np.testing.assert_allclose(r.scale, p.scale, rtol=1e-5, err_msg=mine.name)
    lsb = 1.0 / 256.0  # softmax output grid
    got = fresh.predict(x, verbose=0)
    np.testing.assert_allclose(got, want, atol=1.01 * lsb, rtol=0)
    assert np.mean(got == want) > 0.9


# ------------------------------------------------------------------- bad input
def test_every_mismatch_listed_and_model_unchanged(data):
    qmodel = _quantized("lsq_w4a4", data)
    doc = encodings(qmodel, version="1.0.0")
    target = _perturbed("lsq_w4a4", data)
    before = _state(target)
    bad = copy.deepcopy(doc)
    params = {e["name"]: e for e in bad["param_encodings"]}
    params["pw/kernel"]["name"] = "pointwise/kernel"          # unknown name
    params["dw/kernel"]["scale"] = params["dw/kernel"]["scale"][:3]  # wrong channel count
    params["dw/kernel"]["offset"] = params["dw/kernel"]["offset"][:3]
    acts = {e["name"]: e for e in bad["activation_encodings"]}
    acts["add"]["bw"] = 8                                       # wrong bitwidth
    bad["activation_encodings"] = [e for e in bad["activation_encodings"]
                                   if e["name"] != "gap"]       # missing tensor
    with pytest.raises(ValueError) as info:
        load_encodings(target, bad)
    message = str(info.value)
    for name in ("pointwise/kernel", "dw/kernel", "add", "gap", "pw/kernel"):
        assert name in message, (name, message)
    assert _same_state(before, _state(target))
    # strict=False accepts the missing tensors, the other problems remain
    with pytest.raises(ValueError, match="pointwise/kernel"):
        load_encodings(target, bad, strict=False)
    assert _same_state(before, _state(target))


def test_unrepresentable_encoding_rolls_back_everything(data):
    qmodel = _quantized("tflite_int8", data)
    doc = encodings(qmodel, version="0.6.1")
    doc.pop("tfquant")
    # an asymmetric encoding for the symmetric per-channel conv weights
    for channel in doc["param_encodings"]["pw/kernel"]:
        channel["offset"] = -100
    target = _perturbed("tflite_int8", data)
    before = _state(target)
    with pytest.raises(ValueError, match="pw/kernel.*symmetric"):
        load_encodings(target, doc)
    assert _same_state(before, _state(target))  # entries applied before the failure undone


def test_unreadable_file_names_the_file(qmodel, tmp_path):
    before = _state(qmodel)
    broken = tmp_path / "broken.json"
    broken.write_text('{"version": "1.0.0", "param_encodings": [')  # truncated
    with pytest.raises(ValueError, match="broken.json.*not valid JSON"):
        load_encodings(qmodel, broken)
    with pytest.raises(ValueError, match="JSON object"):
        load_encodings(qmodel, [])
    with pytest.raises(FileNotFoundError):
        load_encodings(qmodel, tmp_path / "absent.json")
    assert _same_state(before, _state(qmodel))


def test_missing_directory_writes_nothing(qmodel, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        encodings(qmodel, tmp_path / "missing" / "m.json")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="version"):
        encodings(qmodel, version="2.0")


def test_a_float_model_has_no_encodings(tmp_path):
    """A model without quantizers (the float model passed by mistake) is refused; it gave an
    empty document."""
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)], name="plain")
    with pytest.raises(ValueError, match="'plain' has no quantizers"):
        encodings(model, tmp_path / "m.json")
    assert list(tmp_path.iterdir()) == []


def test_0_6_1_structure(qmodel):
    doc = encodings(qmodel, version="0.6.1")
    assert doc["version"] == "0.6.1"
    # quantizer_args as AIMET's specification types them (flags as "True"/"False" strings)
    args = doc["quantizer_args"]
    assert set(args) == {"activation_bitwidth", "dtype", "is_symmetric", "param_bitwidth",
                         "per_channel_quantization", "quant_scheme"}
    assert args["is_symmetric"] == "True" and args["per_channel_quantization"] == "True"
    assert args["dtype"] == "int" and isinstance(args["param_bitwidth"], int)
    for section in ("activation_encodings", "param_encodings"):
        for name, channels in doc[section].items():
            assert isinstance(channels, list) and channels
            for c in channels:
                assert set(c) == {"bitwidth", "dtype", "is_symmetric", "max", "min", "offset",
                                  "scale"}
                assert c["is_symmetric"] in ("True", "False")
                assert c["min"] <= 0.0 <= c["max"]
                grid = (c["max"] - c["min"]) / c["scale"]
                assert round(grid) in (2 ** c["bitwidth"] - 1, 2 ** c["bitwidth"] - 2), name
