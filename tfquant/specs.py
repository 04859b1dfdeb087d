"""What to quantize and how: tensor specs, layer specs and the model-wide ``QuantConfig``.

Precedence when resolving a layer's spec: global < layer type < name regex < layer name.

Example:
    >>> cfg = QuantConfig.preset("tflite_int8").with_overrides(
    ...     by_name={"logits": {"activations": {"bits": 16}}})
    >>> cfg.resolve("logits", "Dense").activations.bits
    16
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Iterable, Mapping

from tfquant.qparams import check_bits

LEARNERS = ("minmax", "ema", "lsq", "lsq_plus", "pact", "fixed", "dorefa", "binary", "ternary")


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """How one tensor (weights or activations) is quantized.

    Attributes:
        bits: bit width, 2 to 16.
        symmetric: zero point fixed at the middle of a signed grid.
        per_axis: one range per channel (weights only).
        narrow_range: drop the lowest integer level (TFLite weights: [-127, 127]).
        signed: integers stored signed (int8) rather than unsigned (uint8).
        learner: how the range is obtained: ``"minmax"`` (last value), ``"ema"`` (moving average
            of batch min/max), ``"lsq"`` (learned step size), ``"lsq_plus"`` (learned step and
            offset), ``"pact"`` (learned clipping level), ``"fixed"`` (constant range), and the
            zoo learners.
        ema_decay: decay of the ``"ema"`` learner.
        quant_start_step: training steps during which ranges are only observed and the tensor
            passes through unquantized.
        freeze_step: training step after which the range stops changing (None: never).
        init_min: initial / fixed range minimum (``"fixed"``, ``"pact"`` uses ``init_max``).
        init_max: initial / fixed range maximum.
        regularization: L2 weight of a learned clipping level (PACT).
    """

    bits: int = 8
    symmetric: bool = False
    per_axis: bool = False
    narrow_range: bool = False
    signed: bool = True
    learner: str = "ema"
    ema_decay: float = 0.999
    quant_start_step: int = 0
    freeze_step: int | None = None
    init_min: float = -6.0
    init_max: float = 6.0
    regularization: float = 0.0

    def __post_init__(self):
        check_bits(self.bits, "bits")
        if self.learner not in LEARNERS:
            raise ValueError(f"learner={self.learner!r} is unknown; expected one of {LEARNERS}.")
        if not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"ema_decay={self.ema_decay!r} must be in (0, 1).")
        if self.quant_start_step < 0:
            raise ValueError(f"quant_start_step={self.quant_start_step!r} must be >= 0.")
        if self.freeze_step is not None and self.freeze_step < 0:
            raise ValueError(f"freeze_step={self.freeze_step!r} must be >= 0 or None.")
        if self.freeze_step is not None and self.freeze_step < self.quant_start_step:
            raise ValueError(f"freeze_step={self.freeze_step!r} comes before quant_start_step="
                             f"{self.quant_start_step!r}: the range would be frozen before the "
                             "tensor is quantized.")
        if self.init_max <= self.init_min:
            raise ValueError(f"init_min={self.init_min} must be < init_max={self.init_max}.")

    def replace(self, **changes: Any) -> "TensorSpec":
        """A copy with ``changes`` applied; unknown keys raise ``ValueError`` naming them."""
        _check_keys(changes, _TENSOR_FIELDS, "TensorSpec")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """Plain dict, the inverse of ``TensorSpec(**d)``."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TensorSpec":
        """Builds a spec from a dict; unknown keys raise ``ValueError`` naming them."""
        _check_keys(d, _TENSOR_FIELDS, "TensorSpec")
        return cls(**dict(d))


_TENSOR_FIELDS = tuple(f.name for f in dataclasses.fields(TensorSpec))


