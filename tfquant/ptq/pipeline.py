"""The post-training quantization pipeline and dynamic-range (weight-only) quantization.

``ptq(model, data)``: fold BN -> CLE -> ``quantize_model`` -> calibrate -> bias correction ->
AdaRound (delegated to :mod:`tfquant.ptq.adaround`), each step optional and recorded in the
returned model's ``ptq_report``. The model passed in is never modified.

Example:
    >>> qmodel = tfquant.ptq(model, x_calib, methods=("cle", "bias_correction"))
    >>> print(qmodel.ptq_report)
    >>> tfquant.export.tflite(qmodel, "m.tflite", input_type="int8")
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable

import keras

from tfquant.annotate import _check_model, quantize_model
from tfquant.ptq.bias_correction import correct_bias
from tfquant.ptq.calibrate import calibrate, calibrate_weights
from tfquant.ptq.cle import equalize, replace_relu6
from tfquant.ptq.data import is_one_shot
from tfquant.ptq.fold import fold_batchnorm
from tfquant.specs import QuantConfig

METHODS = ("cle", "bias_correction", "adaround")
DYNAMIC_RANGE = "dynamic_range"


@dataclasses.dataclass
class PTQStep:
    """One pipeline step: whether it ran, a one-line account, and its own report if any."""

    name: str
    ran: bool
    detail: str = ""
    result: Any = None


@dataclasses.dataclass
class PTQReport:
    """What :func:`ptq` did, step by step (``qmodel.ptq_report``).

    Example:
        >>> qmodel.ptq_report.ran
        ['fold_batchnorm', 'cle', 'quantize_model', 'calibrate', 'bias_correction']
    """

    config: str
    steps: list[PTQStep] = dataclasses.field(default_factory=list)

    @property
    def ran(self) -> list[str]:
        """Names of the steps that ran, in order."""
        return [s.name for s in self.steps if s.ran]

    def __getitem__(self, name: str) -> PTQStep:
        for step in self.steps:
            if step.name == name:
                return step
        raise KeyError(f"no PTQ step named {name!r}; steps: {[s.name for s in self.steps]}")

    def add(self, name: str, ran: bool, detail: str = "", result: Any = None) -> None:
        """Records a step."""
        self.steps.append(PTQStep(name, ran, detail, result))

    def __str__(self) -> str:
        lines = [f"PTQ ({self.config})"]
        lines += [f"  {'ran ' if s.ran else 'skip'}  {s.name}: {s.detail}" for s in self.steps]
        return "\n".join(lines)


def _weights_only(config: QuantConfig | str | dict | None) -> QuantConfig:
    """``config`` with every activation quantizer switched off."""
    base = QuantConfig.coerce(None if config == DYNAMIC_RANGE else config)

    def off(table):
        return {k: {**v, "activations": None} for k, v in table.items()}

    return QuantConfig(base.global_spec.apply({"activations": None}), off(base.by_type),
                       off(base.by_regex), off(base.by_name))


def dynamic_range(model: keras.Model, config: QuantConfig | str | dict | None = None,
                  weight_observer: str = "minmax") -> keras.Model:
    """A weight-only quantized copy of ``model`` (dynamic-range quantization: int8 weights,
    float activations, quantized at run time by TFLite's hybrid kernels).

    Args:
        model: the float model; it is not modified.
        config: where the weight spec comes from (default ``"tflite_int8"``: int8 symmetric,
            per-channel except Dense); activation specs are ignored.
        weight_observer: observer for the weight ranges.

    Returns:
        The quantized model, with ``ptq_report``; export it with
        ``tfquant.export.tflite(q, mode="dynamic_range")``.

    Example:
        >>> q = dynamic_range(model)
        >>> data = tfquant.export.tflite(q, "m.tflite", mode="dynamic_range")
    """
    qmodel = quantize_model(model, _weights_only(config))
    ranges = calibrate_weights(qmodel, weight_observer)
    report = PTQReport(DYNAMIC_RANGE)
    report.add("quantize_model", True, f"weights only: {len(ranges)} weight quantizers",
               qmodel.quantization_report)
    qmodel.ptq_report = report
    return qmodel


@dataclasses.dataclass
class _Options:
    relu6_to_relu: bool = False
    bias_absorption: bool = True
    cle_iterations: int = 100
    steps: int | None = None
    batch_size: int = 32
    verbose: int = 1
    weight_observer: str | None = None
    observer_options: dict = dataclasses.field(default_factory=dict)
    bias_correction: str = "auto"

    @classmethod
    def pop(cls, options: dict) -> "_Options":
        names = [f.name for f in dataclasses.fields(cls)]
        return cls(**{k: options.pop(k) for k in names if k in options})


def _check_methods(methods: Iterable[str] | str) -> tuple[str, ...]:
    methods = (methods,) if isinstance(methods, str) else tuple(methods or ())
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown PTQ method(s) {unknown}; available: {list(METHODS)}")
    return methods


def ptq(model: keras.Model, data: Any = None, config: QuantConfig | str | dict = "tflite_int8",
        methods: Iterable[str] = METHODS, observer: str = "minmax", **options: Any
        ) -> keras.Model:
    """Post-training quantization: fold BN, CLE, quantize, calibrate, bias correction, AdaRound.

    Args:
        model: the float Functional or Sequential model; it is never modified.
        data: calibration data (dataset, array, iterable of batches; re-iterable when bias
            correction or AdaRound read it again). None only with ``config="dynamic_range"``.
        config: a :class:`~tfquant.specs.QuantConfig`, preset name or dict; ``"dynamic_range"``
            gives a weight-only model (see :func:`dynamic_range`).
        methods: any of ``"cle"``, ``"bias_correction"``, ``"adaround"``.
        observer: activation observer for :func:`~tfquant.ptq.calibrate`.
        **options: ``relu6_to_relu`` (False; True replaces ReLU6 by ReLU before CLE, as the
            paper does for MobileNetV2, which changes the float function wherever an activation
            exceeds 6, so it is opt-in), ``bias_absorption`` (True), ``cle_iterations``,
            ``steps``, ``batch_size``, ``verbose``, ``weight_observer``, ``observer_options``
            (dict), ``bias_correction`` (``"auto"``, ``"empirical"``, ``"analytic"``); any
            other option is passed to ``tfquant.ptq.adaround.adaround`` (an error when AdaRound
            does not run); ``verbose`` is passed on to AdaRound too.

    Returns:
        A quantized Keras model with ``ptq_report`` (:class:`PTQReport`) and
        ``quantization_report``.

    Raises:
        ValueError: unknown methods or options, missing or one-shot data where it is needed,
            or any calibration input problem (see :func:`~tfquant.ptq.calibrate`).

    Example:
        >>> q = ptq(model, x_calib, methods=("cle", "bias_correction"), verbose=0)
        >>> q.ptq_report.ran
        ['fold_batchnorm', 'cle', 'quantize_model', 'calibrate', 'bias_correction']
    """
    _check_model(model)
    methods = _check_methods(methods)
    opts = _Options.pop(dict(options))
    extra = {k: v for k, v in options.items() if k not in dataclasses.asdict(opts)}
    dynamic = isinstance(config, str) and config == DYNAMIC_RANGE
    if extra and (dynamic or "adaround" not in methods):
        raise ValueError(f"unknown ptq option(s) {sorted(extra)} (other options are passed to "
                         "AdaRound, which does not run here).")
    if data is None and not dynamic:
        raise ValueError("ptq needs calibration data for the activation ranges; pass data, or "
                         "config='dynamic_range' for a weight-only model.")
    rereads = "adaround" in methods or ("bias_correction" in methods
                                        and opts.bias_correction != "analytic")
    if data is not None and not dynamic and is_one_shot(data) and rereads:
        raise ValueError("empirical bias correction and AdaRound read the calibration data "
                         "again; pass an array, a tf.data.Dataset or a list of batches, not a "
                         "one-shot generator (analytic bias correction does not).")

    report = PTQReport(DYNAMIC_RANGE if dynamic else
                       (config if isinstance(config, str) else type(config).__name__))
    float_model, stats = fold_batchnorm(model, with_statistics=True)
    report.add("fold_batchnorm", True, f"BatchNormalization folded into {len(stats)} layers")
    if "cle" in methods:
        replaced: list[str] = []
        if opts.relu6_to_relu:
            float_model, replaced = replace_relu6(float_model)
        cle = equalize(float_model, stats, opts.bias_absorption, opts.cle_iterations)
        cle.folded, cle.replaced_relu6 = sorted(stats), replaced
        stats = cle.statistics
        report.add("cle", True, f"{len(cle.pairs)} pairs equalized in {cle.iterations} sweeps; "
                   f"ReLU6 replaced in {len(replaced)} layers", cle)
    else:
        report.add("cle", False, "not requested")

    if dynamic:
        qmodel = dynamic_range(float_model, weight_observer=opts.weight_observer or "minmax")
        report.steps += qmodel.ptq_report.steps
        for name in ("bias_correction", "adaround"):
            report.add(name, False, "dynamic range: weights only" if name in methods
                       else "not requested")
        qmodel.ptq_report = report
        return qmodel

    qmodel = quantize_model(float_model, config)
    report.add("quantize_model", True, f"{len(qmodel.quantization_report.quantized_layers)} "
               "layers quantized", qmodel.quantization_report)
    cal = calibrate(qmodel, data, observer, steps=opts.steps, batch_size=opts.batch_size,
                    weight_observer=opts.weight_observer, verbose=opts.verbose,
                    **opts.observer_options)
    report.add("calibrate", True, f"{len(cal.ranges)} ranges from {cal.samples} samples "
               f"({observer})", cal)
    if "bias_correction" in methods:
        bc_options = {} if opts.bias_correction == "analytic" else \
            {"steps": opts.steps, "batch_size": opts.batch_size}
        bc = correct_bias(qmodel, data, opts.bias_correction, stats, **bc_options)
        report.add("bias_correction", True, f"{bc.method}: {len(bc.corrected)} layers corrected",
                   bc)
    else:
        report.add("bias_correction", False, "not requested")
    if "adaround" in methods:
        from tfquant.ptq.adaround import adaround as run_adaround

        result = run_adaround(qmodel, data, **{"verbose": opts.verbose, **extra})
        if isinstance(result, keras.Model):
            qmodel = result
        report.add("adaround", True, "tfquant.ptq.adaround.adaround", result)
    else:
        report.add("adaround", False, "not requested")
    qmodel.ptq_report = report
    return qmodel
