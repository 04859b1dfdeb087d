"""Re-tracing a model after its ``Quantizer.enabled`` flags change.

A traced function keeps the quantizer flags it saw, so the analysis tools, AdaRound and
``tfquant.ptq.auto`` trace afresh per quantizer configuration (or per layer).
:func:`reset_compiled_functions` drops a model's cached Keras functions so that the next
``predict``/``evaluate``/``fit`` re-traces, and :func:`quiet_retracing` hides the warning
TensorFlow logs when a function is traced often, which here is intended.

Example:
    >>> reset_compiled_functions(qmodel)       # the next predict sees the current flags
    >>> with quiet_retracing():
    ...     for config in configs:
    ...         outputs.append(tf.function(step)(x))
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import keras
import tensorflow as tf

__all__ = ["quiet_retracing", "reset_compiled_functions"]


def reset_compiled_functions(model: keras.Model) -> None:
    """Drops the model's cached ``predict``/``evaluate``/``fit`` functions, so the next call
    re-traces and sees the current ``Quantizer.enabled`` flags.

    Args:
        model: any Keras model (attributes it lacks are left alone).

    Example:
        >>> q.enabled = False
        >>> reset_compiled_functions(qmodel)
        >>> qmodel.predict(x)                      # traced with ``q`` off
    """
    for attr in ("predict_function", "test_function", "train_function"):
        if hasattr(model, attr):
            setattr(model, attr, None)


class _RetracingFilter(logging.Filter):
    """Drops TensorFlow's "N out of the last M calls to ... triggered tf.function retracing"
    warning and lets every other record through."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "tf.function retracing" not in record.getMessage()


@contextlib.contextmanager
def quiet_retracing() -> Iterator[None]:
    """Within the block, TensorFlow's "triggered tf.function retracing" warning is not logged.

    Only that warning is dropped (a filter on TensorFlow's logger, removed on exit); other
    TensorFlow messages still show.

    Example:
        >>> with quiet_retracing():
        ...     outs = [tf.function(lambda: model(x))() for _ in range(10)]
    """
    logger = tf.get_logger()
    quiet = _RetracingFilter()
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)
