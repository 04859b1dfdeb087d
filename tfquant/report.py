"""The annotation report: what happened to every layer of a quantized model, and why."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class LayerEntry:
    """One layer of the report.

    Attributes:
        name: layer name in the float model.
        type: layer class name.
        action: ``quantize``, ``fold`` (BN folded into the previous layer), ``fused`` (activation
            fused into its producer), ``passthrough`` (shares its input's grid) or ``float``.
        detail: what was quantized, or why the layer stays float.
    """

    name: str
    type: str
    action: str
    detail: str = ""


@dataclasses.dataclass
class QuantizationReport:
    """Per-layer account of a quantization (returned as ``qmodel.quantization_report``).

    Example:
        >>> print(qmodel.quantization_report)          # a table
        >>> qmodel.quantization_report.float_layers    # names left in float
    """

    entries: list[LayerEntry]

    @property
    def float_layers(self) -> list[str]:
        """Names of the layers left in float."""
        return [e.name for e in self.entries if e.action == "float"]

    @property
    def quantized_layers(self) -> list[str]:
        """Names of the layers that carry quantizers."""
        return [e.name for e in self.entries if e.action in ("quantize", "fused")]

    def __getitem__(self, name: str) -> LayerEntry:
        for entry in self.entries:
            if entry.name == name:
                return entry
        raise KeyError(f"no layer named {name!r} in the report")

    def to_records(self) -> list[dict]:
        """The entries as plain dicts."""
        return [dataclasses.asdict(e) for e in self.entries]

    def __str__(self) -> str:
        rows = [("layer", "type", "action", "detail")] + [
            (e.name, e.type, e.action, e.detail) for e in self.entries]
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        lines = []
        for i, r in enumerate(rows):
            lines.append("  ".join(r[j].ljust(widths[j]) for j in range(3)) + "  " + r[3])
            if i == 0:
                lines.append("-" * (sum(widths) + 6 + 6))
        return "\n".join(lines)
