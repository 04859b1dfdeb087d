"""compact_tflite: shared quantization vectors, checked against the uncompacted converter output.

References: the TFLite interpreter run on the original bytes (reference kernels and XNNPACK,
every intermediate tensor), the interpreter's tensor details and signatures of the original,
the simulator on the original, the duplicated zero-point and scale vectors counted from the
original's tensor details, and the schema's object tree of the original (everything but the
sharing).
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import contextlib  # noqa: E402
import io  # noqa: E402

import flatbuffers  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
from ai_edge_litert.interpreter import Interpreter, OpResolverType  # noqa: E402

import tfquant  # noqa: E402
from tfquant.export.tflite_compact import compact_tflite, schema  # noqa: E402
from tfquant.simulate import IntegerModel  # noqa: E402

L = keras.layers
F32 = np.float32
RESOLVERS = {"reference": OpResolverType.BUILTIN_REF, "xnnpack": OpResolverType.AUTO}


def _network(seed: int = 0, width: int = 16) -> keras.Model:
    """Per-channel conv (with BN), depthwise, 1x1 conv and dense layers."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input((8, 8, 3), name="image")
    x = L.Conv2D(width, 3, padding="same", use_bias=False, name="conv1")(inp)
    x = L.BatchNormalization(name="bn1")(x)
    x = L.ReLU(name="relu1")(x)
    x = L.DepthwiseConv2D(3, padding="same", name="dw")(x)
    x = L.ReLU(6.0, name="relu2")(x)
    x = L.Conv2D(width, 1, name="pw")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inp, L.Dense(5, name="fc")(x))


def _calibration(n: int = 16) -> np.ndarray:
    return np.random.default_rng(0).uniform(0, 1, size=(n, 8, 8, 3)).astype(F32)


@pytest.fixture(scope="module")
def tfquant_int8() -> bytes:
    qmodel = tfquant.quantize_model(_network())
    tfquant.calibrate(qmodel, _calibration(), verbose=0)
    return tfquant.export.tflite(qmodel, input_type="int8", compact=False)


@pytest.fixture(scope="module")
def converter_ptq() -> bytes:
    """TFLite's own full-integer PTQ: per-channel conv and depthwise weights, float io."""
    data = _calibration()
    converter = tf.lite.TFLiteConverter.from_keras_model(_network(1))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([row[None]] for row in data)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    with contextlib.redirect_stdout(io.StringIO()):
        return bytes(converter.convert())


@pytest.fixture(params=["tfquant_int8", "converter_ptq"])
def original(request) -> bytes:
    return request.getfixturevalue(request.param)


def _interpreter(flatbuffer: bytes, resolver: str = "reference") -> Interpreter:
    interpreter = Interpreter(model_content=flatbuffer, experimental_preserve_all_tensors=True,
                              experimental_op_resolver_type=RESOLVERS[resolver])
    interpreter.allocate_tensors()
    return interpreter


