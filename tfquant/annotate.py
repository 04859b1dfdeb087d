"""Annotate a float Keras model and turn it into a quantized one (tfmot-compatible names).

``quantize_model(model)`` = ``quantize_apply(quantize_annotate_model(model))``. The steps:

1. copy the user's model into a flat Functional graph (nested models inlined, annotations
   unwrapped, weights copied): the model passed in is never modified;
2. plan each layer from the registry and the config: quantize, fold (BatchNormalization into
   the preceding weighted layer), fuse (ReLU/ReLU6 after a layer TFLite fuses it into), pass
   through (shares its input's grid), or leave in float (reported with the reason);
3. ``keras.models.clone_model`` with a ``clone_function`` that wraps layers and a
   ``call_function`` that inserts an activation quantizer wherever a quantized layer would read
   a float tensor (model inputs, outputs of float layers).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable

import keras
from keras import tree
from keras.src.models.functional import Functional
from keras.src.ops import numpy as knp
from keras.src.ops.operation import Operation

from tfquant.layers.affine import batchnorm_carrier, split_affine
from tfquant.layers.annotation import QuantizeAnnotate
from tfquant.layers.registry import (FIXED_OUTPUT_RANGES, FUSABLE_ACTIVATIONS,
                                     activation_name, normalizes_last_axis,
                                     registered_type_names, rule_for)
from tfquant.layers.wrapper import QuantizeWrapper
from tfquant.quantizers import Quantizer, make_quantizer
from tfquant.report import LayerEntry, QuantizationReport
from tfquant.specs import LayerSpec, QuantConfig


def quantize_annotate_layer(layer: keras.layers.Layer,
                            spec: LayerSpec | dict | None = None) -> QuantizeAnnotate:
    """Marks one layer for quantization by :func:`quantize_apply`.

    Args:
        layer: the layer (typically while building a model).
        spec: optional per-layer :class:`~tfquant.specs.LayerSpec` overriding the config.

    Example:
        >>> model = keras.Sequential([keras.Input((4,)),
        ...                           quantize_annotate_layer(keras.layers.Dense(3))])
        >>> qmodel = quantize_apply(model)
    """
    if not isinstance(layer, keras.layers.Layer):
        raise TypeError(f"quantize_annotate_layer needs a Keras layer, got {type(layer).__name__}")
    return QuantizeAnnotate(layer, spec)


def quantize_annotate_model(model: keras.Model) -> keras.Model:
    """A copy of ``model`` in which every supported layer is wrapped in ``QuantizeAnnotate``.

    Example:
        >>> annotated = quantize_annotate_model(model)
        >>> qmodel = quantize_apply(annotated, config="tflite_int8")
    """
    flat, annotations = _flat_copy(model)

    def clone(layer):
        rule = rule_for(layer) if isinstance(layer, keras.layers.Layer) else None
        if rule is None or rule.kind == "passthrough":
            return layer
        return QuantizeAnnotate(layer, annotations.get(id(layer)))  # keep a layer's own spec

    return keras.models.clone_model(flat, clone_function=clone)


def quantize_apply(model: keras.Model, config: QuantConfig | str | dict | None = None
                   ) -> keras.Model:
    """Quantizes the annotated layers of ``model`` (others stay float and are reported).

    Args:
        model: a Functional or Sequential model containing ``QuantizeAnnotate`` layers.
        config: a :class:`~tfquant.specs.QuantConfig`, a preset name or a config dict.

    Returns:
        A new Keras model; ``model.quantization_report`` lists what happened to each layer.

    Example:
        >>> qmodel = quantize_apply(quantize_annotate_model(model))
    """
    config = QuantConfig.coerce(config)
    _check_model(model)
    flat, annotations = _flat_copy(model)
    if not annotations:
        raise ValueError(f"model {model.name!r} has no QuantizeAnnotate layers: annotate layers "
                         "with quantize_annotate_layer / quantize_annotate_model, or call "
                         "quantize_model to quantize every supported layer.")
    return _apply(flat, config, annotations)


def quantize_model(model: keras.Model, config: QuantConfig | str | dict | None = None
                   ) -> keras.Model:
    """Quantizes every supported layer of a Functional or Sequential Keras model.

    Args:
        model: the float model; it is not modified.
        config: a :class:`~tfquant.specs.QuantConfig`, a preset name (``"tflite_int8"``,
            ``"lsq_w4a4"``, ...) or a config dict.

    Returns:
        A new Keras model ready for ``compile``/``fit`` (QAT) or calibration, with its
        ``quantization_report``.

    Example:
        >>> qat = quantize_model(model)
        >>> qat.compile("adam", "sparse_categorical_crossentropy")
    """
    config = QuantConfig.coerce(config)
    _check_model(model)
    flat, annotations = _flat_copy(model)
    return _apply(flat, config, annotations, annotate_all=True)


# ----------------------------------------------------------------------- copying
def _check_model(model: Any) -> None:
    if not isinstance(model, keras.Model):
        raise TypeError(f"expected a keras.Model, got {type(model).__name__}")
    if not isinstance(model, (Functional, keras.Sequential)):
        raise ValueError(
            f"model {model.name!r} is a subclassed model ({type(model).__name__}): tfquant "
            "needs the layer graph, so build it with the Functional API or Sequential "
            "(or quantize its Functional sub-models).")
    if isinstance(model, keras.Sequential) and not _sequential_inputs(model):
        raise ValueError(f"Sequential model {model.name!r} is not built: give it an "
                         "keras.Input(shape) first layer or call build(input_shape).")
    for layer in _walk_layers(model):
        if isinstance(layer, (QuantizeWrapper, Quantizer)):
            raise ValueError(f"model {model.name!r} is already quantized (layer "
                             f"{layer.name!r}); pass the float model.")


def _sequential_inputs(model: keras.Sequential):
    try:
        return model.inputs
    except AttributeError:  # Keras 3 raises when a Sequential has no defined inputs yet
        return None


def _copy_layer(layer: keras.layers.Layer) -> keras.layers.Layer:
    """A new, unbuilt instance of ``layer`` with the same configuration (no weights yet),
    computing in float32: the quantized model simulates int8 arithmetic in float32 under any
    mixed-precision policy (TF's FakeQuant takes float32 only, and a bfloat16 layer between
    quantizers would put CAST ops in the TFLite model)."""
    if isinstance(layer, keras.layers.Lambda):
        # Share the Python function: rebuilding it from its config deserialises bytecode, which
        # safe mode refuses (and which would lose the function's globals).
        return keras.layers.Lambda(layer.function, output_shape=layer._output_shape,
                                   mask=layer.mask, arguments=layer.arguments, name=layer.name,
                                   dtype="float32")
    config = layer.get_config()
    if "dtype" in config:
        config["dtype"] = "float32"
    return layer.__class__.from_config(config)


def _walk_layers(model: keras.Model) -> Iterable[keras.layers.Layer]:
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _walk_layers(layer)


def _flat_copy(model: keras.Model):
    """Copies ``model`` into one flat Functional graph of new layers with copied weights.

    Returns the copy and ``{id(copied layer): LayerSpec | None}`` for annotated layers.
    """
    _check_model(model)
    inputs = [keras.Input(batch_shape=t.shape, dtype=t.dtype,
                          name=t._keras_history.operation.name) for t in model.inputs]
    copies: dict[int, Any] = {}
    pairs: list[tuple[keras.layers.Layer, keras.layers.Layer]] = []
    annotations: dict[int, LayerSpec | None] = {}

    def copy(op):
        if id(op) in copies:
            return copies[id(op)]
        if isinstance(op, QuantizeAnnotate):
            new = copy(op.layer)
            annotations[id(new)] = op.spec
        elif isinstance(op, keras.layers.Layer):
            new = _copy_layer(op)
            pairs.append((op, new))
        else:  # a stateless keras.ops operation
            new = op
        copies[id(op)] = new
        return new

    def inline(sub: keras.Model, sub_inputs):
        if isinstance(sub, keras.Sequential):
            x = sub_inputs[0] if len(sub_inputs) == 1 else sub_inputs
            for layer in sub.layers:
                x = call(layer, x)
            return x
        return sub._run_through_graph(sub_inputs, operation_fn=lambda op: op, call_fn=call)

    def call(op, *args, **kwargs):
        if isinstance(op, keras.Model):
            return inline(op, tree.flatten(args))
        return copy(op)(*args, **kwargs)

    outputs = inline(model, inputs)
    # Keep the input structure of the user's model: a bare tensor for single-input models.
    # (Keras 3 Sequential models have no ``input`` node: they always take one tensor.)
    multi_input = not isinstance(model, keras.Sequential) and isinstance(
        model.input, (list, tuple, dict))
    structure = inputs if multi_input else inputs[0]
    flat = keras.Model(structure, outputs, name=model.name)
    for old, new in pairs:
        new.set_weights(old.get_weights())
    return flat, annotations


# ---------------------------------------------------------------------- planning
@dataclasses.dataclass
class _Decision:
    action: str  # quantize | fold | passthrough | float
    spec: LayerSpec | None = None
    reason: str = ""
    quantize_output: bool = True
    fused: bool = False  # activation whose input is not quantized (fused into its producer)
    batchnorm: keras.layers.Layer | None = None
    folded_into: str | None = None
    carrier: bool = False  # standalone BatchNormalization run as a folded 1x1 depthwise conv
    fused_activation: Any = None  # the activation layer fused into this weighted layer
    rounded_by_consumer: bool = False  # no output quantizer: its Concatenate's rounds it


def _consumers(model: keras.Model) -> dict[int, list[Any]]:
    """``id(layer) -> [consumer ops]`` of the layer's output within ``model``."""
    result: dict[int, list[Any]] = {}
    for depth_nodes in model._nodes_by_depth.values():
        for node in depth_nodes:
            if node.operation is None or node.is_input:
                continue
            for t in node.input_tensors:
                producer = t._keras_history.operation
                result.setdefault(id(producer), []).append(node.operation)
    return result