@dataclasses.dataclass(frozen=True)
class LayerSpec:
    """How one layer is quantized.

    Attributes:
        weights: spec of the layer's weights (None: weights stay float).
        activations: spec of the layer's output (and of inputs it has to quantize itself).
        skip: leave this layer in float.
        fold_bn: fold a following BatchNormalization into this layer's weights.
        bn_freeze_step: training step after which folded BN uses its moving statistics.
    """

    weights: TensorSpec | None = TensorSpec()
    activations: TensorSpec | None = TensorSpec()
    skip: bool = False
    fold_bn: bool = True
    bn_freeze_step: int | None = None

    def __post_init__(self):
        if self.bn_freeze_step is not None and (
                isinstance(self.bn_freeze_step, bool)
                or not isinstance(self.bn_freeze_step, int) or self.bn_freeze_step < 0):
            raise ValueError(f"bn_freeze_step={self.bn_freeze_step!r} must be an integer >= 0 "
                             "or None.")

    def to_dict(self) -> dict:
        """Plain nested dict."""
        return {"weights": None if self.weights is None else self.weights.to_dict(),
                "activations": None if self.activations is None else self.activations.to_dict(),
                "skip": self.skip, "fold_bn": self.fold_bn, "bn_freeze_step": self.bn_freeze_step}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "LayerSpec":
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError``."""
        _check_keys(d, _LAYER_FIELDS, "LayerSpec")
        d = dict(d)
        for key in ("weights", "activations"):
            if isinstance(d.get(key), Mapping):
                d[key] = TensorSpec.from_dict(d[key])
        return cls(**d)

    def apply(self, override: Mapping[str, Any]) -> "LayerSpec":
        """Applies a partial override such as ``{"weights": {"bits": 4}, "skip": False}``.

        A tensor key mapped to None switches that tensor's quantization off.
        """
        _check_keys(override, _LAYER_FIELDS, "layer override")
        changes: dict[str, Any] = {}
        for key, value in override.items():
            if key in ("weights", "activations"):
                if value is None or isinstance(value, TensorSpec):
                    changes[key] = value
                elif isinstance(value, Mapping):
                    base = getattr(self, key) or TensorSpec()
                    changes[key] = base.replace(**value)
                else:
                    raise ValueError(f"override[{key!r}] must be a dict, a TensorSpec or None; "
                                     f"got {value!r}.")
            else:
                changes[key] = value
        return dataclasses.replace(self, **changes)


_LAYER_FIELDS = tuple(f.name for f in dataclasses.fields(LayerSpec))


def merge_overrides(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``extra`` nested in: dicts under the same key merge recursively, any
    other value of ``extra`` replaces ``base``'s.

    Example:
        >>> merge_overrides({"Dense": {"weights": {"per_axis": False}}},
        ...                 {"Dense": {"weights": {"bits": 4}}})
        {'Dense': {'weights': {'per_axis': False, 'bits': 4}}}
    """
    merged = dict(base)
    for key, value in extra.items():
        old = merged.get(key)
        merged[key] = (merge_overrides(old, value)
                       if isinstance(old, Mapping) and isinstance(value, Mapping) else value)
    return merged


def _check_keys(d: Mapping[str, Any], allowed: Iterable[str], what: str) -> None:
    if not isinstance(d, Mapping):
        raise ValueError(f"{what} must be a dict, got {type(d).__name__}: {d!r}")
    unknown = sorted(set(d) - set(allowed))
    if unknown:
        raise ValueError(f"unknown {what} key(s) {unknown}; valid keys: {sorted(allowed)}.")


_WEIGHTS_INT8 = TensorSpec(bits=8, symmetric=True, per_axis=True, narrow_range=True,
                           learner="minmax")
_ACTS_INT8 = TensorSpec(bits=8, learner="ema")

# TFLite's converter rejects per-channel weights behind a reshape or transpose: Dense (lowered
# to MatMul + transpose), the depthwise and separable 1-D convolutions (their kernels get a
# leading axis for the 2-D ops; Conv1D quantizes that form itself) and the transposed
# convolutions (kernel transposed for TRANSPOSE_CONV).
_PER_TENSOR = {"weights": {"per_axis": False}}
_TFLITE_TYPES = {name: _PER_TENSOR for name in ("Dense", "DepthwiseConv1D", "SeparableConv1D",
                                                "Conv1DTranspose", "Conv2DTranspose")}

