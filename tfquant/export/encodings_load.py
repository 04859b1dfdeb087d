"""Loading AIMET-style encodings (0.4 to 1.0.0) back into a quantized model's quantizers.

The names and conventions are those of :mod:`tfquant.export.encodings`. Every mismatch
between the file and the model is collected and reported in one ``ValueError``; the model is
changed only when the whole file applies.

Example:
    >>> tfquant.export.load_encodings(fresh_qat, "model.encodings.json")
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Mapping

import keras
import numpy as np

from tfquant.export.encodings import (EXTENSION_KEY, _channel_list, _unsigned_zero_point,
                                      encoding_targets)
from tfquant.qparams import QuantParams, unsigned_grid
from tfquant.quantizers import Quantizer

# Relative scale difference accepted when a range is rebuilt from scale/offset alone (the
# range -> scale computation in float32 is not exactly invertible: a few ULPs).
SCALE_RTOL = 1e-5


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


def _symmetric_by_spec(q: Quantizer) -> bool:
    """Whether ``q`` keeps its zero point at 0 by construction (its spec, or the learner's own
    rule, e.g. LSQ vs LSQ+), whatever range it holds now.

    The current :meth:`~Quantizer.quant_params` cannot tell: an uncalibrated asymmetric
    quantizer still holds its symmetric initial range (``init_min = -init_max``).
    """
    return bool(getattr(q, "symmetric", q.spec.symmetric))


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
    symmetric = {id(t.quantizer): _symmetric_by_spec(t.quantizer) for t, _ in todo}
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
