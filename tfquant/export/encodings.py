"""AIMET-style encodings JSON: export every quantizer's parameters and load them back.

Tensor names refer to the folded float model written by :func:`~tfquant.export.keras_h5`,
:func:`~tfquant.export.saved_model` and :func:`~tfquant.export.keras_file`
(:func:`~tfquant.export.folded_float_model`):

* ``param_encodings``: ``"<layer>/<attribute>"``, the weight's ``variable.path`` in the folded
  model (``"conv1/kernel"``), stored as ``model_weights/conv1/conv1/kernel`` in the ``.h5`` and
  as variable ``conv1/kernel:0`` in the SavedModel. Weights hold the BN-folded values.
  Per-channel encodings list one value per output channel; a depthwise kernel
  ``(kh, kw, in, multiplier)`` has ``in * multiplier`` channels in row-major order.
* ``activation_encodings``: the name of the layer whose output is quantized, e.g. ``"relu1"``
  (a ReLU fused into the convolution before it carries the output encoding), ``"add"``, or
  the model input's name (``"image"``) for an input quantizer. In the ``.h5`` these are the
  layer names of ``model_config``; in the SavedModel graph the tensor is the last op under
  the name scope ``<model>/<layer>_<n>/`` of the serving function (the input: its argument
  ``<name>``). Tensors inside a layer that TFLite keeps separate are
  ``"<layer>/pre_activation"`` (before a non-fused activation such as softmax) and
  ``"<layer>/intermediate"`` (between the two products of a separable convolution).

Each encoding (AIMET conventions; ``real = scale * (q + offset)`` on the unsigned grid
``[0, 2**bitwidth - 1]``, so ``offset = -zero_point``; symmetric int8 has ``offset = -128``):

* version ``"0.6.1"``: ``{name: [{"bitwidth", "dtype": "int", "is_symmetric": "True"|"False",
  "min", "max", "offset", "scale"}, ...one per channel]}``; ``min``/``max`` are the ends of the
  grid the quantizer uses (with ``narrow_range`` the lowest level is unused:
  ``min = (offset + 1) * scale``).
* version ``"1.0.0"``: ``[{"name", "dtype": "INT", "enc_type": "PER_TENSOR"|"PER_CHANNEL",
  "is_sym": bool, "bw", "scale": [...], "offset": [...]}]``.

Every value comes from :meth:`Quantizer.quant_params`. The file also carries a ``"tfquant"``
object with each quantizer's range variables, so that :func:`load_encodings` restores the
quantizers bit-exactly; files without it (other tools) are loaded from scale and offset.

Example:
    >>> tfquant.export.encodings(qat, "model.encodings.json", version="1.0.0")
    >>> tfquant.export.keras_h5(qat, "model.h5")
    >>> tfquant.export.load_encodings(fresh_qat, "model.encodings.json")
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
from typing import Any, Iterable

import keras
import numpy as np

from tfquant.export.paths import check_output_file, write_atomic
from tfquant.export.tflite import _all_layers
from tfquant.layers.wrapper import QuantizeWrapper
from tfquant.qparams import QuantParams
from tfquant.quantizers import Quantizer

VERSIONS = ("0.6.1", "1.0.0")
EXTENSION_KEY = "tfquant"


@dataclasses.dataclass(frozen=True)
class EncodingTarget:
    """One quantized tensor of a model and the name its encoding is stored under.

    Attributes:
        name: the tensor name in the folded float model (see the module docstring).
        kind: ``"param"`` or ``"activation"``.
        quantizer: the :class:`~tfquant.quantizers.Quantizer` holding the tensor's range.
    """

    name: str
    kind: str
    quantizer: Quantizer

    @property
    def channels(self) -> int:
        """Number of (scale, offset) pairs: 1 per tensor, else one per channel."""
        return int(np.prod(getattr(self.quantizer, "param_shape", ()) or (1,)))


def encoding_targets(qmodel: keras.Model) -> list[EncodingTarget]:
    """Every enabled quantizer of ``qmodel`` with its encodings name, in layer order.

    Example:
        >>> [(t.kind, t.name) for t in encoding_targets(qat)][:2]
        [('activation', 'image'), ('param', 'conv1/kernel')]
    """
    targets = []
    for layer in _all_layers(qmodel):
        if isinstance(layer, Quantizer):
            targets.append(EncodingTarget(_source_name(layer), "activation", layer))
        elif isinstance(layer, QuantizeWrapper):
            inner = layer.layer.name
            for attr, q in layer.weight_quantizers.items():
                targets.append(EncodingTarget(f"{inner}/{attr}", "param", q))
            for role, suffix in (("intermediate", "/intermediate"),
                                 ("pre_activation", "/pre_activation"), ("output", "")):
                q = getattr(layer, f"{role}_quantizer")
                if q is not None:
                    targets.append(EncodingTarget(inner + suffix, "activation", q))
    targets = [t for t in targets if t.quantizer.enabled]
    seen = collections.Counter((t.kind, t.name) for t in targets)
    clashes = sorted(name for (_, name), n in seen.items() if n > 1)
    if clashes:
        raise ValueError(f"several quantizers map to the same encodings name: {clashes}")
    return targets


def _source_name(quantizer: Quantizer) -> str:
    """The name of the tensor a standalone quantizer quantizes: its producer's name (the
    model input's name for an input quantizer), else the quantizer's own name."""
    nodes = getattr(quantizer, "_inbound_nodes", None) or []
    tensors = list(getattr(nodes[0], "input_tensors", ())) if len(nodes) == 1 else []
    history = getattr(tensors[0], "_keras_history", None) if len(tensors) == 1 else None
    if history is None:
        return quantizer.name
    producer = history[0]
    return producer.layer.name if isinstance(producer, QuantizeWrapper) else producer.name


# ------------------------------------------------------------------------ export
def _unsigned_zero_point(p: QuantParams) -> np.ndarray:
    return np.asarray(p.zero_point, np.int64) + ((1 << (p.bits - 1)) if p.signed else 0)


def _channel_list(values: Any) -> list:
    return np.atleast_1d(np.asarray(values)).tolist()


def _entry_061(p: QuantParams) -> list[dict]:
    offsets = _channel_list(-_unsigned_zero_point(p))
    scales = _channel_list(np.asarray(p.scale, np.float32).astype(np.float64))
    mins = _channel_list(np.asarray(p.min, np.float32).astype(np.float64))
    maxs = _channel_list(np.asarray(p.max, np.float32).astype(np.float64))
    sym = "True" if p.symmetric else "False"
    return [{"bitwidth": p.bits, "dtype": "int", "is_symmetric": sym, "max": hi, "min": lo,
             "offset": int(off), "scale": s}
            for s, off, lo, hi in zip(scales, offsets, mins, maxs)]


def _entry_100(name: str, p: QuantParams) -> dict:
    return {"name": name, "dtype": "INT",
            "enc_type": "PER_CHANNEL" if p.per_axis else "PER_TENSOR",
            "is_sym": bool(p.symmetric), "bw": p.bits,
            "scale": _channel_list(np.asarray(p.scale, np.float32).astype(np.float64)),
            "offset": [int(o) for o in _channel_list(-_unsigned_zero_point(p))]}


def _state(q: Quantizer) -> dict:
    """The quantizer's range variables (not its step counter), JSON-friendly."""
    return {v.name: np.asarray(keras.ops.convert_to_numpy(v)).tolist()
            for v in q.weights if v.name != "steps"}


