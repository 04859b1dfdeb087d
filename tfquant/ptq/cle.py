"""Cross-layer equalization and high-bias absorption (Nagel et al. 2019, "Data-Free
Quantization Through Weight Equalization and Bias Correction").

For two consecutive layers ``y = W2 f(W1 x + b1) + b2`` with ``f`` positive homogeneous
(ReLU, LeakyReLU, identity, and channel-wise max/average pooling or zero padding between),
scaling output channel ``i`` of layer 1 by ``1 / s_i`` and input channel ``i`` of layer 2 by
``s_i`` leaves the function unchanged. With ``s_i = sqrt(r1_i * r2_i) / r2_i`` (``r``: the
per-channel ranges ``max |W|``) both ranges become ``sqrt(r1_i * r2_i)``, which suits
per-tensor weight quantization. Chains are equalized pair by pair until the scales converge.

High-bias absorption then moves ``c = max(0, beta - 3 |gamma|)`` (from the folded BN's
statistics) from layer 1's bias into layer 2's: ``b1 -= c``, ``b2 += W2 c``; exact when the
pre-activations stay above ``c`` (about 99.9% of them under the BN's Gaussian model) and away
from zero-padded borders.

Pairs: Conv->Conv, Conv->Depthwise, Depthwise->Conv, Dense->Dense, Conv->Dense (through
global pooling), with ``Conv`` meaning an ungrouped channels-last Conv1D/2D/3D.

Example:
    >>> eq = cross_layer_equalization(model)          # BN folded, ReLU6 -> ReLU, equalized
    >>> print(eq.cle_report)
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np

from tfquant.annotate import _consumers, _num_nodes
from tfquant.layers.registry import activation_name, rule_for
from tfquant.ptq.fold import OutputStatistics, fold_batchnorm, rebuild

#: Activations with f(s x) = s f(x) for s > 0.
HOMOGENEOUS = ("linear", "relu", "leaky_relu")

L = keras.layers
#: Channel-wise layers that commute with positive per-channel scaling.
_CHANNELWISE = (L.MaxPooling1D, L.MaxPooling2D, L.MaxPooling3D, L.AveragePooling1D,
                L.AveragePooling2D, L.AveragePooling3D, L.GlobalAveragePooling1D,
                L.GlobalAveragePooling2D, L.GlobalAveragePooling3D, L.GlobalMaxPooling1D,
                L.GlobalMaxPooling2D, L.GlobalMaxPooling3D, L.ZeroPadding1D, L.ZeroPadding2D,
                L.ZeroPadding3D, L.Dropout, L.SpatialDropout1D, L.SpatialDropout2D,
                L.SpatialDropout3D, L.Identity)
#: Of those, the ones that also commute with subtracting a per-channel constant.
_SHIFT_SAFE = tuple(c for c in _CHANNELWISE if not c.__name__.startswith("ZeroPadding"))


# ------------------------------------------------------------------ kernel channel views
def layer_kind(layer) -> str | None:
    """``"conv"``, ``"depthwise"`` or ``"dense"`` for layers CLE can rescale, else None."""
    from keras.src.layers.convolutional.base_conv import BaseConv
    from keras.src.layers.convolutional.base_depthwise_conv import BaseDepthwiseConv

    if getattr(layer, "data_format", "channels_last") != "channels_last":
        return None
    if isinstance(layer, BaseDepthwiseConv):
        return "depthwise"
    if isinstance(layer, BaseConv) and getattr(layer, "groups", 1) == 1:
        return "conv"
    if isinstance(layer, L.Dense):
        return "dense"
    return None


def output_ranges(kind: str, kernel: np.ndarray) -> np.ndarray:
    """``max |W|`` per output channel (depthwise: per ``in * multiplier`` channel)."""
    k = np.abs(kernel)
    if kind == "depthwise":
        return k.reshape(-1, k.shape[-2] * k.shape[-1]).max(axis=0)
    return k.reshape(-1, k.shape[-1]).max(axis=0)


def input_ranges(kind: str, kernel: np.ndarray) -> np.ndarray:
    """``max |W|`` per input channel (axis -2 of every supported kernel layout)."""
    k = np.moveaxis(np.abs(kernel), -2, 0)
    return k.reshape(k.shape[0], -1).max(axis=1)


def scale_outputs(kind: str, kernel: np.ndarray, factor: np.ndarray) -> np.ndarray:
    """The kernel with output channel ``i`` multiplied by ``factor[i]``."""
    if kind == "depthwise":
        return kernel * factor.reshape(kernel.shape[-2], kernel.shape[-1])
    return kernel * factor


def scale_inputs(kernel: np.ndarray, factor: np.ndarray) -> np.ndarray:
    """The kernel with input channel ``i`` multiplied by ``factor[i]``."""
    return kernel * factor.reshape(-1, 1)


def contract_inputs(kind: str, kernel: np.ndarray, values: np.ndarray) -> np.ndarray:
    """The layer's output (before bias) for a constant input ``values`` per channel, ignoring
    padding: ``sum W[..., i, o] * values[i]`` per output channel ``o``."""
    weighted = kernel * values.reshape(-1, 1)
    spatial = tuple(range(kernel.ndim - 2))
    if kind == "depthwise":
        return weighted.sum(axis=spatial).reshape(-1)
    return weighted.sum(axis=spatial + (kernel.ndim - 2,))


def out_channels(kind: str, kernel: np.ndarray) -> int:
    """Number of output channels of a supported kernel."""
    return kernel.shape[-2] * kernel.shape[-1] if kind == "depthwise" else kernel.shape[-1]


# ------------------------------------------------------------------------- pair finding
@dataclasses.dataclass
class _Pair:
    first: keras.layers.Layer
    second: keras.layers.Layer
    via: list
    shift_safe: bool


def _activation(layer) -> str | None:
    """Canonical activation name of an activation layer (None for other layers)."""
    if rule_for(layer) is not None and rule_for(layer).kind == "activation":
        return activation_name(layer)
    return None


def find_pairs(model: keras.Model) -> tuple[list[_Pair], list[str]]:
    """Consecutive layer pairs CLE can rescale, and why other candidates were left out."""
    consumers = _consumers(model)
    outputs = {id(t) for t in model.outputs}
    pairs, skipped = [], []
    for op in model.operations:
        kind = layer_kind(op)
        if kind is None or _num_nodes(op) != 1:
            continue
        act = activation_name(getattr(op, "activation", None))
        if act not in HOMOGENEOUS:
            skipped.append(f"{op.name}: its activation {act!r} is not positive homogeneous"
                           + (" (relu6_to_relu=True replaces it)" if act == "relu6" else ""))
            continue
        cur, via, shift_safe = op, [], True
        while True:
            cons = consumers.get(id(cur), [])
            if id(cur.output) in outputs or len(cons) != 1 or _num_nodes(cons[0]) != 1:
                break
            nxt = cons[0]
            kind2 = layer_kind(nxt)
            if kind2 is not None:
                if out_channels(kind, np.asarray(op.kernel)) == nxt.kernel.shape[-2]:
                    pairs.append(_Pair(op, nxt, via, shift_safe))
                break
            name = _activation(nxt)
            if name is not None and name not in HOMOGENEOUS:
                skipped.append(f"{op.name} -> {nxt.name}: activation {name!r} is not positive "
                               "homogeneous" + (" (relu6_to_relu=True replaces it)"
                                                if name == "relu6" else ""))
                break
            if name is None and not isinstance(nxt, _CHANNELWISE):
                break
            shift_safe = shift_safe and (name is not None or isinstance(nxt, _SHIFT_SAFE))
            via.append(nxt)
            cur = nxt
    return pairs, skipped


def replace_relu6(model: keras.Model) -> tuple[keras.Model, list[str]]:
    """A copy of ``model`` with every ReLU6 (layers and fused activations) replaced by ReLU."""
    replaced: list[str] = []

    def is_relu6(layer) -> bool:
        if _activation(layer) == "relu6":
            return True
        return rule_for(layer) is not None and rule_for(layer).kind == "weighted" and \
            activation_name(getattr(layer, "activation", None)) == "relu6"

    if not any(is_relu6(op) for op in model.operations if isinstance(op, keras.layers.Layer)):
        return model, replaced

    def edit(layer, config):
        if not is_relu6(layer):
            return config
        replaced.append(layer.name)
        if isinstance(layer, L.ReLU):
            return {**config, "max_value": None}
        return {**config, "activation": "relu"}

    return rebuild(model, edit=edit), replaced


# ----------------------------------------------------------------------- equalization
@dataclasses.dataclass
class EqualizedPair:
    """One equalized pair.

    Attributes:
        first: the layer whose output channels were divided by ``scales``.
        second: the layer whose input channels were multiplied by ``scales``.
        via: layers between them (activation, pooling, ...).
        scales: the accumulated ``s`` per channel.
        absorbed: the bias moved from ``first`` into ``second`` (None: no absorption).
    """

    first: str
    second: str
    via: tuple[str, ...]
    scales: np.ndarray
    absorbed: np.ndarray | None = None


@dataclasses.dataclass
class CLEReport:
    """What :func:`cross_layer_equalization` did.

    Attributes:
        pairs: the equalized pairs.
        iterations: sweeps over all pairs.
        converged: whether every scale of the last sweep was within ``tolerance`` of 1.
        folded: layers a BatchNormalization was folded into.
        replaced_relu6: layers whose ReLU6 became ReLU.
        skipped: candidates left alone, with the reason.
        statistics: output statistics of BN-folded layers after equalization/absorption.
    """

    pairs: list[EqualizedPair] = dataclasses.field(default_factory=list)
    iterations: int = 0
    converged: bool = True
    folded: list[str] = dataclasses.field(default_factory=list)
    replaced_relu6: list[str] = dataclasses.field(default_factory=list)
    skipped: list[str] = dataclasses.field(default_factory=list)
    statistics: dict[str, OutputStatistics] = dataclasses.field(default_factory=dict)

    def __str__(self) -> str:
        lines = [f"CLE: {len(self.pairs)} pairs, {self.iterations} sweeps "
                 f"({'converged' if self.converged else 'not converged'}); "
                 f"BN folded into {len(self.folded)} layers; ReLU6 replaced in "
                 f"{len(self.replaced_relu6)}"]
        for p in self.pairs:
            via = " -> ".join(p.via)
            lines.append(f"  {p.first} -> {via + ' -> ' if via else ''}{p.second}: scales "
                         f"[{p.scales.min():.3g}, {p.scales.max():.3g}]"
                         + ("" if p.absorbed is None else
                            f", bias absorbed max {p.absorbed.max():.3g}"))
        lines += [f"  skipped {s}" for s in self.skipped]
        return "\n".join(lines)


def equalize(model: keras.Model, statistics: dict[str, OutputStatistics] | None = None,
             bias_absorption: bool = True, max_iterations: int = 100,
             tolerance: float = 1e-5) -> CLEReport:
    """Equalizes (and absorbs biases of) a BN-folded float model IN PLACE.

    Args:
        model: a Functional float model you own (e.g. from :func:`fold_batchnorm`).
        statistics: output statistics of BN-folded layers (for bias absorption); copies are
            updated and returned in the report.
        bias_absorption: absorb ``max(0, mean - 3 std)`` into the next layer.
        max_iterations: maximum sweeps over all pairs.
        tolerance: stop when every ``|log s|`` of a sweep is below this.

    Returns:
        A :class:`CLEReport`.
    """
    pairs, skipped = find_pairs(model)
    report = CLEReport(skipped=skipped)
    stats = {name: OutputStatistics(s.batchnorm, np.array(s.mean, np.float64),
                                    np.array(s.std, np.float64))
             for name, s in (statistics or {}).items()}
    params: dict[int, list] = {}
    layers: dict[int, keras.layers.Layer] = {}
    for p in pairs:
        for layer in (p.first, p.second):
            bias = np.asarray(layer.bias, np.float64) if getattr(layer, "use_bias", False) \
                else None
            params.setdefault(id(layer), [np.asarray(layer.kernel, np.float64), bias])
            layers[id(layer)] = layer
    scales = [np.ones(out_channels(layer_kind(p.first), params[id(p.first)][0])) for p in pairs]
    report.converged = not pairs
    for sweep in range(1, (max_iterations if pairs else 0) + 1):
        report.iterations = sweep
        change = 0.0
        for i, p in enumerate(pairs):
            kind1 = layer_kind(p.first)
            first, second = params[id(p.first)], params[id(p.second)]
            r1 = output_ranges(kind1, first[0])
            r2 = input_ranges(layer_kind(p.second), second[0])
            s = np.ones_like(r1)
            ok = (r1 > 0) & (r2 > 0)
            s[ok] = np.sqrt(r1[ok] * r2[ok]) / r2[ok]
            first[0] = scale_outputs(kind1, first[0], 1.0 / s)
            if first[1] is not None:
                first[1] = first[1] / s
            second[0] = scale_inputs(second[0], s)
            if p.first.name in stats:
                stats[p.first.name].mean /= s
                stats[p.first.name].std /= s
            scales[i] *= s
            change = max(change, float(np.max(np.abs(np.log(s)))))
        if change < tolerance:
            report.converged = True
            break
    absorbed = _absorb(pairs, params, stats) if bias_absorption else {}
    for layer_id, (kernel, bias) in params.items():
        layer = layers[layer_id]
        layer.kernel.assign(kernel.astype(np.float32))
        if bias is not None:
            layer.bias.assign(bias.astype(np.float32))
    report.pairs = [EqualizedPair(p.first.name, p.second.name, tuple(v.name for v in p.via),
                                  scales[i], absorbed.get(i)) for i, p in enumerate(pairs)]
    report.statistics = stats
    return report


def _absorb(pairs: list[_Pair], params: dict, stats: dict) -> dict[int, np.ndarray]:
    absorbed = {}
    for i, p in enumerate(pairs):
        first, second = params[id(p.first)], params[id(p.second)]
        st = stats.get(p.first.name)
        if st is None or not p.shift_safe or first[1] is None or second[1] is None:
            continue
        c = np.maximum(0.0, st.mean - 3.0 * st.std)
        if not np.any(c > 0):
            continue
        first[1] = first[1] - c
        second[1] = second[1] + contract_inputs(layer_kind(p.second), second[0], c)
        st.mean = st.mean - c
        absorbed[i] = c
    return absorbed


def cross_layer_equalization(model: keras.Model, relu6_to_relu: bool = False,
                             bias_absorption: bool = True, max_iterations: int = 100,
                             tolerance: float = 1e-5) -> keras.Model:
    """Folds BN, optionally replaces ReLU6 by ReLU, and equalizes consecutive layers.

    Args:
        model: a Functional or Sequential float model; it is not modified.
        relu6_to_relu: replace ReLU6 by ReLU first, as the paper does for MobileNetV2. Off by
            default: it changes the float function wherever an activation exceeds 6 (opt in
            when the model tolerates it, e.g. to equalize MobileNetV2's blocks); with False,
            pairs with a ReLU6 between them are left alone and the output is unchanged.
        bias_absorption: absorb high biases using the folded BNs' statistics (changes the
            output only where a pre-activation falls below ``mean - 3 std``).
        max_iterations: maximum sweeps over the pairs.
        tolerance: convergence threshold on ``|log s|``.

    Returns:
        A new float Functional model with ``cle_report`` (a :class:`CLEReport`).

    Example:
        >>> eq = cross_layer_equalization(model, bias_absorption=False)
        >>> np.allclose(eq(x), model(x), rtol=1e-4, atol=1e-5)
        True
    """
    folded, stats = fold_batchnorm(model, with_statistics=True)
    replaced: list[str] = []
    if relu6_to_relu:
        folded, replaced = replace_relu6(folded)
    report = equalize(folded, stats, bias_absorption, max_iterations, tolerance)
    report.folded = sorted(stats)
    report.replaced_relu6 = replaced
    folded.cle_report = report
    return folded