def _num_nodes(layer) -> int:
    if not isinstance(layer, keras.layers.Layer):
        # keras.ops creates one operation per call; _flat_copy calls it once more (the
        # original model's node stays), so it is never shared within one graph
        return 1
    return len(getattr(layer, "_inbound_nodes", []))


def _type_names(layer) -> list[str]:
    base = keras.layers.Layer if isinstance(layer, keras.layers.Layer) else Operation
    return [c.__name__ for c in type(layer).__mro__ if issubclass(c, base)]


def _layer_spec(layer, config: QuantConfig, annotations, annotate_all: bool):
    if id(layer) in annotations and annotations[id(layer)] is not None:
        return annotations[id(layer)]
    return config.resolve(layer.name, _type_names(layer))


def _plan(flat: keras.Model, config: QuantConfig, annotations, annotate_all: bool):
    plan: dict[int, _Decision] = {}
    ordered = [op for op in flat.operations if not isinstance(op, keras.layers.InputLayer)]
    for op in ordered:
        rule = rule_for(op)
        if rule is None and not isinstance(op, keras.layers.Layer):
            plan[id(op)] = _Decision("float", reason=f"keras.ops operation {type(op).__name__} "
                                     "is not quantized; its result stays float")
            continue
        if rule is None:
            plan[id(op)] = _Decision("float", reason=f"unsupported layer type "
                                     f"{type(op).__name__}: left in float (register it with "
                                     "tfquant.register_layer)")
            continue
        if rule.kind == "passthrough" or (rule.kind == "activation"
                                          and activation_name(op) == "linear"):
            plan[id(op)] = _Decision("passthrough", reason="shares its input's quantization")
            continue
        if not annotate_all and id(op) not in annotations:
            plan[id(op)] = _Decision("float", reason="not annotated")
            continue
        spec = _layer_spec(op, config, annotations, annotate_all)
        if spec.skip:
            plan[id(op)] = _Decision("float", spec=spec, reason="skipped by config")
            continue
        if spec.activations is not None and spec.activations.per_axis:
            raise ValueError(f"layer {op.name!r}: per_axis=True was requested for its "
                             "activations (its output and the inputs it quantizes), which have "
                             "no channel axis; use per_axis=False there.")
        if rule.kind != "weighted" and spec.activations is None:
            plan[id(op)] = _Decision("float", spec=spec, reason="activation quantization off")
            continue
        parts = split_affine(op) if isinstance(op, keras.layers.Layer) else None
        plan[id(op)] = _Decision("quantize", spec=spec, reason="" if parts is None else
                                 f"runs as {len(parts)} quantized Rescaling op(s): "
                                 + ", ".join(p.name for p in parts))

    consumers = _consumers(flat)
    for op in ordered:
        decision = plan[id(op)]
        if decision.action != "quantize":
            continue
        rule = rule_for(op)
        carrier = (batchnorm_carrier(op) is not None and decision.spec.weights is not None
                   and decision.spec.fold_bn)
        if carrier:
            decision.carrier = True
            decision.reason = "standalone BN: runs as a 1x1 depthwise convolution it folds into"
        tail = op
        if rule.kind == "weighted":
            tail = _try_fold(op, decision, consumers, plan)
            fusable_tail = activation_name(getattr(op, "activation", None)) == "linear"
        elif carrier:
            fusable_tail = True
        else:
            fusable_tail = isinstance(op, _FUSING_ELEMENTWISE)
        if fusable_tail:
            _try_fuse(op, tail, decision, consumers, plan)
        if _num_nodes(op) != 1:
            _explain_shared(op, decision)
    _round_once_into_concatenations(flat, ordered, plan, consumers)
    _apply_first_last_bits(ordered, plan, config, annotations)
    return plan


