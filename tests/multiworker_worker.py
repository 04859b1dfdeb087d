"""One process of the multi-worker QAT test (``tests/test_multiworker.py``); not a test module.

``--mode worker``: one task of a ``tf.distribute.MultiWorkerMirroredStrategy`` cluster (read from
``TF_CONFIG``; RING collectives on CPU). ``--mode single``: the same training in one process with
no strategy. Both train ``tfquant.quantize_model(small_cnn)`` with ``model.fit`` on the same
global batches of the 8x8 digits and write every model variable, every quantizer's range and the
accuracies to ``--out`` (.npz, written atomically).

In the cluster each worker feeds its shard of every global batch: Keras hands the global-batch
``tf.data`` pipeline to ``experimental_distribute_dataset``, which rebatches it per replica and
auto-shards it by DATA, so worker ``i`` trains on the ``i``-th half of each global batch. The
second half of every global batch is scaled by ``SHARD_SCALE``: the workers then see different
input ranges, and the results differ from one process unless range statistics are reduced
across workers (check by hand with ``--no-reduce``).

Run by hand (two shells, any two free ports)::

    TF_CONFIG='{"cluster": {"worker": ["127.0.0.1:23456", "127.0.0.1:23457"]},
                "task": {"type": "worker", "index": 0}}' \\
        python tests/multiworker_worker.py --mode worker --out /tmp/w0.npz
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SHARD_SCALE = 1.75


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("worker", "single"), required=True)
    parser.add_argument("--out", required=True, help="output .npz path")
    parser.add_argument("--configs", default="tflite_int8",
                        help="comma-separated quantization presets, trained one after another")
    parser.add_argument("--steps", type=int, default=4, help="training steps (global batches)")
    parser.add_argument("--global-batch", type=int, default=32)
    parser.add_argument("--collective-timeout", type=float, default=100.0,
                        help="seconds a collective may wait for the other worker")
    parser.add_argument("--max-seconds", type=float, default=0.0,
                        help="exit (code 124) after this many seconds; 0: never")
    parser.add_argument("--parent-pid", type=int, default=0,
                        help="exit (code 3) as soon as this process is no longer our parent")
    parser.add_argument("--no-reduce", action="store_true",
                        help="control: keep per-replica range statistics (must NOT match)")
    return parser.parse_args(argv)


def start_watchdog(max_seconds: float, parent_pid: int) -> None:
    """Ends this process once it has run ``max_seconds`` or ``parent_pid`` (the test) is gone."""
    import threading

    end = time.monotonic() + max_seconds if max_seconds > 0 else float("inf")

    def watch():
        while time.monotonic() < end:
            if parent_pid and os.getppid() != parent_pid:
                print("watchdog: the test process is gone, exiting", flush=True)
                os._exit(3)
            time.sleep(1.0)
        print(f"watchdog: still running after {max_seconds:.0f}s, exiting", flush=True)
        os._exit(124)

    threading.Thread(target=watch, name="watchdog", daemon=True).start()


def make_data(steps: int, global_batch: int):
    """``steps`` global batches of training digits (second half of each batch scaled) and the
    held-out test digits."""
    import numpy as np

    from tfquant.datasets import load_digits

    (x, y), (x_test, y_test) = load_digits(split=0.2, seed=0)
    n = steps * global_batch
    if n > len(x):
        raise ValueError(f"{steps} x {global_batch} samples requested, {len(x)} available")
    x, y = x[:n].copy(), y[:n]
    x[(np.arange(n) % global_batch) >= global_batch // 2] *= SHARD_SCALE
    return x, y, x_test, y_test


def build_model():
    """``small_cnn`` on 8x8x1 (two conv stages) with synchronized BatchNormalization: tfquant
    folds it, and under a strategy its batch statistics are then those of the global batch, as
    in one process."""
    import keras

    from tfquant.zoo import small_cnn

    keras.utils.set_random_seed(0)
    model = small_cnn((8, 8, 1), 10, seed=0, widths=(8, 16), softmax=False)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.synchronized = True  # read by get_config when quantize_model copies it
    return model


def work_around_keras_20585(model, sample_batch) -> None:
    """Keras 3 bug keras-team/keras#20585: ``fit`` does not run under
    MultiWorkerMirroredStrategy. Two places in ``keras/src/backend/tensorflow/trainer.py``
    call ``strategy.reduce`` in ways the collective strategy rejects:

    1. ``_maybe_symbolic_build`` averages the first distributed batch (a nested ``(x, y)`` of
       ``PerReplica``; the collective strategy reduces only single values) to get shapes for
       building the compile metrics and the optimizer: hand it a plain sample batch instead
       (the code path Keras takes when given ``data_batch``).
    2. ``reduce_per_replica`` averages each step's logs with ``strategy.reduce("MEAN", v,
       axis=0)``, which fails on the scalar logs: treat the strategy like a single-worker one,
       so each worker's step logs stay local. The epoch logs (``history``) do not depend on
       this: Keras reads them from the metric variables (sync-on-read, summed across workers).

    Neither touches the training computation (forward, gradients, their all-reduce, updates).
    """
    import tensorflow as tf
    from keras.src.backend.tensorflow import trainer as tf_trainer

    original = model._maybe_symbolic_build
    sample = tuple(tf.constant(t) for t in sample_batch)

    def symbolic_build(iterator=None, data_batch=None):
        return original(iterator=None, data_batch=sample if data_batch is None else data_batch)

    model._maybe_symbolic_build = symbolic_build
    tf_trainer._collective_all_reduce_multi_worker = lambda strategy: False


def train(config, strategy, data, steps, global_batch, stage):
    """QAT of ``small_cnn`` with ``config``; returns ``(arrays, meta)`` for the .npz."""
    import contextlib

    import keras
    import numpy as np
    import tensorflow as tf

    import tfquant
    from tfquant.quantizers import Quantizer

    x, y, x_test, y_test = data
    float_model = build_model()
    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        q = tfquant.quantize_model(float_model, config)
        q.compile(keras.optimizers.SGD(0.05, momentum=0.9),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"], jit_compile=False)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    options.deterministic = True
    dataset = (tf.data.Dataset.from_tensor_slices((x, y))
               .batch(global_batch, drop_remainder=True).with_options(options))
    if strategy is not None:
        work_around_keras_20585(q, (x[:2], y[:2]))
    stage(f"{config}: quantized and compiled")
    step_ends = []  # (wall, cpu) seconds: diagnostics for slow runs
    timer = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: step_ends.append(
        (round(time.time(), 2), round(time.process_time(), 2))))
    history = q.fit(dataset, epochs=1, steps_per_epoch=steps, verbose=0, shuffle=False,
                    callbacks=[timer])
    stage(f"{config}: fitted")

    arrays = {f"var{i:03d}": np.asarray(v.numpy()) for i, v in enumerate(q.weights)}
    quantizers = [layer for layer in q._flatten_layers(include_self=False)
                  if isinstance(layer, Quantizer)]
    for i, quantizer in enumerate(quantizers):
        x_min, x_max = quantizer.current_range()
        arrays[f"range{i:03d}_min"] = np.asarray(x_min)
        arrays[f"range{i:03d}_max"] = np.asarray(x_max)
    # Test accuracy of the fake-quant inference path, computed locally (no collectives).
    logits = np.asarray(q(tf.constant(x_test), training=False))
    meta = {
        "paths": [v.path for v in q.weights],
        "quantizers": [quantizer.path for quantizer in quantizers],
        "history": {k: [float(v) for v in vals] for k, vals in history.history.items()},
        "test_accuracy": float(np.mean(np.argmax(logits, -1) == y_test)),
        "step_ends": step_ends,
    }
    return arrays, meta


def main(argv=None) -> int:
    args = parse_args(argv)
    start = time.time()
    start_watchdog(args.max_seconds, args.parent_pid)
    stages = {}

    def stage(name):
        stages[name] = (round(time.time() - start, 2), round(time.process_time(), 2))
        print(f"[{args.mode}] {name} at {stages[name][0]:.1f}s (cpu {stages[name][1]:.1f}s)",
              flush=True)

    import tensorflow as tf

    stage("imported tensorflow")
    # Three TensorFlow processes share two cores: keep each one small. Collective kernels are
    # asynchronous, so two inter-op threads cannot starve them.
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(2)

    strategy, task = None, None
    if args.mode == "worker":
        task = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
        options = tf.distribute.experimental.CommunicationOptions(
            implementation=tf.distribute.experimental.CommunicationImplementation.RING,
            timeout_seconds=args.collective_timeout)
        strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
        stage("cluster connected")

    import keras
    import numpy as np

    keras.config.disable_traceback_filtering()  # full tracebacks in the test's failure report
    if args.no_reduce:
        from tfquant.quantizers import base

        base.replica_all_gather_reduce = lambda value, reduce_fn: value

    data = make_data(args.steps, args.global_batch)
    arrays = {}
    meta = {"mode": args.mode, "task": task,
            "replicas": 1 if strategy is None else strategy.num_replicas_in_sync,
            "workers": 1 if strategy is None else strategy.extended._num_workers,
            "configs": {}}
    for config in args.configs.split(","):
        out, meta["configs"][config] = train(config, strategy, data, args.steps,
                                             args.global_batch, stage)
        arrays.update({f"{config}/{k}": v for k, v in out.items()})
    if strategy is not None:
        # Barrier: no worker leaves while the other may still need it (a worker whose peer has
        # gone logs "tasks are unhealthy" and aborts its collectives).
        done = strategy.reduce(tf.distribute.ReduceOp.SUM, tf.constant(1.0), axis=None)
        assert int(done) == strategy.extended._num_workers, done
    meta["stages"] = stages
    tmp = args.out + ".tmp.npz"
    np.savez(tmp, meta=np.asarray(json.dumps(meta)), **arrays)
    os.replace(tmp, args.out)  # the test only ever sees complete files
    stage("done")
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter teardown: TensorFlow's gRPC server has no clean shutdown, and a worker
    # tearing down while its peer exits can hang or crash after its results are written.
    os._exit(code)
