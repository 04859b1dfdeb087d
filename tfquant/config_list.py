"""NNI-style ``config_list`` import: a list of dicts saying which layers get which bits.

NNI (Microsoft Neural Network Intelligence, v2 quantization API) describes what to quantize with
a list such as::

    config_list = [{
        "quant_types": ["weight", "input"],
        "quant_bits": {"weight": 8, "input": 8},
        "op_types": ["Conv2D", "Dense"],          # or PyTorch names: "Conv2d", "Linear"
    }, {
        "exclude": True,
        "op_names": ["logits"],
    }]

:func:`from_config_list` turns it into a :class:`~tfquant.specs.QuantConfig`. Semantics follow
NNI's: for each layer the *last* matching entry wins as a whole; an entry matches when the layer's
type is in ``op_types`` (when given) **and** its name is in ``op_names`` (when given);
``"default"`` in ``op_types`` means every weighted layer type (Conv*, Dense, ... — whatever the
tfquant registry marks ``"weighted"``); ``"exclude": True`` leaves matching layers in float, and
layers no entry matches stay float too, except that an unmatched BatchNormalization is still
folded into a quantized layer before it (it gets no quantizer of its own; exclude it
explicitly to keep it unfolded).

Mapping onto tfquant:

* ``quant_types``: ``"weight"`` -> :attr:`LayerSpec.weights`; ``"input"`` and ``"output"`` ->
  :attr:`LayerSpec.activations`. tfquant quantizes each tensor once, at its producer: a layer's
  activation spec quantizes its output, and its input only where the producer is not quantized
  (model inputs, float layers). So ``"input"`` alone also quantizes the layer's output, and
  ``input`` and ``output`` may not ask for different bits, dtype or scheme in one entry.
* ``quant_bits``: an int for every listed type, or ``{"weight": 4, "output": 8}``. ``1`` selects
  the binary learner (sign, hardtanh straight-through gradient).
* ``quant_dtype``: ``"int"`` (signed storage) or ``"uint"``, or a per-type dict.
* ``quant_scheme``: ``per_tensor_affine``, ``per_tensor_symmetric``, ``per_channel_affine``,
  ``per_channel_symmetric`` (per-channel only for weights), or a per-type dict. Symmetric
  grids are narrow-range ([-127, 127] for 8 bits), as in NNI and TFLite.
* ``quant_start_step``: :attr:`TensorSpec.quant_start_step` of every tensor of the entry.
* What an entry does not say comes from the ``base`` preset (``"tflite_int8"``: per-channel
  symmetric weights, per-tensor for Dense, EMA asymmetric int8 activations). NNI's own
  defaults (``uint``, ``per_tensor_affine``) apply only when written in the entry. The base's
  ``first_last_bits`` is not used: the list states each layer's bits.
* ``algorithm`` picks the range learners, as the NNI quantizer class does: ``"qat"`` (min/max
  weights, EMA activations), ``"naive"`` (same learners; NNI's NaiveQuantizer is weight-only),
  ``"lsq"``, ``"dorefa"``, ``"bnn"`` (binary), ``"twn"`` (ternary weights). None keeps the
  base preset's learners.

Example:
    >>> cfg = from_config_list([{"quant_types": ["weight"], "quant_bits": 4,
    ...                          "op_types": ["default"]}])
    >>> cfg.resolve("fc", ["Dense"]).weights.bits
    4
    >>> cfg.resolve("fc", ["Dense"]).activations is None
    True
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Mapping, Sequence

from tfquant.qparams import MAX_BITS
from tfquant.specs import LayerSpec, QuantConfig, TensorSpec, merge_overrides

ENTRY_KEYS = ("quant_types", "quant_bits", "op_types", "op_names", "quant_dtype", "quant_scheme",
              "quant_start_step", "exclude")
QUANT_TYPES = ("weight", "input", "output")
# scheme -> (symmetric, per_axis)
SCHEMES = {"per_tensor_affine": (False, False), "per_tensor_symmetric": (True, False),
           "per_channel_affine": (False, True), "per_channel_symmetric": (True, True)}
DTYPES = {"int": True, "uint": False}
# algorithm -> (weight learner, activation learner); "lsq" picks lsq / lsq_plus by symmetry.
ALGORITHMS = {"qat": ("minmax", "ema"), "naive": ("minmax", "ema"), "lsq": ("lsq", "lsq"),
              "dorefa": ("dorefa", "ema"), "bnn": ("binary", "binary"),
              "twn": ("ternary", "ema")}
# PyTorch module names used in NNI's documented lists -> Keras class names.
TORCH_OP_TYPES = {
    "Conv1d": "Conv1D", "Conv2d": "Conv2D", "Conv3d": "Conv3D",
    "ConvTranspose1d": "Conv1DTranspose", "ConvTranspose2d": "Conv2DTranspose",
    "ConvTranspose3d": "Conv3DTranspose", "Linear": "Dense",
    "BatchNorm1d": "BatchNormalization", "BatchNorm2d": "BatchNormalization",
    "BatchNorm3d": "BatchNormalization", "ReLU6": "ReLU", "MaxPool1d": "MaxPooling1D",
    "MaxPool2d": "MaxPooling2D", "AvgPool1d": "AveragePooling1D", "AvgPool2d": "AveragePooling2D",
    "AdaptiveAvgPool2d": "GlobalAveragePooling2D", "Embedding": "Embedding",
}
_LEARNERS_WITH_FIXED_GRID = ("dorefa", "binary", "ternary")


@dataclasses.dataclass(frozen=True)
class ConfigEntry:
    """One validated entry of a config list (per-type values already expanded).

    Attributes:
        index: position in the list (for error messages).
        op_types: accepted layer class names (PyTorch aliases added), or None.
        op_names: accepted layer names, or None.
        exclude: leave matching layers in float.
        tensors: ``{"weight" | "input" | "output": {"bits", "signed", "scheme"}}``.
        quant_start_step: steps before quantization starts (None: from the base).
    """

    index: int
    op_types: frozenset[str] | None
    op_names: frozenset[str] | None
    exclude: bool
    tensors: Mapping[str, Mapping[str, Any]]
    quant_start_step: int | None

    def matches(self, layer_name: str, types: Sequence[str]) -> bool:
        """NNI's rule: type in ``op_types`` (when given) and name in ``op_names`` (when given)."""
        if self.op_types is not None:
            wanted = set(self.op_types)
            if "default" in wanted:
                wanted |= _weighted_type_names()
            if not wanted.intersection(types):
                return False
        if self.op_names is not None and layer_name not in self.op_names:
            return False
        return True