def _round_once_into_concatenations(flat: keras.Model, ordered, plan, consumers) -> None:
    """Drops the output quantizer of a layer whose only consumer is a quantized Concatenate.

    TFLite's CONCATENATION needs its inputs on its output grid. The converter computes such a
    layer directly on that grid (one rounding) and requantizes only inputs that other ops read
    too. Keras then rounds the layer once, by the Concatenate's quantizer, as TFLite does
    (with both quantizers it rounded twice: ~5 % of values one step off).
    """
    outputs = {id(t._keras_history.operation) for t in flat.outputs}
    for op in ordered:
        if not isinstance(op, keras.layers.Concatenate) or plan[id(op)].action != "quantize":
            continue
        for producer in _producers(op):
            decision = plan.get(id(producer))
            if (decision is None or decision.action != "quantize"
                    or not decision.quantize_output or id(producer) in outputs
                    or _num_nodes(producer) != 1 or consumers.get(id(producer)) != [op]
                    or _ends_with_quantizer_of_its_own(producer)):
                continue
            decision.quantize_output = False
            decision.rounded_by_consumer = True
            decision.reason = "; ".join(filter(None, [
                decision.reason, f"output rounded once, by {op.name!r}'s quantizer (TFLite "
                "computes it on the concatenation's grid)"]))


