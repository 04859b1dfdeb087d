"""tfmot compatibility: the names of ``tensorflow_model_optimization.quantization.keras``.

Code written against tfmot's Keras quantization API runs on Keras 3 with only the import
changed::

    import tfquant.compat as tfmot          # was: import tensorflow_model_optimization as tfmot

    quantize_model = tfmot.quantization.keras.quantize_model
    q_aware_model = quantize_model(model)
    with tfmot.quantization.keras.quantize_scope():
        loaded = tf.keras.models.load_model("model.keras")

Provided: ``quantize_model``, ``quantize_annotate_model``, ``quantize_annotate_layer``,
``quantize_apply``, ``quantize_scope`` and ``QuantizeWrapper`` / ``QuantizeAnnotate``. The
tfmot-specific machinery (``QuantizeConfig`` subclasses, ``quantizers.*Quantizer``,
``QuantizeScheme``, ``default_8bit`` / ``default_n_bit`` schemes, ``QuantizeRegistry``) has no
counterpart: accessing it raises an ``AttributeError`` that says what to use instead
(:class:`~tfquant.specs.QuantConfig`, :class:`~tfquant.specs.LayerSpec`,
:func:`tfquant.register_layer`). See ``docs/migrating_from_tfmot.md``.
"""

from __future__ import annotations

import contextlib
import types
from typing import Any, Iterator, Mapping

import keras

from tfquant import annotate as _annotate
from tfquant.layers import QuantizeAnnotate, QuantizeWrapper
from tfquant.specs import LayerSpec, QuantConfig

_CONFIG_TYPES = (QuantConfig, str, Mapping)


@contextlib.contextmanager
def quantize_scope(*args: Mapping[str, Any]) -> Iterator[None]:
    """tfmot's ``quantize_scope``; tfquant needs no custom-object scope.

    Every tfquant layer and quantizer is registered with
    ``keras.saving.register_keras_serializable(package="tfquant")``, so ``.keras`` files load
    with a plain ``keras.saving.load_model``. With no arguments this context does nothing;
    dictionaries of the user's own custom objects (tfmot's ``*args``) are passed on to
    ``keras.saving.custom_object_scope``, as tfmot does.

    Args:
        *args: dictionaries ``{name: class}`` of custom objects.

    Example:
        >>> with quantize_scope():
        ...     loaded = keras.saving.load_model("qat.keras")
    """
    objects: dict[str, Any] = {}
    for arg in args:
        if not isinstance(arg, Mapping):
            raise TypeError(f"quantize_scope takes dictionaries of custom objects, got "
                            f"{type(arg).__name__}: {arg!r}")
        objects.update(arg)
    if not objects:
        yield
        return
    with keras.saving.custom_object_scope(objects):
        yield


def _config_from_scheme(scheme: Any, where: str) -> QuantConfig | str | Mapping | None:
    if scheme is None or isinstance(scheme, _CONFIG_TYPES):
        return scheme
    raise TypeError(
        f"{where}: tfmot quantization schemes ({type(scheme).__name__}) have no tfquant "
        "counterpart; pass a tfquant.QuantConfig or a preset name instead (e.g. "
        "'tflite_int8', the equivalent of Default8BitQuantizeScheme, or 'lsq_w4a4' in place "
        "of default_n_bit). See docs/migrating_from_tfmot.md.")


def _check_prefix(prefix: str | None) -> None:
    if prefix not in (None, "quant_"):
        raise ValueError(f"quantized_layer_name_prefix={prefix!r}: tfquant always names "
                         "wrappers 'quant_<layer name>' (tfmot's default prefix).")


def quantize_model(to_quantize: keras.Model, quantized_layer_name_prefix: str = "quant_",
                   config: QuantConfig | str | Mapping | None = None) -> keras.Model:
    """tfmot's ``quantize_model(to_quantize)``: annotate every supported layer and apply.

    Args:
        to_quantize: a Sequential or Functional Keras 3 model (left unchanged).
        quantized_layer_name_prefix: only tfmot's default ``"quant_"`` is supported.
        config: tfquant extension: a QuantConfig or preset name (default ``"tflite_int8"``).

    Example:
        >>> q_aware_model = quantize_model(model)
    """
    if to_quantize is None:
        raise ValueError("`to_quantize` cannot be None")
    _check_prefix(quantized_layer_name_prefix)
    return _annotate.quantize_model(to_quantize, config)


def quantize_annotate_model(to_annotate: keras.Model) -> keras.Model:
    """tfmot's ``quantize_annotate_model``: a copy with every supported layer annotated.

    Layers that were annotated with a spec beforehand (``quantize_annotate_layer(layer,
    spec)``) keep it, as tfmot keeps their ``QuantizeConfig``.

    Example:
        >>> annotated = quantize_annotate_model(model)
    """
    if to_annotate is None:
        raise ValueError("`to_annotate` cannot be None")
    # Layers annotated beforehand keep their own spec (tfmot keeps their QuantizeConfig).
    specs = {}
    stack = list(getattr(to_annotate, "layers", []))
    while stack:
        layer = stack.pop()
        if isinstance(layer, keras.Model):
            stack.extend(layer.layers)
        elif isinstance(layer, QuantizeAnnotate) and layer.spec is not None:
            specs[layer.layer.name] = layer.spec
    annotated = _annotate.quantize_annotate_model(to_annotate)
    for layer in annotated.layers:
        if isinstance(layer, QuantizeAnnotate) and layer.spec is None \
                and layer.layer.name in specs:
            layer.spec = specs[layer.layer.name]
    return annotated