def _weighted_type_names() -> set[str]:
    from tfquant.layers.registry import _REGISTRY
    return {cls.__name__ for cls, rule in _REGISTRY.items() if rule.kind == "weighted"}


# ----------------------------------------------------------------- validation
def _fail(index: int, message: str) -> ValueError:
    return ValueError(f"config_list[{index}]: {message}")


def _str_list(value: Any, key: str, index: int) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not value or not all(
            isinstance(v, str) for v in value):
        raise _fail(index, f"{key!r} must be a non-empty list of strings, got {value!r}")
    return list(value)


def _per_type(value: Any, key: str, types: Sequence[str], index: int, check) -> dict[str, Any]:
    """Expands an int/str or a ``{quant_type: value}`` dict to every listed quant type."""
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - set(QUANT_TYPES))
        if unknown:
            raise _fail(index, f"{key!r} has unknown quant type key(s) {unknown}; valid: "
                        f"{list(QUANT_TYPES)}")
        out = {t: value[t] for t in types if t in value}
    else:
        out = {t: value for t in types}
    for t, v in out.items():
        check(v, f"{key}[{t!r}]" if isinstance(value, Mapping) else key)
    return out


def _parse_entry(index: int, entry: Any) -> ConfigEntry:
    if not isinstance(entry, Mapping):
        raise _fail(index, f"each entry must be a dict, got {type(entry).__name__}: {entry!r}")
    unknown = sorted(set(entry) - set(ENTRY_KEYS))
    if unknown:
        raise _fail(index, f"unknown key(s) {unknown}; valid keys: {list(ENTRY_KEYS)}")
    exclude = entry.get("exclude", False)
    if not isinstance(exclude, bool):
        raise _fail(index, f"'exclude' must be True or False, got {exclude!r}")
    if "op_types" not in entry and "op_names" not in entry:
        raise _fail(index, "needs 'op_types' and/or 'op_names' to select layers")
    op_types = op_names = None
    if "op_types" in entry:
        names = _str_list(entry["op_types"], "op_types", index)
        op_types = frozenset(names) | frozenset(TORCH_OP_TYPES[n] for n in names
                                                if n in TORCH_OP_TYPES)
    if "op_names" in entry:
        op_names = frozenset(_str_list(entry["op_names"], "op_names", index))

    start = entry.get("quant_start_step")
    if start is not None and (isinstance(start, bool) or not isinstance(start, int)
                              or start < 0):
        raise _fail(index, f"'quant_start_step' must be an integer >= 0, got {start!r}")
    if exclude:
        return ConfigEntry(index, op_types, op_names, True, {}, start)

    if "quant_types" not in entry:
        raise _fail(index, "'quant_types' is required (a list of 'weight', 'input', 'output'),"
                    " unless the entry has 'exclude': True")
    types = _str_list(entry["quant_types"], "quant_types", index)
    bad = sorted(set(types) - set(QUANT_TYPES))
    if bad:
        raise _fail(index, f"unknown quant type(s) {bad} in 'quant_types'; valid: "
                    f"{list(QUANT_TYPES)}")

    def check_bits(v, where):
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_BITS:
            raise _fail(index, f"{where}={v!r} must be an integer in [1, {MAX_BITS}]")

    def check_dtype(v, where):
        if v not in DTYPES:
            raise _fail(index, f"{where}={v!r} must be one of {sorted(DTYPES)}")

    def check_scheme(v, where):
        if v not in SCHEMES:
            raise _fail(index, f"{where}={v!r} must be one of {sorted(SCHEMES)}")

    bits = _per_type(entry.get("quant_bits", {}), "quant_bits", types, index, check_bits)
    dtypes = _per_type(entry.get("quant_dtype", {}), "quant_dtype", types, index, check_dtype)
    schemes = _per_type(entry.get("quant_scheme", {}), "quant_scheme", types, index,
                        check_scheme)
    tensors: dict[str, dict[str, Any]] = {}
    for t in types:
        tensors[t] = {"bits": bits.get(t), "signed": None if t not in dtypes else DTYPES[
            dtypes[t]], "scheme": schemes.get(t)}
        if t != "weight" and schemes.get(t) in ("per_channel_affine", "per_channel_symmetric"):
            raise _fail(index, f"quant_scheme {schemes[t]!r} for {t!r}: tfquant quantizes "
                        "activations per tensor; use a per_tensor_* scheme")
    if "input" in tensors and "output" in tensors and tensors["input"] != tensors["output"]:
        raise _fail(index, "'input' and 'output' ask for different settings "
                    f"({tensors['input']} vs {tensors['output']}); tfquant quantizes a tensor "
                    "once, at its producer, with the producer's activation spec, so one entry "
                    "must use the same bits / dtype / scheme for both")
    return ConfigEntry(index, op_types, op_names, False, tensors, start)