def _producers(op) -> list[Any]:
    node = op._inbound_nodes[0]
    return [t._keras_history.operation for t in node.input_tensors]


def _ends_with_quantizer_of_its_own(layer) -> bool:
    """Layers whose output TFLite keeps on a fixed grid (softmax, logistic...)."""
    if rule_for(layer).kind == "activation":
        return activation_name(layer) in FIXED_OUTPUT_RANGES
    return activation_name(getattr(layer, "activation", None)) in FIXED_OUTPUT_RANGES


# element-wise ops into which TFLite fuses a following ReLU / ReLU6 (layers and keras.ops)
_FUSING_ELEMENTWISE = (keras.layers.Add, keras.layers.Subtract, keras.layers.Multiply,
                       knp.Add, knp.Subtract, knp.Multiply)


def _apply_first_last_bits(ordered, plan, config: QuantConfig, annotations) -> None:
    """``first_last_bits`` for the first and last weighted layers: above the type overrides,
    below the regex and name overrides; a layer annotated with its own spec keeps it. (An
    activation layer fused into them keeps its own spec, as the next layer's input.)"""
    if config.first_last_bits is None:
        return
    weighted = [op for op in ordered if plan[id(op)].action == "quantize"
                and rule_for(op).kind == "weighted"]
    ends = {id(weighted[0]): weighted[0], id(weighted[-1]): weighted[-1]} if weighted else {}
    for op in ends.values():
        if annotations.get(id(op)) is None:
            plan[id(op)].spec = config.resolve(op.name, _type_names(op),
                                               after_type={"bits": config.first_last_bits})


