"""Argument checks of ``tfquant.export.tflite``: input/output types per mode and the output path,
all checked before the model is traced or converted.

References: TensorFlow's own converter (which input/output types it accepts in each mode, with
tfquant's check switched off; for dynamic range, TF's converter on the float model), and the
TFLite interpreter (the I/O types of the converted file).
"""

from __future__ import annotations

import importlib
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
from ai_edge_litert.interpreter import Interpreter  # noqa: E402

import tfquant  # noqa: E402
from tfquant.export import tflite_dynamic  # noqa: E402
from tfquant.export.tflite import IO_TYPES, MODE_IO_TYPES, check_io_types  # noqa: E402

# the module (``tfquant.export.tflite`` the attribute is the function)
tflite_module = importlib.import_module("tfquant.export.tflite")

L = keras.layers
PRESETS = {"int8": "tflite_int8", "int16x8": "tflite_int16x8"}


def _float_model() -> keras.Model:
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((6, 6, 1), name="image"), L.Conv2D(2, 3, name="conv"),
                             L.Flatten(name="flat"), L.Dense(2, name="fc")])


@pytest.fixture(scope="module")
def qmodels() -> dict[str, keras.Model]:
    """A calibrated model per integer mode (``"dynamic_range"``: the int8 one)."""
    data = np.random.default_rng(0).random((8, 6, 6, 1), np.float32)
    models = {}
    for mode, preset in PRESETS.items():
        models[mode] = tfquant.quantize_model(_float_model(), preset)
        tfquant.calibrate(models[mode], data, verbose=0)
    models["dynamic_range"] = models["int8"]
    return models


@pytest.fixture
def no_conversion(monkeypatch):
    """Makes any conversion (tracing the model for the TF converter) fail the test."""
    def never(converter):
        raise AssertionError("the model was converted before the arguments were checked")

    monkeypatch.setattr(tflite_module, "_convert", never)
    monkeypatch.setattr(tflite_dynamic, "_convert", never)


def _converter_accepts(qmodel, mode: str, io_type: str, monkeypatch) -> bool:
    """Whether TF's converter itself takes ``io_type`` as input and output type in ``mode``
    (tfquant's check switched off for the call)."""
    with monkeypatch.context() as patch:
        patch.setattr(tflite_module, "check_io_types",
                      lambda mode, input_type, output_type=None: output_type or input_type)
        try:
            flatbuffer = tflite_module.tflite(qmodel, mode=mode, input_type=io_type)
        except ValueError as err:
            assert "inference_input_type" in str(err), err  # the converter's own refusal
            return False
    interpreter = Interpreter(model_content=flatbuffer)
    for details in (interpreter.get_input_details(), interpreter.get_output_details()):
        assert details[0]["dtype"] == np.dtype(IO_TYPES[io_type].as_numpy_dtype)
    return True


@pytest.mark.parametrize("mode", sorted(PRESETS))
def test_allowed_types_are_those_the_converter_takes(qmodels, mode, monkeypatch):
    for io_type in sorted(IO_TYPES):
        accepted = _converter_accepts(qmodels[mode], mode, io_type, monkeypatch)
        assert (io_type in MODE_IO_TYPES[mode]) == accepted, (mode, io_type)
        if not accepted:
            with pytest.raises(ValueError, match=f"input_type='{io_type}' is not available "
                                                 f"in mode='{mode}'"):
                check_io_types(mode, io_type)


def test_dynamic_range_keeps_float_io_as_tf_does():
    # TF's converter in dynamic-range mode (no representative data) refuses integer I/O
    converter = tf.lite.TFLiteConverter.from_keras_model(_float_model())
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.inference_input_type = tf.int8
    with pytest.raises(ValueError, match="must be tf.float32"):
        converter.convert()
    assert MODE_IO_TYPES["dynamic_range"] == ("float32",)


