"""Bad ``.tflite`` input to the simulator: clear errors that name the file and the problem (no
traceback from the flatbuffer internals), and no change to the file."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfquant.simulate import IntegerModel, UnsupportedModelError

L = keras.layers


@pytest.fixture(scope="module")
def int8_bytes() -> bytes:
    inp = keras.Input((6, 6, 2), batch_size=1)
    x = L.Conv2D(4, 3, activation="relu")(inp)
    model = keras.Model(inp, L.Dense(3)(L.Flatten()(x)))
    rng = np.random.default_rng(0)

    def representative():
        for _ in range(8):
            yield [rng.uniform(-1, 1, (1, 6, 6, 2)).astype(np.float32)]

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    data = converter.convert()
    IntegerModel.from_tflite(data)          # the intact model is accepted
    return data


def _damaged(data: bytes) -> dict[str, bytes]:
    rng = np.random.default_rng(3)
    return {
        "empty": b"",
        "random": rng.integers(0, 256, 2000, dtype=np.uint8).tobytes(),
        "half": data[: len(data) // 2],
        "tail_cut": data[:-64],
        "random_after_header": data[:8] + rng.integers(0, 256, len(data) - 8,
                                                       dtype=np.uint8).tobytes(),
    }


@pytest.mark.parametrize("kind", ["empty", "random", "half", "tail_cut", "random_after_header"])
def test_damaged_file_names_the_file_and_problem(int8_bytes, tmp_path, kind):
    path = tmp_path / f"{kind}.tflite"
    content = _damaged(int8_bytes)[kind]
    path.write_bytes(content)
    with pytest.raises(ValueError) as info:
        IntegerModel.from_tflite(path)
    message = str(info.value)
    assert f"{kind}.tflite" in message
    assert any(word in message for word in ("empty", "corrupt", "truncated", "not a TFLite"))
    err = info.value             # no chained traceback from the flatbuffer internals
    assert err.__cause__ is None and (err.__context__ is None or err.__suppress_context__)
    assert path.read_bytes() == content                 # the file is left as it was


def test_damaged_bytes_say_they_came_from_memory(int8_bytes):
    with pytest.raises(ValueError, match=r"bytes given in memory.*(corrupt|truncated)"):
        IntegerModel.from_tflite(int8_bytes[: len(int8_bytes) // 2])


def test_randomly_flipped_bytes_never_escape_as_internal_errors(int8_bytes):
    rng = np.random.default_rng(7)
    base = np.frombuffer(int8_bytes, np.uint8)
    for _ in range(40):
        damaged = base.copy()
        where = rng.integers(8, len(damaged), 12)
        damaged[where] = rng.integers(0, 256, 12)
        try:
            IntegerModel.from_tflite(damaged.tobytes())
        except (ValueError, UnsupportedModelError):
            pass                                # clear errors, or a still-valid model


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.tflite' does not exist"):
        IntegerModel.from_tflite(tmp_path / "nothing.tflite")
    with pytest.raises(FileNotFoundError, match="is a directory"):
        IntegerModel.from_tflite(tmp_path)


def test_float_model_is_rejected_clearly():
    inp = keras.Input((4,), batch_size=1)
    model = keras.Model(inp, L.Dense(2, activation="relu")(inp))
    data = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    with pytest.raises(UnsupportedModelError,
                       match="not a full-integer int8 model.*FULLY_CONNECTED"):
        IntegerModel.from_tflite(data)
    # dynamic-range: int8 weights, float activations
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    with pytest.raises(UnsupportedModelError, match="not a full-integer int8 model"):
        IntegerModel.from_tflite(converter.convert())