def _explain_shared(op, decision: _Decision) -> None:
    """Says how a layer applied at several call sites was planned."""
    rule = rule_for(op)
    if not (rule.kind in ("weighted", "activation")
            or isinstance(op, keras.layers.BatchNormalization)):
        return
    n = _num_nodes(op)
    if decision.batchnorm is not None or decision.fused_activation is not None or decision.fused:
        note = f"applied {n} times (shared), folded and fused the same way at every call"
    else:
        note = (f"applied {n} times (shared): folding a BatchNormalization or fusing an "
                "activation needs that layer applied to this one's output at every call, "
                "and to nothing else")
    decision.reason = f"{decision.reason}; {note}" if decision.reason else note


def _sole_consumer(op, consumers):
    """The one layer that reads ``op``'s output at every call of ``op``, and reads nothing else.

    For a layer applied once: its single consumer, if that is applied once too. For a shared
    layer (a block called N times): the layer applied to each of its N outputs, N times, so
    that folding or fusing the pair is the same at every call site.
    """
    found = consumers.get(id(op), [])
    n = _num_nodes(op)
    if not found or len(found) != n or any(c is not found[0] for c in found):
        return None
    consumer = found[0]
    if _num_nodes(consumer) != n or len(_producers(consumer)) != 1:
        return None
    return consumer


def _try_fold(op, decision: _Decision, consumers, plan) -> Any:
    bn = _sole_consumer(op, consumers)
    # Only a linear layer can absorb a BN: BN(act(conv)) != act(BN(conv)).
    if not (isinstance(bn, keras.layers.BatchNormalization) and decision.spec.fold_bn
            and rule_for(op).foldable
            and activation_name(getattr(op, "activation", None)) == "linear"
            and plan[id(bn)].action in ("quantize", "float")
            and plan[id(bn)].reason != "skipped by config"):
        return op
    rank = len(op.output.shape)
    channels_last = getattr(op, "data_format", "channels_last") == "channels_last"
    if not normalizes_last_axis(bn, rank) or not channels_last:
        return op
    decision.batchnorm = bn
    plan[id(bn)] = _Decision("fold", folded_into=op.name,
                             reason=f"BatchNormalization folded into {op.name!r}")
    return bn


def _try_fuse(op, tail, decision: _Decision, consumers, plan) -> None:
    if not rule_for(op).fuses_activation:
        return
    act = _sole_consumer(tail, consumers)
    if act is None or rule_for(act) is None or rule_for(act).kind != "activation":
        return
    if activation_name(act) not in FUSABLE_ACTIVATIONS:
        return
    act_decision = plan[id(act)]
    if act_decision.action != "quantize":
        return
    decision.quantize_output = False
    decision.fused_activation = act
    act_decision.fused = True
    act_decision.reason = f"fused into {op.name!r} (one output quantizer after the activation)"