# -------------------------------------------------------------------- mapping
def _tensor_spec(base: TensorSpec | None, setting: Mapping[str, Any], learner: str | None,
                 start: int | None, for_weights: bool) -> TensorSpec:
    spec = base if base is not None else (
        TensorSpec(bits=8, symmetric=True, narrow_range=True, learner="minmax") if for_weights
        else TensorSpec(bits=8, learner="ema"))
    changes: dict[str, Any] = {}
    if learner is not None:
        changes["learner"] = learner
    bits = setting.get("bits")
    if bits == 1:
        changes.update(learner="binary", bits=2)
    elif bits is not None:
        changes["bits"] = bits
    if setting.get("signed") is not None:
        changes["signed"] = setting["signed"]
    if setting.get("scheme") is not None:
        symmetric, per_axis = SCHEMES[setting["scheme"]]
        changes.update(symmetric=symmetric, per_axis=per_axis, narrow_range=symmetric)
    if start is not None:
        changes["quant_start_step"] = start
    spec = spec.replace(**changes)
    if spec.learner in ("lsq", "lsq_plus"):
        spec = spec.replace(learner="lsq" if spec.symmetric else "lsq_plus")
    if spec.learner in _LEARNERS_WITH_FIXED_GRID:
        # symmetric grids by construction; the TFLite exporter checks the flag
        spec = spec.replace(symmetric=True, narrow_range=True)
    return spec


def _apply_entry(entry: ConfigEntry, base: LayerSpec, algorithm: str | None) -> LayerSpec:
    w_learner, a_learner = ALGORITHMS[algorithm] if algorithm is not None else (None, None)
    weights = activations = None
    if "weight" in entry.tensors:
        weights = _tensor_spec(base.weights, entry.tensors["weight"], w_learner,
                               entry.quant_start_step, True)
    act_types = [t for t in ("output", "input") if t in entry.tensors]
    if act_types:
        activations = _tensor_spec(base.activations, entry.tensors[act_types[0]], a_learner,
                                   entry.quant_start_step, False)
        if activations.per_axis:
            activations = activations.replace(per_axis=False)
    return dataclasses.replace(base, weights=weights, activations=activations, skip=False)