PRESETS: dict[str, dict[str, Any]] = {
    # TFLite's int8 scheme: per-channel symmetric narrow-range weights, EMA asymmetric activations.
    "tflite_int8": {"global": LayerSpec(_WEIGHTS_INT8, _ACTS_INT8), "by_type": _TFLITE_TYPES},
    # 16-bit symmetric activations, 8-bit weights (TFLite int16x8 mode).
    "tflite_int16x8": {"global": LayerSpec(
        _WEIGHTS_INT8, TensorSpec(bits=16, symmetric=True, learner="ema")),
        "by_type": _TFLITE_TYPES},
    "w8a8_per_tensor": {"global": LayerSpec(_WEIGHTS_INT8.replace(per_axis=False), _ACTS_INT8)},
    # Learned step size (Esser et al. 2019) for weights, LSQ+ offset for activations.
    "lsq_w4a4": {"global": LayerSpec(
        TensorSpec(bits=4, symmetric=True, per_axis=True, narrow_range=True, learner="lsq"),
        TensorSpec(bits=4, learner="lsq_plus")), "first_last_bits": 8, "by_type": _TFLITE_TYPES},
    # PACT clipping (Choi et al. 2018) for activations, per-channel min/max weights.
    "pact_w4a4": {"global": LayerSpec(
        TensorSpec(bits=4, symmetric=True, per_axis=True, narrow_range=True, learner="minmax"),
        TensorSpec(bits=4, learner="pact", init_min=0.0, init_max=6.0,
                   regularization=1e-4)), "first_last_bits": 8, "by_type": _TFLITE_TYPES},
    # NNI's NaiveQuantizer: weight-only, per-tensor symmetric 8-bit, activations stay float.
    "naive_w8": {"global": LayerSpec(_WEIGHTS_INT8.replace(per_axis=False), None)},
}


