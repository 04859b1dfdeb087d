"""Quantizers: Keras layers owning a tensor's range state, one module per range learner."""

from __future__ import annotations

from typing import Sequence

from tfquant.quantizers.base import Quantizer
from tfquant.quantizers.binary import BinaryQuantizer, TernaryQuantizer
from tfquant.quantizers.dorefa import DoReFaQuantizer
from tfquant.quantizers.lsq import LSQQuantizer
from tfquant.quantizers.minmax import MinMaxQuantizer
from tfquant.quantizers.pact import PACTQuantizer
from tfquant.specs import TensorSpec

QUANTIZER_CLASSES: dict[str, type[Quantizer]] = {
    "minmax": MinMaxQuantizer,
    "ema": MinMaxQuantizer,
    "fixed": MinMaxQuantizer,
    "lsq": LSQQuantizer,
    "lsq_plus": LSQQuantizer,
    "pact": PACTQuantizer,
    "dorefa": DoReFaQuantizer,
    "binary": BinaryQuantizer,
    "ternary": TernaryQuantizer,
}


def make_quantizer(spec: TensorSpec, axis: int | Sequence[int] | None = None,
                   name: str | None = None) -> Quantizer:
    """Builds the quantizer class that implements ``spec.learner``.

    Example:
        >>> q = make_quantizer(TensorSpec(learner="ema"), name="act")
    """
    try:
        cls = QUANTIZER_CLASSES[spec.learner]
    except KeyError:
        raise ValueError(f"learner {spec.learner!r} has no quantizer yet; available: "
                         f"{sorted(QUANTIZER_CLASSES)}") from None
    return cls(spec, axis=axis, name=name)


__all__ = ["Quantizer", "MinMaxQuantizer", "LSQQuantizer", "PACTQuantizer", "make_quantizer",
           "QUANTIZER_CLASSES", "DoReFaQuantizer", "BinaryQuantizer", "TernaryQuantizer"]
