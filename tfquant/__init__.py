"""tfquant: quantization-aware training, PTQ, TFLite export and integer simulation for Keras 3.

Example:
    >>> import tfquant
    >>> qat = tfquant.quantize_model(model, config="tflite_int8")
    >>> qat.compile("adam", "sparse_categorical_crossentropy"); qat.fit(x, y)
"""

import os as _os

_os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from tfquant import analysis, datasets, export  # noqa: E402
from tfquant import ptq  # noqa: E402  (a callable package: tfquant.ptq(model, data))
from tfquant.ptq import calibrate, dynamic_range  # noqa: E402
from tfquant.annotate import (quantize_annotate_layer, quantize_annotate_model,  # noqa: E402
                              quantize_apply, quantize_model)
from tfquant.layers import QuantizeAnnotate, QuantizeWrapper, register_layer  # noqa: E402
from tfquant.qparams import QuantParams  # noqa: E402
from tfquant.compat import quantization, quantize_scope  # noqa: E402
from tfquant.config_list import from_config_list  # noqa: E402
from tfquant.quantizers import (BinaryQuantizer, DoReFaQuantizer, LSQQuantizer,  # noqa: E402
                                MinMaxQuantizer, PACTQuantizer, Quantizer, TernaryQuantizer)
from tfquant.quantizers.binary import LatentWeightClip, constrain_latent_weights  # noqa: E402
from tfquant.report import QuantizationReport  # noqa: E402
from tfquant.specs import LayerSpec, QuantConfig, TensorSpec  # noqa: E402
from tfquant import simulate  # noqa: E402
from tfquant.verify import VerificationReport, verify  # noqa: E402  (tfquant.verify(...))

__version__ = "0.1.0"

__all__ = [
    "quantize_model", "quantize_annotate_layer", "quantize_annotate_model", "quantize_apply",
    "QuantizeAnnotate", "QuantizeWrapper", "register_layer", "QuantParams", "Quantizer",
    "MinMaxQuantizer", "LSQQuantizer", "PACTQuantizer", "QuantizationReport", "LayerSpec",
    "QuantConfig", "TensorSpec", "export", "ptq", "calibrate", "dynamic_range",
    "analysis", "quantization", "quantize_scope", "from_config_list", "BinaryQuantizer",
    "DoReFaQuantizer", "TernaryQuantizer", "LatentWeightClip", "constrain_latent_weights",
    "simulate", "verify", "VerificationReport", "datasets",
]