# ------------------------------------------------------------------------ apply
def _check_config_names(flat: keras.Model, config: QuantConfig) -> None:
    """Raises ValueError for ``by_name``/``by_regex`` entries that match no layer and
    ``by_type`` keys that name no layer class."""
    names = [op.name for op in flat.operations]
    # a by_type key may name any Keras or registered layer class (presets list types a model
    # may not have); anything else is a typo
    types = {t for op in flat.operations for t in _type_names(op)}
    types |= {name for name in dir(keras.layers) if isinstance(getattr(keras.layers, name),
                                                                 type)}
    types |= registered_type_names()
    problems = config.unmatched(names, types)
    if problems:
        shown = ", ".join(repr(n) for n in names[:30]) + (", ..." if len(names) > 30 else "")
        raise ValueError(f"QuantConfig entries that match no layer of model {flat.name!r}: "
                         f"{'; '.join(problems)}. Its layers: {shown}.")


def _apply(flat: keras.Model, config: QuantConfig, annotations, annotate_all: bool = False):
    _check_config_names(flat, config)
    plan = _plan(flat, config, annotations, annotate_all)
    by_new_layer: dict[int, _Decision] = {}
    originals: dict[int, Any] = {}
    copied: list[tuple[Any, Any]] = []
    before: dict[int, list[QuantizeWrapper]] = {}  # wrappers run before a split layer's tail

    def clone(layer):
        decision = plan.get(id(layer))
        if decision is None or decision.action in ("passthrough", "float"):
            new = layer
            if isinstance(layer, keras.layers.Layer) and not isinstance(layer,
                                                                        keras.layers.InputLayer):
                # a fresh copy, so the layer belongs to the quantized graph only and
                # ``qmodel.get_layer(name).output`` is a tensor of that graph
                new = _copy_layer(layer)
                copied.append((layer, new))
        elif decision.action == "fold":
            new = keras.layers.Identity(name=layer.name, dtype="float32")
        elif not isinstance(layer, keras.layers.Layer):
            new = layer  # a quantized keras.ops operation: quantizers around it (see call)
        elif decision.carrier:
            new = QuantizeWrapper(batchnorm_carrier(layer), decision.spec,
                                  quantize_output=decision.quantize_output, batchnorm=layer,
                                  name=f"quant_{layer.name}")
        elif split_affine(layer) is not None:
            # x * a + b: one quantized Rescaling per int8 op (see tfquant.layers.affine)
            *head, tail = split_affine(layer)
            new = QuantizeWrapper(tail, decision.spec, quantize_output=decision.quantize_output)
            before[id(new)] = [QuantizeWrapper(p, decision.spec) for p in head]
        else:
            new = QuantizeWrapper(layer, decision.spec, quantize_output=decision.quantize_output,
                                  batchnorm=decision.batchnorm)
        if decision is not None:
            by_new_layer[id(new)] = decision
        originals[id(new)] = layer
        return new

    quantized: set[int] = set()
    input_quantizers: dict[int, Any] = {}
    used_names: set[str] = {layer.name for layer in flat.layers}

    def unique(name: str) -> str:
        while name in used_names:
            name += "_"
        used_names.add(name)
        return name

    def quantize_input(t, spec: LayerSpec):
        if id(t) in quantized or not isinstance(t, keras.KerasTensor):
            return t
        if id(t) not in input_quantizers:
            source = t._keras_history.operation.name
            quantizer = make_quantizer(spec.activations, name=unique(f"{source}_quantizer"))
            q = quantizer(t)
            quantized.add(id(q))
            input_quantizers[id(t)] = q
        return input_quantizers[id(t)]

    def call(layer, *args, **kwargs):
        decision = by_new_layer.get(id(layer))
        inputs = tree.flatten((args, kwargs))
        if decision is not None and decision.action == "quantize" and not decision.fused \
                and decision.spec.activations is not None:
            args, kwargs = tree.map_structure(lambda t: quantize_input(t, decision.spec),
                                              (args, kwargs))
        if decision is not None and decision.action == "fold":
            kwargs = {}  # the Identity standing in for a folded BN takes no mask/training
        for head in before.get(id(layer), ()):
            args = (head(*args, **kwargs),)
        outputs = layer(*args, **kwargs)
        quantized_op = (decision is not None and decision.action == "quantize"
                        and not isinstance(layer, keras.layers.Layer))
        if quantized_op and decision.quantize_output:
            quantizer = make_quantizer(decision.spec.activations,
                                       name=unique(f"{layer.name}_output_quantizer"))
            outputs = quantizer(outputs)
        inputs_quantized = all(id(t) in quantized for t in inputs
                               if isinstance(t, keras.KerasTensor))
        if decision is not None and decision.rounded_by_consumer:
            is_quantized = True          # the consumer's (a Concatenate's) quantizer rounds it
        elif isinstance(layer, QuantizeWrapper):
            is_quantized = layer.output_quantizer is not None
        elif quantized_op:
            is_quantized = decision.quantize_output
        elif decision is not None and decision.action in ("passthrough", "fold"):
            is_quantized = inputs_quantized
        else:
            is_quantized = False
        if is_quantized:
            for t in tree.flatten(outputs):
                quantized.add(id(t))
        return outputs

    qmodel = keras.models.clone_model(flat, clone_function=clone, call_function=call)
    for old, new in copied:
        new.set_weights(old.get_weights())
    qmodel.quantization_report = _report(flat, plan, config)
    return qmodel


