"""Exporters: TFLite (int8, int16x8, dynamic range), Keras formats and encodings.

Example:
    >>> tfquant.export.tflite(qat, "m.tflite", input_type="int8")
    >>> tfquant.export.keras_h5(qat, "m.h5")                 # folded float model
    >>> tfquant.export.saved_model(qat, "m_savedmodel")
    >>> tfquant.export.encodings(qat, "m.encodings.json", version="1.0.0")
    >>> tfquant.export.load_encodings(other_qat, "m.encodings.json")
"""

from tfquant.export.encodings import encoding_targets, encodings
from tfquant.export.encodings_load import load_encodings
from tfquant.export.folding import folded_float_model
from tfquant.export.formats import keras_file, keras_h5, saved_model
from tfquant.export.tflite import check_exportable, float_ops, tflite
from tfquant.export.tflite_compact import compact_tflite

__all__ = ["tflite", "compact_tflite", "float_ops", "check_exportable", "folded_float_model",
           "keras_h5", "keras_file", "saved_model", "encodings", "load_encodings",
           "encoding_targets"]