def _random_input(detail: dict, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if detail["dtype"] == np.float32:
        return rng.uniform(-0.5, 1.5, size=detail["shape"]).astype(F32)
    info = np.iinfo(detail["dtype"])
    return rng.integers(info.min, info.max + 1, size=detail["shape"]).astype(detail["dtype"])


def _all_tensors(flatbuffer: bytes, resolver: str, seed: int) -> dict[int, np.ndarray]:
    """Every tensor of the model (weights, intermediates, outputs) after one run on a random
    input; kernels' scratch tensors (added at run time, never initialized) are left out."""
    interpreter = _interpreter(flatbuffer, resolver)
    for detail in interpreter.get_input_details():
        interpreter.set_tensor(detail["index"], _random_input(detail, seed))
    interpreter.invoke()
    in_model = schema.Model.GetRootAs(flatbuffer, 0).Subgraphs(0).TensorsLength()
    values = {}
    for detail in interpreter.get_tensor_details():
        if detail["index"] >= in_model:
            continue
        try:
            values[detail["index"]] = interpreter.get_tensor(detail["index"]).copy()
        except ValueError:  # no data (inside a delegate, or an omitted optional input)
            pass
    assert values
    return values


def _duplicated_vector_bytes(flatbuffer: bytes) -> dict[str, int]:
    """Bytes (4-byte length prefix included) of the int64 zero-point and float32 scale
    vectors that repeat an earlier tensor's vector, from the interpreter's tensor details."""
    seen, duplicated = set(), {"zero_points": 0, "scales": 0}
    for detail in _interpreter(flatbuffer).get_tensor_details():
        params = detail["quantization_parameters"]
        for kind, dtype in (("zero_points", np.int64), ("scales", np.float32)):
            values = np.asarray(params[kind], dtype)
            key = (kind, values.tobytes())
            if values.size and key in seen:
                duplicated[kind] += 4 + values.nbytes
            seen.add(key)
    return duplicated


def _buffers_with_data(flatbuffer: bytes) -> int:
    model = schema.Model.GetRootAs(flatbuffer, 0)
    return sum(not model.Buffers(i).DataIsNone() and model.Buffers(i).DataLength() > 0
               for i in range(model.BuffersLength()))


# ------------------------------------------------------------------------------- size
def test_compaction_saves_the_duplicated_vectors(original):
    compacted = compact_tflite(original)
    duplicated = _duplicated_vector_bytes(original)
    # each buffer's data may move to a 16-byte boundary (the input is only 4-byte aligned)
    padding = 15 * _buffers_with_data(original)
    saved = len(original) - len(compacted)
    print(f"{len(original)} -> {len(compacted)} B: saved {saved} B; duplicated {duplicated}, "
          f"alignment padding <= {padding} B")
    assert duplicated["zero_points"] > 0 and len(compacted) < len(original)
    assert saved >= sum(duplicated.values()) - padding, (saved, duplicated, padding)
    assert compacted[4:8] == b"TFL3"


def test_compaction_is_idempotent(original):
    once = compact_tflite(original)
    assert len(compact_tflite(once)) == len(once)


def test_a_model_with_nothing_to_share_is_returned_unchanged():
    """A float model has no quantization vectors; re-packing it would only add alignment
    padding, so the input comes back as it is."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((4,))
    model = keras.Model(inp, keras.layers.Dense(3)(keras.layers.Dense(5)(inp)))
    with contextlib.redirect_stdout(io.StringIO()):
        data = bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    assert compact_tflite(data) == data


def test_buffer_data_is_16_byte_aligned(original):
    model = schema.Model.GetRootAs(compact_tflite(original), 0)
    starts = []
    for i in range(model.BuffersLength()):
        buffer = model.Buffers(i)
        if not buffer.DataIsNone() and buffer.DataLength():
            starts.append(buffer._tab.Vector(buffer._tab.Offset(4)))  # data's first byte
    assert starts and all(start % 16 == 0 for start in starts), [s % 16 for s in starts]


# ------------------------------------------------------------------------ same model
@pytest.mark.parametrize("resolver", sorted(RESOLVERS))
def test_interpreter_computes_every_tensor_bit_identically(original, resolver):
    compacted = compact_tflite(original)
    for seed in range(3):
        want = _all_tensors(original, resolver, seed)
        got = _all_tensors(compacted, resolver, seed)
        assert got.keys() == want.keys()
        for index, value in want.items():
            np.testing.assert_array_equal(got[index], value, err_msg=f"tensor {index}")


def test_tensor_details_and_ops_are_identical(original):
    want, got = _interpreter(original), _interpreter(compact_tflite(original))
    want_details, got_details = want.get_tensor_details(), got.get_tensor_details()
    assert len(got_details) == len(want_details) > 0
    for a, b in zip(want_details, got_details):
        assert (a["index"], a["name"], a["dtype"], a["quantization"]) == \
            (b["index"], b["name"], b["dtype"], b["quantization"])
        np.testing.assert_array_equal(a["shape"], b["shape"])
        np.testing.assert_array_equal(a["shape_signature"], b["shape_signature"])
        qa, qb = a["quantization_parameters"], b["quantization_parameters"]
        np.testing.assert_array_equal(qa["scales"], qb["scales"])
        np.testing.assert_array_equal(qa["zero_points"], qb["zero_points"])
        assert qa["quantized_dimension"] == qb["quantized_dimension"]
    assert any(t["quantization_parameters"]["scales"].size > 1 for t in want_details)
    want_ops, got_ops = want._get_ops_details(), got._get_ops_details()  # noqa: SLF001
    assert len(got_ops) == len(want_ops) > 0
    for a, b in zip(want_ops, got_ops):
        assert a["op_name"] == b["op_name"]
        np.testing.assert_array_equal(a["inputs"], b["inputs"])
        np.testing.assert_array_equal(a["outputs"], b["outputs"])


def _same_tree(a, b, where: str = "model") -> None:
    """Recursive equality of two schema object trees (``...T`` objects, arrays, scalars)."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        assert np.asarray(a).dtype == np.asarray(b).dtype, where
        np.testing.assert_array_equal(a, b, err_msg=where)
    elif isinstance(a, list) or isinstance(b, list):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _same_tree(x, y, f"{where}[{i}]")
    elif hasattr(a, "__dict__"):
        assert type(a) is type(b), where
        assert vars(a).keys() == vars(b).keys(), where
        for field in vars(a):
            _same_tree(getattr(a, field), getattr(b, field), f"{where}.{field}")
    else:
        assert a == b, (where, a, b)


def test_every_field_survives(original):
    compacted = compact_tflite(original)
    trees = [schema.ModelT.InitFromObj(schema.Model.GetRootAs(data, 0))
             for data in (original, compacted)]
    assert trees[0].metadata and trees[0].signatureDefs  # the parts most easily lost
    _same_tree(*trees)


def test_signature_runner_still_works(original):
    want, got = _interpreter(original), _interpreter(compact_tflite(original))
    signatures = want.get_signature_list()
    assert signatures and got.get_signature_list() == signatures
    for key, signature in signatures.items():
        want_runner, got_runner = want.get_signature_runner(key), got.get_signature_runner(key)
        inputs = {name: _random_input(detail, 7)
                  for name, detail in want_runner.get_input_details().items()}
        want_out, got_out = want_runner(**inputs), got_runner(**inputs)
        assert got_out.keys() == want_out.keys() == set(signature["outputs"])
        for name in want_out:
            np.testing.assert_array_equal(got_out[name], want_out[name])


def test_simulator_reads_the_compacted_model(original):
    detail = _interpreter(original).get_input_details()[0]
    batch = np.concatenate([_random_input(detail, seed) for seed in range(4)])
    want = IntegerModel.from_tflite(original, jit_compile=False)(batch)
    got = IntegerModel.from_tflite(compact_tflite(original), jit_compile=False)(batch)
    np.testing.assert_array_equal(got, want)


# ------------------------------------------------------------- export modes, layouts
@pytest.mark.parametrize("mode", ["int8", "int16x8", "dynamic_range"])
def test_export_compacts_by_default_in_every_mode(mode):
    # width 64: conv1 and pw reach 1,024 weights, which dynamic-range TFLite stores in int8
    model = _network(2, width=64)
    if mode == "dynamic_range":
        qmodel = tfquant.ptq.dynamic_range(model)
    else:
        qmodel = tfquant.quantize_model(model, "tflite_int16x8" if mode == "int16x8" else None)
        tfquant.calibrate(qmodel, _calibration(), verbose=0)
    raw = tfquant.export.tflite(qmodel, mode=mode, compact=False)
    default = tfquant.export.tflite(qmodel, mode=mode)
    duplicated = sum(_duplicated_vector_bytes(raw).values())
    padding = 15 * _buffers_with_data(raw)
    print(f"{mode}: {len(raw)} -> {len(default)} B; duplicated {duplicated} B, alignment "
          f"padding <= {padding} B")
    assert duplicated > 0 and len(default) < len(raw)
    # a dynamic-range model shares only its weights' vectors: alignment can cost more
    assert len(raw) - len(default) >= duplicated - padding, (len(raw), len(default))
    for seed in range(2):
        want, got = _all_tensors(raw, "reference", seed), _all_tensors(default, "reference", seed)
        for index, value in want.items():
            np.testing.assert_array_equal(got[index], value, err_msg=f"{mode}: tensor {index}")


def test_external_buffer_layout_is_returned_unchanged(converter_ptq):
    """The >2 GB layout: a buffer's data lies after the flatbuffer, at ``offset``/``size``."""
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAs(converter_ptq, 0))
    index = max(range(len(model.buffers)), key=lambda i: np.asarray(
        model.buffers[i].data if model.buffers[i].data is not None else []).size)
    payload = np.asarray(model.buffers[index].data, np.uint8).tobytes()
    model.buffers[index].data = None
    model.buffers[index].size = len(payload)
    model.buffers[index].offset = 1 << 20  # past the end; only its being > 1 matters here
    builder = flatbuffers.Builder(0)
    builder.Finish(model.Pack(builder), b"TFL3")
    large_layout = bytes(builder.Output()) + payload
    assert compact_tflite(large_layout) == large_layout


# ---------------------------------------------------------------------------- errors
@pytest.mark.parametrize("data, message", [
    (b"", "too short"),
    (b"\x00" * 64, "file identifier"),
    (np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
     "not a valid TFLite model"),
], ids=["empty", "zeros", "random"])
def test_garbage_raises_value_error(data, message):
    with pytest.raises(ValueError, match=message):
        compact_tflite(data)


def test_truncated_model_raises_value_error(converter_ptq):
    with pytest.raises(ValueError, match="not a valid TFLite model"):
        compact_tflite(converter_ptq[: len(converter_ptq) // 3])


def test_non_bytes_raise_type_error():
    with pytest.raises(TypeError, match="flatbuffer bytes"):
        compact_tflite("model.tflite")
