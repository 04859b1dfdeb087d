"""Post-training quantization: calibration, BN folding, CLE, bias correction, the pipeline.

The package is callable: ``tfquant.ptq(model, data)`` runs :func:`~tfquant.ptq.pipeline.ptq`,
while ``tfquant.ptq.calibrate``, ``tfquant.ptq.cle`` ... stay reachable as attributes (a plain
function re-exported as ``tfquant.ptq`` would hide the package's modules).

Example:
    >>> import tfquant
    >>> qmodel = tfquant.ptq(model, x_calib, methods=("cle", "bias_correction"))
    >>> qmodel = tfquant.quantize_model(model); tfquant.ptq.calibrate(qmodel, x_calib)
    >>> weights_only = tfquant.ptq.dynamic_range(model)
"""

import sys as _sys
import types as _types

from tfquant.ptq.bias_correction import (BiasCorrectionReport, analytic_bias_correction,
                                         correct_bias, empirical_bias_correction)
from tfquant.ptq.calibrate import CalibrationReport, calibrate, calibrate_weights, intercept
from tfquant.ptq.cle import CLEReport, EqualizedPair, cross_layer_equalization, equalize
from tfquant.ptq.fold import OutputStatistics, fold_batchnorm
from tfquant.ptq.pipeline import PTQReport, PTQStep, dynamic_range, ptq

__all__ = [
    "ptq", "PTQReport", "PTQStep", "dynamic_range",
    "calibrate", "calibrate_weights", "CalibrationReport", "intercept",
    "fold_batchnorm", "OutputStatistics",
    "cross_layer_equalization", "equalize", "CLEReport", "EqualizedPair",
    "correct_bias", "empirical_bias_correction", "analytic_bias_correction",
    "BiasCorrectionReport",
]


class _CallablePackage(_types.ModuleType):
    """``tfquant.ptq(...)`` calls the pipeline; attribute access is the package's."""

    def __call__(self, *args, **kwargs):
        return ptq(*args, **kwargs)


_sys.modules[__name__].__class__ = _CallablePackage