@pytest.mark.parametrize("mode, kwargs, message", [
    ("dynamic_range", {"input_type": "int8", "output_type": "uint8"},
     r"input_type='int8' is not available in mode='dynamic_range'.*\['float32'\].*float "
     "inputs and outputs"),
    ("dynamic_range", {"output_type": "uint8"},
     r"output_type='uint8' is not available in mode='dynamic_range'"),
    ("int8", {"input_type": "int16"},
     r"input_type='int16' is not available in mode='int8': use one of "
     r"\['float32', 'int8', 'uint8'\]"),
    ("int8", {"input_type": "int8", "output_type": "int16"},
     r"output_type='int16' is not available in mode='int8'"),
    ("int16x8", {"input_type": "uint8"},
     r"input_type='uint8' is not available in mode='int16x8': use one of "
     r"\['float32', 'int16'\]"),
    ("int8", {"input_type": "float16"}, r"input_type='float16' is not one of"),
])
def test_refused_types_fail_before_converting(qmodels, no_conversion, tmp_path, mode, kwargs,
                                              message):
    with pytest.raises(ValueError, match=message):
        tfquant.export.tflite(qmodels[mode], tmp_path / "m.tflite", mode=mode, **kwargs)
    with pytest.raises(ValueError, match="mode='int4' is not one of"):
        tfquant.export.tflite(qmodels["int8"], mode="int4")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("mode", ["int8", "dynamic_range"])
def test_directory_path_fails_before_converting(qmodels, no_conversion, tmp_path, mode):
    target = tmp_path / "model.tflite"
    target.mkdir()
    with pytest.raises(IsADirectoryError, match=r"output '.*model\.tflite' is a directory"):
        tfquant.export.tflite(qmodels[mode], target, mode=mode)
    with pytest.raises(IsADirectoryError, match=str(tmp_path)):
        tfquant.export.tflite(qmodels[mode], tmp_path, mode=mode)
    assert [p.name for p in tmp_path.iterdir()] == ["model.tflite"]
    assert list(target.iterdir()) == []


def test_allowed_mixed_types_convert(qmodels):
    flatbuffer = tfquant.export.tflite(qmodels["int8"], input_type="uint8",
                                       output_type="float32")
    interpreter = Interpreter(model_content=flatbuffer)
    assert interpreter.get_input_details()[0]["dtype"] == np.uint8
    assert interpreter.get_output_details()[0]["dtype"] == np.float32


def test_an_uncalibrated_model_exports_with_a_warning_naming_its_quantizers(qmodels):
    """Activation ranges never calibrated or trained (still init_min/init_max, no step): the
    export warns, naming them; the export of a calibrated model does not warn."""
    import warnings

    fresh = tfquant.quantize_model(_float_model())
    with pytest.warns(UserWarning, match=r"3 activation quantizer\(s\) still hold their initial "
                                         r"range.*image_quantizer, conv/output, fc/output"):
        tfquant.export.tflite(fresh)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*initial range.*")
        tfquant.export.tflite(qmodels["int8"])
    # one training step moves every EMA range off its initial value
    fresh.compile("sgd", "mse")
    fresh.fit(np.ones((4, 6, 6, 1), np.float32), np.zeros((4, 2), np.float32), verbose=0)
    assert tflite_module.uncalibrated_quantizers(fresh) == []


def test_a_failed_conversion_is_a_value_error_naming_the_float_layers(tmp_path):
    """An LSTM (left float by the annotator) makes TF's converter fail on its tensor lists: a
    ValueError with the converter's error and the float layers, and no file (it was TF's raw
    ConverterError)."""
    model = keras.Sequential([keras.Input((5, 3)), L.LSTM(4, name="lstm"), L.Dense(2, name="fc")])
    qmodel = tfquant.quantize_model(model)
    tfquant.calibrate(qmodel, np.random.default_rng(0).random((16, 5, 3), np.float32),
                      verbose=0)
    path = tmp_path / "m.tflite"
    with pytest.raises(ValueError, match=r"TFLite converter failed.*float by the annotator: "
                                         r"\['lstm'\]") as err:
        tfquant.export.tflite(qmodel, path)
    assert type(err.value.__cause__).__name__ == "ConverterError"
    assert not path.exists() and list(tmp_path.iterdir()) == []