class ConfigListQuantConfig(QuantConfig):
    """A :class:`~tfquant.specs.QuantConfig` that resolves layers with NNI's config-list rules.

    Resolution of a layer: the ``base`` config's spec, then the last matching entry (or
    ``skip=True`` when none matches or it excludes), then this object's own ``by_type`` /
    ``by_regex`` / ``by_name`` overrides (from :meth:`with_overrides`), in that precedence.

    Args:
        entries: validated :class:`ConfigEntry` objects.
        base: the config supplying everything the entries leave out.
        algorithm: key of :data:`ALGORITHMS`, or None.
        config_list: the original list (kept for :meth:`to_dict`).
        by_type: extra overrides applied after the entries.
        by_regex: extra overrides applied after the entries.
        by_name: extra overrides applied after the entries.
    """

    def __init__(self, entries: Sequence[ConfigEntry], base: QuantConfig,
                 algorithm: str | None = None, config_list: Sequence[Mapping] = (),
                 by_type=None, by_regex=None, by_name=None):
        # The list states every layer's bits: a base preset's first_last_bits does not apply.
        super().__init__(base.global_spec, by_type, by_regex, by_name, None)
        self.entries = tuple(entries)
        self.base = base
        self.algorithm = algorithm
        self.config_list = [dict(e) for e in config_list]

    def matching_entry(self, layer_name: str, layer_type: str | Iterable[str]
                       ) -> ConfigEntry | None:
        """The entry that decides ``layer_name`` (NNI: the last one that matches), or None."""
        types = [layer_type] if isinstance(layer_type, str) else list(layer_type)
        found = None
        for entry in self.entries:
            if entry.matches(layer_name, types):
                found = entry
        return found

    def resolve(self, layer_name: str, layer_type: str | Iterable[str],
                after_type: Mapping[str, Any] | None = None) -> LayerSpec:
        types = [layer_type] if isinstance(layer_type, str) else list(layer_type)
        spec = self.base.resolve(layer_name, types)
        entry = self.matching_entry(layer_name, types)
        if entry is None and "BatchNormalization" in types:
            # not quantized itself, but still folded into a quantized producer
            spec = dataclasses.replace(spec, weights=None, activations=None, skip=False)
        elif entry is None or entry.exclude:
            spec = dataclasses.replace(spec, skip=True)
        else:
            spec = _apply_entry(entry, spec, self.algorithm)
        return self.apply_overrides(spec, layer_name, types, after_type)

    def with_overrides(self, by_type=None, by_regex=None, by_name=None) -> "ConfigListQuantConfig":
        return ConfigListQuantConfig(self.entries, self.base, self.algorithm, self.config_list,
                                     merge_overrides(self.by_type, by_type or {}),
                                     merge_overrides(self.by_regex, by_regex or {}),
                                     merge_overrides(self.by_name, by_name or {}))

    def to_dict(self) -> dict:
        """Plain dict: the config list, the algorithm, the base config and extra overrides."""
        return {"config_list": self.config_list, "algorithm": self.algorithm,
                "base": self.base.to_dict(), "by_type": self.by_type,
                "by_regex": self.by_regex, "by_name": self.by_name}


def from_config_list(config_list: Sequence[Mapping[str, Any]], *, algorithm: str | None = None,
                     base: QuantConfig | str | Mapping | None = "tflite_int8"
                     ) -> ConfigListQuantConfig:
    """Builds a :class:`~tfquant.specs.QuantConfig` from an NNI-style config list.

    Args:
        config_list: list of entries with keys ``quant_types``, ``quant_bits``, ``op_types``,
            ``op_names``, ``quant_dtype``, ``quant_scheme``, ``quant_start_step``, ``exclude``
            (see the module documentation).
        algorithm: which learners to use (:data:`ALGORITHMS`: ``"qat"``, ``"naive"``,
            ``"lsq"``, ``"dorefa"``, ``"bnn"``, ``"twn"``), or None for the base's.
        base: the config supplying what the entries leave unsaid (a QuantConfig, preset name
            or config dict).

    Returns:
        A :class:`ConfigListQuantConfig` (a ``QuantConfig``), usable with
        :func:`tfquant.quantize_model` / :func:`tfquant.quantize_apply`.

    Raises:
        ValueError: an entry has an unknown key (named, with the entry index) or an invalid
            value, or ``algorithm`` is unknown.

    Example:
        >>> config_list = [{
        ...     "quant_types": ["weight", "input"],
        ...     "quant_bits": {"weight": 8, "input": 8},
        ...     "op_names": ["conv1", "conv2"],
        ... }, {
        ...     "quant_types": ["output"],
        ...     "quant_bits": {"output": 8},
        ...     "op_names": ["relu1", "relu2"],
        ... }]
        >>> qat = tfquant.quantize_model(model, from_config_list(config_list))
    """
    if algorithm is not None and algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm={algorithm!r} is unknown; expected one of "
                         f"{sorted(ALGORITHMS)} or None")
    if isinstance(config_list, Mapping) or not isinstance(config_list, (list, tuple)):
        raise ValueError("config_list must be a list of dicts, got "
                         f"{type(config_list).__name__}")
    entries = [_parse_entry(i, entry) for i, entry in enumerate(config_list)]
    return ConfigListQuantConfig(entries, QuantConfig.coerce(base), algorithm, config_list)


__all__ = ["from_config_list", "ConfigListQuantConfig", "ConfigEntry", "ALGORITHMS",
           "SCHEMES", "TORCH_OP_TYPES"]