class QuantConfig:
    """Model-wide quantization settings with per-type, per-regex and per-name overrides.

    Args:
        global_spec: the default :class:`LayerSpec`. None: the ``"tflite_int8"`` preset's, and
            then its per-type rules (Dense and the 1-D depthwise/separable and transposed
            convolutions per-tensor, as the TFLite converter requires) come first in
            ``by_type``.
        by_type: layer class name -> override dict (e.g. ``{"Dense": {"weights": {"bits": 4}}}``).
        by_regex: regular expression -> override dict, for the layers whose whole name it
            matches (``re.fullmatch``: ``"block_1.*"``, not ``"block_1"``).
        by_name: exact layer name -> override dict.
        first_last_bits: when set, the first and last weighted layers keep this many bits
            for their weights and output (common practice for low-bit QAT); it ranks above
            the type overrides and below the regex and name ones. An activation layer fused
            into them (a separate ReLU) keeps its own spec.

    Overrides nest: a later override dict changes only the keys it names, so
    ``{"weights": {"bits": 4}}`` on top of ``{"weights": {"per_axis": False}}`` keeps both.
    Quantizing a model with a ``by_name`` key or ``by_regex`` pattern that matches none of its
    layers raises ``ValueError`` naming it (a typo would otherwise change nothing, silently).

    Example:
        >>> cfg = QuantConfig(by_type={"Dense": {"weights": {"bits": 4}}})
        >>> spec = cfg.resolve("fc", "Dense").weights
        >>> spec.bits, spec.per_axis
        (4, False)
    """

    def __init__(self, global_spec: LayerSpec | None = None,
                 by_type: Mapping[str, Mapping] | None = None,
                 by_regex: Mapping[str, Mapping] | None = None,
                 by_name: Mapping[str, Mapping] | None = None,
                 first_last_bits: int | None = None):
        if global_spec is None:
            global_spec = PRESETS["tflite_int8"]["global"]
            by_type = merge_overrides(PRESETS["tflite_int8"]["by_type"], by_type or {})
        self.global_spec = global_spec
        self.by_type = dict(by_type or {})
        self.by_regex = dict(by_regex or {})
        self.by_name = dict(by_name or {})
        self.first_last_bits = None if first_last_bits is None else check_bits(
            first_last_bits, "first_last_bits")
        for table, what in ((self.by_type, "by_type"), (self.by_regex, "by_regex"),
                            (self.by_name, "by_name")):
            for key, override in table.items():
                try:
                    self.global_spec.apply(override)
                except ValueError as err:
                    raise ValueError(f"QuantConfig {what}[{key!r}]: {err}") from None
        for pattern in self.by_regex:
            try:
                re.compile(pattern)
            except re.error as err:
                raise ValueError(f"QuantConfig by_regex key {pattern!r} is not a valid regular "
                                 f"expression: {err}") from None

    @classmethod
    def preset(cls, name: str) -> "QuantConfig":
        """One of :data:`PRESETS` by name."""
        if name not in PRESETS:
            raise ValueError(f"unknown config preset {name!r}; available: {sorted(PRESETS)}.")
        p = PRESETS[name]
        return cls(p["global"], by_type=p.get("by_type"), first_last_bits=p.get("first_last_bits"))

    @classmethod
    def from_config_list(cls, config_list, **kwargs) -> "QuantConfig":
        """An NNI-style config list; see :func:`tfquant.config_list.from_config_list`."""
        from tfquant.config_list import from_config_list
        return from_config_list(config_list, **kwargs)

    @classmethod
    def coerce(cls, config: "QuantConfig | str | Mapping | None") -> "QuantConfig":
        """Accepts a QuantConfig, a preset name, a dict of constructor arguments or None."""
        if config is None:
            return cls.preset("tflite_int8")
        if isinstance(config, QuantConfig):
            return config
        if isinstance(config, str):
            return cls.preset(config)
        if isinstance(config, Mapping):
            return cls.from_dict(config)
        raise TypeError(f"config must be a QuantConfig, a preset name or a dict, got "
                        f"{type(config).__name__}.")

    def with_overrides(self, by_type=None, by_regex=None, by_name=None) -> "QuantConfig":
        """A copy with extra overrides, nested into the existing ones (the new values win
        for the keys they name)."""
        return QuantConfig(self.global_spec, merge_overrides(self.by_type, by_type or {}),
                           merge_overrides(self.by_regex, by_regex or {}),
                           merge_overrides(self.by_name, by_name or {}), self.first_last_bits)

    def unmatched(self, layer_names: Iterable[str],
                  known_types: Iterable[str] | None = None) -> list[str]:
        """The ``by_name`` keys and ``by_regex`` patterns that match none of ``layer_names``,
        and the ``by_type`` keys that are none of ``known_types`` (when given), described for
        an error message (empty when every one matches)."""
        names = set(layer_names)
        problems = []
        if known_types is not None:
            types = set(known_types)
            problems += [f"by_type key {key!r} (no layer class of that name)"
                         for key in self.by_type if key not in types]
        problems += [f"by_name key {key!r}" for key in self.by_name if key not in names]
        problems += [f"by_regex pattern {pattern!r} (it must match a whole name)"
                     for pattern in self.by_regex
                     if not any(re.fullmatch(pattern, name) for name in names)]
        return problems

    def resolve(self, layer_name: str, layer_type: str | Iterable[str],
                after_type: Mapping[str, Any] | None = None) -> LayerSpec:
        """The effective :class:`LayerSpec` of a layer.

        Args:
            layer_name: the layer's name.
            layer_type: its class name, or the class names of its hierarchy (most derived first).
            after_type: a :class:`TensorSpec` override (e.g. ``{"bits": 8}``) for both
                tensors, applied after the type overrides and before the regex and name ones
                (the annotator's ``first_last_bits``).
        """
        types = [layer_type] if isinstance(layer_type, str) else list(layer_type)
        return self.apply_overrides(self.global_spec, layer_name, types, after_type)

    def apply_overrides(self, spec: LayerSpec, layer_name: str, types: list[str],
                        after_type: Mapping[str, Any] | None = None) -> LayerSpec:
        """``spec`` with the type, regex and name overrides applied, in that precedence
        (``after_type``: see :meth:`resolve`)."""
        for type_name in reversed(types):
            if type_name in self.by_type:
                spec = spec.apply(self.by_type[type_name])
        if after_type:
            spec = spec.apply({k: dict(after_type) for k in ("weights", "activations")
                               if getattr(spec, k) is not None})
        for pattern, override in self.by_regex.items():
            if re.fullmatch(pattern, layer_name):
                spec = spec.apply(override)
        if layer_name in self.by_name:
            spec = spec.apply(self.by_name[layer_name])
        return spec

    def to_dict(self) -> dict:
        """Plain dict for logging or JSON."""
        return {"global_spec": self.global_spec.to_dict(), "by_type": self.by_type,
                "by_regex": self.by_regex, "by_name": self.by_name,
                "first_last_bits": self.first_last_bits}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "QuantConfig":
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError`` naming them."""
        allowed = ("global_spec", "by_type", "by_regex", "by_name", "first_last_bits", "preset")
        _check_keys(d, allowed, "QuantConfig")
        d = dict(d)
        base = cls.preset(d.pop("preset")) if "preset" in d else cls()
        glob = d.pop("global_spec", None)
        if isinstance(glob, Mapping):
            glob = LayerSpec.from_dict(glob)
        return cls(glob or base.global_spec, merge_overrides(base.by_type, d.get("by_type") or {}),
                   d.get("by_regex"),
                   d.get("by_name"), d.get("first_last_bits", base.first_last_bits))
