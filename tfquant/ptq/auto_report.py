"""What :func:`tfquant.ptq.auto.auto` reports: the steps it tried, their scores, its result.

:class:`AutoStep` is one model tried, :class:`AutoReport` all of them with the one returned,
:class:`AutoQuantError` a step that failed (with the report of the steps done so far).

Example:
    >>> qmodel, report = tfquant.ptq.auto.auto(model, x_calib, accuracy, tolerance=0.01)
    >>> report.met, report.best, report.best_score
    (True, 'ptq[mse+cle+bias_correction]', 0.981)
    >>> json.dumps(report.to_dict())
"""

from __future__ import annotations

import dataclasses

__all__ = ["AutoReport", "AutoStep", "AutoQuantError"]


class AutoQuantError(RuntimeError):
    """A step of :func:`auto` failed; ``step`` names it, ``report`` holds the steps done.

    The original exception is chained (``__cause__``).
    """

    def __init__(self, message: str, step: str, report: "AutoReport"):
        super().__init__(message)
        self.step = step
        self.report = report


@dataclasses.dataclass
class AutoStep:
    """One thing :func:`auto` tried.

    Attributes:
        name: e.g. ``"float"``, ``"ptq[mse]"``, ``"ptq[mse+cle+bias_correction]"``,
            ``"sensitivity[conv2]"``, ``"fallback[k=1]"``, ``"qat"``.
        kind: ``"float"``, ``"ptq"``, ``"sensitivity"``, ``"fallback"`` or ``"qat"``.
        score: ``eval_fn``'s value.
        drop: float score minus this score (positive: worse than float).
        settings: what was run (observer, methods, layers kept in higher precision, ...).
        seconds: wall time of the step, evaluation included.
    """

    name: str
    kind: str
    score: float
    drop: float
    settings: dict = dataclasses.field(default_factory=dict)
    seconds: float = 0.0


@dataclasses.dataclass
class AutoReport:
    """Everything :func:`auto` tried, with scores, and what it returned.

    Attributes:
        float_score: ``eval_fn`` of the float model.
        tolerance: the allowed drop.
        steps: every step tried, in order.
        best: name of the step whose model was returned.
        sensitivity: layer name -> score gained when that layer stays float (largest first).
        raised_layers: layers given higher precision in the returned model.
        fallback: how those layers were raised (``"float"`` or ``"int16"``), None if none.

    Example:
        >>> report.met, report.best, report.best_score
        (True, 'ptq[mse+cle+bias_correction]', 0.981)
    """

    float_score: float
    tolerance: float
    steps: list[AutoStep] = dataclasses.field(default_factory=list)
    best: str | None = None
    sensitivity: dict[str, float] = dataclasses.field(default_factory=dict)
    raised_layers: list[str] = dataclasses.field(default_factory=list)
    fallback: str | None = None

    @property
    def best_step(self) -> AutoStep | None:
        """The :class:`AutoStep` of the returned model."""
        return next((s for s in self.steps if s.name == self.best), None)

    @property
    def best_score(self) -> float | None:
        """Score of the returned model."""
        step = self.best_step
        return None if step is None else step.score

    @property
    def met(self) -> bool:
        """Whether the returned model is within ``tolerance`` of the float model."""
        step = self.best_step
        return step is not None and step.drop <= self.tolerance

    def to_dict(self) -> dict:
        """A JSON-friendly dict."""
        return {"float_score": self.float_score, "tolerance": self.tolerance,
                "best": self.best, "best_score": self.best_score, "met": self.met,
                "raised_layers": list(self.raised_layers), "fallback": self.fallback,
                "sensitivity": dict(self.sensitivity),
                "steps": [dataclasses.asdict(s) for s in self.steps]}

    def __str__(self) -> str:
        width = max([len(s.name) for s in self.steps] + [4])
        lines = [f"auto quantization: float score {self.float_score:.4f}, tolerance "
                 f"{self.tolerance:g}; returned {self.best!r} "
                 f"({'within' if self.met else 'NOT within'} tolerance)"]
        lines.append(f"  {'step':<{width}}  {'score':>8}  {'drop':>8}  {'time':>7}")
        for s in self.steps:
            mark = " *" if s.name == self.best else ""
            lines.append(f"  {s.name:<{width}}  {s.score:8.4f}  {s.drop:8.4f}  "
                         f"{s.seconds:6.1f}s{mark}")
        if self.raised_layers:
            lines.append(f"  higher precision ({self.fallback}): {', '.join(self.raised_layers)}")
        return "\n".join(lines)