def _describe(decision: _Decision, layer, plan) -> str:
    spec = decision.spec
    parts = []
    if decision.batchnorm is not None:
        parts.append(f"BN {decision.batchnorm.name!r} folded")
    if spec is not None and spec.weights is not None and rule_for(layer).kind == "weighted":
        w = spec.weights
        parts.append(f"weights {w.bits}-bit {'per-channel' if w.per_axis else 'per-tensor'} "
                     f"{'symmetric' if w.symmetric else 'asymmetric'} ({w.learner})")
    act = decision.fused_activation
    if act is not None and plan[id(act)].rounded_by_consumer:
        parts.append(f"output rounded after fused activation {act.name!r} by its consumer's "
                     "quantizer")
    elif act is not None:
        a = plan[id(act)].spec.activations
        parts.append(f"output quantized after fused activation {act.name!r} {a.bits}-bit "
                     f"({a.learner})")
    elif spec is not None and spec.activations is not None and not decision.rounded_by_consumer:
        a = spec.activations
        inner = activation_name(getattr(layer, "activation", None))
        if rule_for(layer).kind == "weighted" and inner not in ("linear", *FUSABLE_ACTIVATIONS):
            # TFLite runs this activation as its own op: a quantizer before it, then its output
            output = (f"TFLite's fixed {inner} range" if inner in FIXED_OUTPUT_RANGES
                      and a.bits in (8, 16) else f"{a.bits}-bit ({a.learner})")
            parts.append(f"pre-activation {a.bits}-bit ({a.learner}); output after {inner} "
                         f"{output}")
        else:
            parts.append(f"output {a.bits}-bit ({a.learner})")
    if decision.reason:
        parts.append(decision.reason)
    return "; ".join(parts)


def _report(flat: keras.Model, plan, config: QuantConfig) -> QuantizationReport:
    entries = []
    for op in flat.operations:
        if isinstance(op, keras.layers.InputLayer):
            continue
        decision = plan[id(op)]
        action = "fused" if decision.fused else decision.action
        detail = (_describe(decision, op, plan) if decision.action == "quantize"
                  else decision.reason)
        entries.append(LayerEntry(name=op.name, type=type(op).__name__, action=action,
                                  detail=detail))
    return QuantizationReport(entries)