def quantize_annotate_layer(to_annotate: keras.layers.Layer,
                            quantize_config: LayerSpec | Mapping | None = None
                            ) -> QuantizeAnnotate:
    """tfmot's ``quantize_annotate_layer(to_annotate, quantize_config=None)``.

    ``quantize_config`` may be a tfquant :class:`~tfquant.specs.LayerSpec` (or its dict form);
    tfmot ``QuantizeConfig`` objects are rejected with a pointer to the replacement. A Keras
    2-style ``input_shape=`` given to the annotated layer is honoured by ``Sequential``.

    Example:
        >>> model = keras.Sequential([
        ...     quantize_annotate_layer(keras.layers.Dense(20, input_shape=(20,))),
        ...     keras.layers.Flatten()])
    """
    if to_annotate is None:
        raise ValueError("`to_annotate` cannot be None")
    if quantize_config is not None and not isinstance(quantize_config, (LayerSpec, Mapping)):
        raise TypeError(
            f"quantize_config={type(quantize_config).__name__}: tfmot QuantizeConfig classes "
            "have no tfquant counterpart. Pass a tfquant.LayerSpec (e.g. LayerSpec(weights="
            "TensorSpec(bits=4, symmetric=True, narrow_range=True, learner='minmax'))), or "
            "configure layers by name/type with tfquant.QuantConfig; custom layer types are "
            "declared with tfquant.register_layer. See docs/migrating_from_tfmot.md.")
    wrapper = _annotate.quantize_annotate_layer(to_annotate, quantize_config)
    shape = getattr(to_annotate, "_input_shape_arg", None)
    if shape is not None:  # Keras 3 Sequential reads this from its first layer
        wrapper._input_shape_arg = shape
    return wrapper


def quantize_apply(model: keras.Model, scheme: Any = None,
                   quantized_layer_name_prefix: str = "quant_",
                   config: QuantConfig | str | Mapping | None = None) -> keras.Model:
    """tfmot's ``quantize_apply(model, scheme=...)``: quantize the annotated layers.

    Args:
        model: a model with annotated layers.
        scheme: None (tfmot's default 8-bit scheme is tfquant's ``"tflite_int8"``), or a
            tfquant QuantConfig / preset name; tfmot scheme objects raise ``TypeError``.
        quantized_layer_name_prefix: only ``"quant_"``.
        config: tfquant extension, same as ``scheme``.

    Example:
        >>> q_aware_model = quantize_apply(annotated_model)
    """
    _check_prefix(quantized_layer_name_prefix)
    if scheme is not None and config is not None:
        raise ValueError("pass either scheme or config, not both")
    config = config if config is not None else _config_from_scheme(scheme, "quantize_apply")
    return _annotate.quantize_apply(model, config)


_UNSUPPORTED = {
    "QuantizeConfig": "tfquant has no QuantizeConfig classes: describe how a layer is quantized "
                      "with tfquant.LayerSpec / TensorSpec (per layer: quantize_annotate_layer("
                      "layer, spec); per name or type: tfquant.QuantConfig(by_name=..., "
                      "by_type=...)), and new layer types with tfquant.register_layer",
    "QuantizeWrapperV2": "use tfquant.QuantizeWrapper (created for you by quantize_apply)",
    "QuantizeScheme": "pass a tfquant.QuantConfig or a preset name to quantize_apply",
    "QuantizeRegistry": "declare layer types with tfquant.register_layer",
    "QuantizeLayoutTransform": "tfquant's annotator folds BatchNormalization and fuses "
                               "ReLU/ReLU6 itself",
    "quantizers": "range learners are chosen with TensorSpec(learner=...): 'minmax' "
                  "(LastValueQuantizer), 'ema' (MovingAverageQuantizer), 'fixed' "
                  "(AllValuesQuantizer with fixed ranges), 'lsq', 'pact', 'dorefa', 'binary', "
                  "'ternary'",
    "default_8bit": "the default: quantize_model(model) or config='tflite_int8'",
    "experimental": "default_n_bit corresponds to QuantConfig presets such as 'lsq_w4a4' or "
                    "a QuantConfig with 4-bit TensorSpecs (these also export to TFLite)",
    "graph_transformations": "not needed: BN folding and activation fusion are automatic",
    "collab_opts": "not provided by tfquant",
    "fix_input_output_range": "not provided; set the input quantizer's range with "
                              "TensorSpec(learner='fixed', init_min=..., init_max=...)",
    "remove_input_range": "not provided",
}


class _Namespace(types.SimpleNamespace):
    """A namespace whose missing tfmot names raise an explanatory ``AttributeError``."""

    def __getattr__(self, name: str) -> Any:
        if name in _UNSUPPORTED:
            raise AttributeError(f"tfmot.quantization.keras.{name} is not supported by tfquant: "
                                 f"{_UNSUPPORTED[name]}. See docs/migrating_from_tfmot.md.")
        raise AttributeError(f"tfquant's tfmot compatibility layer has no {name!r}")


#: ``tfmot.quantization.keras`` equivalents: ``quantization.keras.quantize_model`` etc.
quantization = types.SimpleNamespace(keras=_Namespace(
    quantize_model=quantize_model,
    quantize_annotate_model=quantize_annotate_model,
    quantize_annotate_layer=quantize_annotate_layer,
    quantize_apply=quantize_apply,
    quantize_scope=quantize_scope,
    QuantizeWrapper=QuantizeWrapper,
    QuantizeAnnotate=QuantizeAnnotate,
))

__all__ = ["quantization", "quantize_scope", "quantize_model", "quantize_annotate_model",
           "quantize_annotate_layer", "quantize_apply"]
