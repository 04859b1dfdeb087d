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
from typing import Any, Iterable, Mapping

import keras
import numpy as np

from tfquant.export.paths import check_output_path, write_atomic
from tfquant.export.tflite import _all_layers
from tfquant.layers.wrapper import QuantizeWrapper
from tfquant.qparams import QuantParams, unsigned_grid
from tfquant.quantizers import Quantizer

VERSIONS = ("0.6.1", "1.0.0")
EXTENSION_KEY = "tfquant"
# Relative scale difference accepted when a range is rebuilt from scale/offset alone (the
# range -> scale computation in float32 is not exactly invertible: a few ULPs).
SCALE_RTOL = 1e-5


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
        ValueError: unknown ``version``.
        FileNotFoundError: ``path``'s directory is missing (nothing is written).

    Example:
        >>> doc = tfquant.export.encodings(qat, "m.encodings.json", version="0.6.1")
        >>> doc["param_encodings"]["conv1/kernel"][0]["offset"]
        -128
    """
    if version not in VERSIONS:
        raise ValueError(f"version={version!r} is not one of {VERSIONS}")
    if path is not None:
        check_output_path(path)
    targets = encoding_targets(qmodel)
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
            "per_channel_quantization": any(p.per_axis for n, p in params.items()
                                            if kinds[n] == "param"),
            "is_symmetric": all(p.symmetric for n, p in params.items() if kinds[n] == "param"),
            "quant_scheme": "tfquant",
        },
        EXTENSION_KEY: {"state": {f"{t.kind}:{t.name}": _state(t.quantizer) for t in targets}},
    }
    if path is not None:
        write_atomic(path, json.dumps(doc, indent=1))
    return doc


# -------------------------------------------------------------------------- load
@dataclasses.dataclass
class _Encoding:
    bits: int
    scale: np.ndarray  # float32, one per channel
    offset: np.ndarray  # int64, one per channel


def _read(source: str | os.PathLike | Mapping) -> Mapping:
    if not isinstance(source, (str, os.PathLike)):
        return source  # a document (checked by the caller)
    with open(os.fspath(source)) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as err:
            raise ValueError(f"{os.fspath(source)!r} is not valid JSON ({err})") from None


def _parse_channels(name: str, channels: list, problems: list[str]) -> _Encoding | None:
    """0.6.1 / 0.5 style: a list of per-channel dicts."""
    try:
        if not channels:
            raise ValueError("empty encoding list")
        bits = {int(c["bitwidth"]) for c in channels}
        if len(bits) != 1:
            raise ValueError(f"channels disagree on the bitwidth {sorted(bits)}")
        if any(str(c.get("dtype", "int")).lower() != "int" for c in channels):
            raise ValueError("dtype is not 'int'")
        scale = np.array([c["scale"] for c in channels], np.float32)
        offset = np.array([c["offset"] for c in channels], np.float64)
    except (KeyError, TypeError, ValueError) as err:
        problems.append(f"{name}: malformed encoding ({err})")
        return None
    return _checked(name, bits.pop(), scale, offset, problems)


def _parse_entry(entry: Mapping, problems: list[str]) -> tuple[str | None, _Encoding | None]:
    """1.0.0 style: one named dict with lists."""
    name = entry.get("name") if isinstance(entry, Mapping) else None
    try:
        if name is None:
            raise ValueError("entry without 'name'")
        if str(entry.get("dtype", "INT")).upper() != "INT":
            raise ValueError("dtype is not 'INT'")
        scale = np.atleast_1d(np.array(entry["scale"], np.float32))
        offset = np.atleast_1d(np.array(entry["offset"], np.float64))
        bits = int(entry["bw"])
    except (KeyError, TypeError, ValueError) as err:
        problems.append(f"{name or entry!r}: malformed encoding ({err})")
        return name, None
    return name, _checked(name, bits, scale, offset, problems)


def _checked(name, bits, scale, offset, problems) -> _Encoding | None:
    if scale.shape != offset.shape:
        problems.append(f"{name}: {scale.size} scales but {offset.size} offsets")
        return None
    if not (np.all(np.isfinite(scale)) and np.all(scale > 0)):
        problems.append(f"{name}: scales must be finite and > 0")
        return None
    if np.any(offset != np.round(offset)):
        problems.append(f"{name}: offsets must be integers")
        return None
    return _Encoding(bits, scale, offset.astype(np.int64))


def _parse(doc: Mapping, problems: list[str]) -> dict[tuple[str, str], _Encoding]:
    parsed: dict[tuple[str, str], _Encoding] = {}
    for key, kind in (("activation_encodings", "activation"), ("param_encodings", "param")):
        section = doc.get(key) or {}
        if isinstance(section, Mapping):  # 0.4 - 0.6.1
            items = ((name, _parse_channels(name, list(enc) if isinstance(enc, list) else [enc],
                                            problems)) for name, enc in section.items())
        elif isinstance(section, list):  # 1.0.0
            items = (_parse_entry(entry, problems) for entry in section)
        else:
            problems.append(f"'{key}' must be a dict or a list, got {type(section).__name__}")
            continue
        for name, enc in items:
            if name is None:
                continue
            if (kind, name) in parsed:
                problems.append(f"{name}: listed twice in {key}")
            parsed[(kind, name)] = enc
    return parsed


def _matches(p: QuantParams, enc: _Encoding, exact: bool) -> bool:
    zp = np.atleast_1d(_unsigned_zero_point(p))
    scale = np.atleast_1d(np.asarray(p.scale, np.float32))
    if zp.shape != enc.offset.shape or np.any(zp != -enc.offset):
        return False
    if exact:
        return bool(np.array_equal(scale, enc.scale))
    return bool(np.allclose(scale, enc.scale, rtol=SCALE_RTOL, atol=0.0))


def _set_from_scale_offset(q: Quantizer, enc: _Encoding, symmetric: bool) -> None:
    qmin, qmax = unsigned_grid(q.spec.bits, q.spec.narrow_range)
    lo = ((qmin + enc.offset) * enc.scale.astype(np.float64)).astype(np.float32)
    hi = ((qmax + enc.offset) * enc.scale.astype(np.float64)).astype(np.float32)
    if enc.scale.size == 1 and q.axis is None:
        lo, hi = lo[0], hi[0]
    # a symmetric quantizer rebuilds its range from the largest magnitude: hand it +-max
    q.set_range(-hi if symmetric else lo, hi)


def _assign_state(q: Quantizer, state: Mapping) -> bool:
    variables = {v.name: v for v in q.weights if v.name != "steps"}
    if set(state) != set(variables):
        return False
    values = {}
    for key, var in variables.items():
        value = np.asarray(state[key], dtype=var.dtype)
        if value.shape != tuple(var.shape):
            return False
        values[key] = value
    for key, value in values.items():
        variables[key].assign(value)
    return True


def load_encodings(qmodel: keras.Model, source: str | os.PathLike | Mapping, *,
                   strict: bool = True) -> keras.Model:
    """Puts the ranges of an encodings file (or dict) back into ``qmodel``'s quantizers.

    Names follow :func:`encodings` (the module docstring). Files written by :func:`encodings`
    restore each quantizer's variables exactly (the ``"tfquant"`` object), so the model's
    fake-quant outputs are identical to those of the model that wrote the file. Other files
    are applied from scale and offset through each quantizer's ``set_range``, which reproduces
    the offsets exactly and the scales to a few float32 ULPs.

    Args:
        qmodel: the quantized model to update (same architecture and configuration).
        source: a path to a ``.json`` file (versions 0.4 to 1.0.0) or the document itself.
        strict: every enabled quantizer of ``qmodel`` must have an encoding (False: quantizers
            missing from the file keep their ranges).

    Returns:
        ``qmodel`` (updated in place).

    Raises:
        ValueError: listing every mismatch at once (unknown names, missing tensors, bitwidth or
            channel-count differences, malformed entries, ranges a quantizer cannot take, e.g.
            an asymmetric encoding for a symmetric quantizer). ``qmodel`` is then unchanged.

    Example:
        >>> tfquant.export.load_encodings(qat, "m.encodings.json")
    """
    doc = _read(source)
    problems: list[str] = []
    if not isinstance(doc, Mapping):
        raise ValueError(f"an encodings document is a JSON object, got {type(doc).__name__}")
    parsed = _parse(doc, problems)
    targets = {(t.kind, t.name): t for t in encoding_targets(qmodel)}
    for (kind, name), enc in sorted(parsed.items()):
        if (kind, name) not in targets:
            other = "param" if kind == "activation" else "activation"
            hint = (f" (the model has it as a {other} tensor)" if (other, name) in targets
                    else "")
            problems.append(f"{name}: no {kind} tensor of that name in the model{hint}")
            continue
        target = targets[(kind, name)]
        if enc is None:
            continue
        if enc.bits != target.quantizer.spec.bits:
            problems.append(f"{name}: bitwidth {enc.bits} in the file, the model quantizes it "
                            f"with {target.quantizer.spec.bits} bits")
        if enc.scale.size != target.channels:
            problems.append(f"{name}: {enc.scale.size} channel encoding(s) in the file, the "
                            f"model has {target.channels}")
    if strict:
        for key in sorted(set(targets) - set(parsed)):
            problems.append(f"{key[1]}: {key[0]} tensor of the model has no encoding in the "
                            "file (pass strict=False to keep its current range)")
    if problems:
        raise ValueError("encodings do not match the model:\n  - " + "\n  - ".join(problems))

    states = (doc.get(EXTENSION_KEY) or {}).get("state", {})
    todo = [(targets[key], enc) for key, enc in parsed.items() if key in targets]
    saved = {id(t.quantizer): [(v, np.array(keras.ops.convert_to_numpy(v))) for v in
                                t.quantizer.weights] for t, _ in todo}
    symmetric = {id(t.quantizer): t.quantizer.quant_params().symmetric for t, _ in todo}
    for target, enc in todo:
        q = target.quantizer
        state = states.get(f"{target.kind}:{target.name}")
        if state is not None and _assign_state(q, state) and _matches(q.quant_params(), enc,
                                                                      exact=True):
            continue
        for var, value in saved[id(q)]:
            var.assign(value)
        try:
            _set_from_scale_offset(q, enc, symmetric[id(q)])
        except NotImplementedError:
            problems.append(f"{target.name}: {type(q).__name__} cannot take a range")
            continue
        except ValueError as err:
            problems.append(f"{target.name}: {err}")
            continue
        if not _matches(q.quant_params(), enc, exact=False):
            got = q.quant_params()
            problems.append(
                f"{target.name}: the quantizer cannot represent this encoding (file: scale "
                f"{_channel_list(enc.scale)[:4]}, offset {_channel_list(enc.offset)[:4]}; "
                f"after loading: scale {_channel_list(got.scale)[:4]}, offset "
                f"{_channel_list(-_unsigned_zero_point(got))[:4]})"
                + (" - a symmetric quantizer needs offset -2**(bitwidth-1)"
                   if symmetric[id(q)] else ""))
    if problems:
        for values in saved.values():
            for var, value in values:
                var.assign(value)
        raise ValueError("encodings do not match the model:\n  - " + "\n  - ".join(problems))
    return qmodel