def _most_common(values: Iterable, default=None):
    counts = collections.Counter(values).most_common(1)
    return counts[0][0] if counts else default


def encodings(qmodel: keras.Model, path: str | os.PathLike | None = None, *,
              version: str = "1.0.0") -> dict:
    """AIMET-style encodings of every quantized tensor of ``qmodel`` (see the module docstring).

    Args:
        qmodel: a quantized (trained or calibrated) model.
        path: where to write the JSON file (None: don't write). Its directory must exist.
        version: ``"1.0.0"`` (list of named entries) or ``"0.6.1"`` (dict keyed by name).

    Returns:
        The encodings document (a dict; what is written as JSON).

    Raises:
        ValueError: unknown ``version``, or a model without quantizers (a float model).
        FileNotFoundError: ``path``'s directory is missing (nothing is written).
        IsADirectoryError: ``path`` is an existing directory (nothing is written).

    Example:
        >>> doc = tfquant.export.encodings(qat, "m.encodings.json", version="0.6.1")
        >>> doc["param_encodings"]["conv1/kernel"][0]["offset"]
        -128
    """
    if version not in VERSIONS:
        raise ValueError(f"version={version!r} is not one of {VERSIONS}")
    if path is not None:
        check_output_file(path)
    targets = encoding_targets(qmodel)
    if not targets:
        raise ValueError(f"model {qmodel.name!r} has no quantizers, so no encodings: pass the "
                         "model tfquant.quantize_model (or tfquant.ptq) returned")
    params = {t.name: t.quantizer.quant_params() for t in targets}
    if version == "1.0.0":
        sections = {kind: [_entry_100(t.name, params[t.name]) for t in targets if t.kind == kind]
                    for kind in ("activation", "param")}
    else:
        sections = {kind: {t.name: _entry_061(params[t.name]) for t in targets
                           if t.kind == kind} for kind in ("activation", "param")}
    report = getattr(qmodel, "quantization_report", None)
    kinds = {t.name: t.kind for t in targets}
    doc = {
        "version": version,
        "activation_encodings": sections["activation"],
        "param_encodings": sections["param"],
        "excluded_layers": list(report.float_layers) if report is not None else [],
        "quantizer_args": {
            "activation_bitwidth": _most_common(
                p.bits for n, p in params.items() if kinds[n] == "activation"),
            "param_bitwidth": _most_common(
                p.bits for n, p in params.items() if kinds[n] == "param"),
            "dtype": "int",
            # AIMET's specification: these two flags are the strings "True" / "False"
            "per_channel_quantization": str(any(p.per_axis for n, p in params.items()
                                                if kinds[n] == "param")),
            "is_symmetric": str(all(p.symmetric for n, p in params.items()
                                    if kinds[n] == "param")),
            "quant_scheme": "tfquant",
        },
        EXTENSION_KEY: {"state": {f"{t.kind}:{t.name}": _state(t.quantizer) for t in targets}},
    }
    if path is not None:
        write_atomic(path, json.dumps(doc, indent=1))
    return doc
