"""QAT under tf.distribute.MultiWorkerMirroredStrategy (two worker processes on 127.0.0.1, RING
collectives on CPU) gives the same weights, quantizer ranges and accuracy as the same training
in one process with the same global batches.

The processes run ``tests/multiworker_worker.py`` (see there for the model, the data and the
sharding; it also works around Keras bug keras-team/keras#20585, which breaks ``fit`` under this
strategy). The test starts both workers and the single-process reference at once, waits for them
with one bounded deadline and always kills what it started (each process is in its own process
group, and also exits by itself past its own deadline or when the test process goes away).

Loopback only: the cluster addresses are 127.0.0.1. TensorFlow's gRPC server still listens on
0.0.0.0:<port> (it has no bind-address option) while the workers run.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
WORKER = HERE / "multiworker_worker.py"
REPO = HERE.parent
CONFIGS = ("tflite_int8",)
STEPS, GLOBAL_BATCH = 4, 32
# All three processes together (each needs ~12 s of CPU, mostly importing TensorFlow and tracing
# the train step; 45-90 s wall on a loaded 2-core machine). The whole test stays under 2 min.
DEADLINE_S = 110
# A worker whose peer is gone errors out of its collectives after this (runs by hand); under the
# test, a failed process ends the scenario at once.
COLLECTIVE_TIMEOUT_S = 100
PORT_CLASH = "Could not start gRPC server"  # a chosen port was taken before the worker bound it


def _free_ports(n: int) -> list[int]:
    """``n`` distinct ports that were free on 127.0.0.1 a moment ago."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _env(extra: dict | None = None) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("TF_CONFIG", "http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY",
                        "grpc_proxy", "ALL_PROXY", "all_proxy")}
    env.update({"KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "2",
                "CUDA_VISIBLE_DEVICES": "-1", "PYTHONUNBUFFERED": "1",
                "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost",
                "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO),
                                                            os.environ.get("PYTHONPATH")]))})
    env.update(extra or {})
    return env


def _start(args: list[str], env: dict, log: Path) -> subprocess.Popen:
    with open(log, "wb") as fh:
        return subprocess.Popen([sys.executable, str(WORKER), *args], cwd=str(REPO), env=env,
                                stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)  # own process group: killed as a whole


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL could not be delivered
        pass


def _tail(log: Path, n: int = 3000) -> str:
    try:
        return log.read_text(errors="replace")[-n:]
    except OSError:
        return "<no log>"


def _wait(procs: dict[str, subprocess.Popen], deadline: float) -> None:
    """Until all exited, one failed (the others would only wait for it), or the deadline."""
    while time.monotonic() < deadline:
        codes = [p.poll() for p in procs.values()]
        if all(c is not None for c in codes) or any(c not in (None, 0) for c in codes):
            return
        time.sleep(0.5)


def _run_scenario(tmp_path: Path) -> dict[str, Path]:
    """Runs the single-process reference and the 2-worker cluster; returns the .npz paths."""
    deadline = time.monotonic() + DEADLINE_S
    common = ["--configs", ",".join(CONFIGS), "--steps", str(STEPS),
              "--global-batch", str(GLOBAL_BATCH),
              "--collective-timeout", str(COLLECTIVE_TIMEOUT_S),
              "--max-seconds", str(DEADLINE_S + 10), "--parent-pid", str(os.getpid())]
    outs = {name: tmp_path / f"{name}.npz" for name in ("single", "worker0", "worker1")}
    logs = {name: tmp_path / f"{name}.log" for name in outs}
    procs: dict[str, subprocess.Popen] = {}
    try:
        procs["single"] = _start(["--mode", "single", "--out", str(outs["single"]), *common],
                                 _env(), logs["single"])
        for attempt in range(2):
            ports = _free_ports(2)
            cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
            for i in range(2):
                name = f"worker{i}"
                logs[name] = tmp_path / f"{name}.attempt{attempt}.log"
                tf_config = {"cluster": cluster, "task": {"type": "worker", "index": i}}
                procs[name] = _start(["--mode", "worker", "--out", str(outs[name]), *common],
                                     _env({"TF_CONFIG": json.dumps(tf_config)}), logs[name])
            _wait(procs, deadline)
            clash = any(procs[n].poll() not in (None, 0) and PORT_CLASH in _tail(logs[n], 20000)
                        for n in ("worker0", "worker1"))
            if not clash or attempt == 1:
                break
            for n in ("worker0", "worker1"):  # rare: start the cluster again on new ports
                _kill(procs[n])
        problems, elapsed = [], DEADLINE_S - (deadline - time.monotonic())
        for name, proc in procs.items():
            if proc.poll() is None:
                problems.append(f"{name}: still running at {elapsed:.0f}s of {DEADLINE_S}s "
                                "(killed)")
            elif proc.returncode != 0:
                problems.append(f"{name}: exit code {proc.returncode}")
        if problems:
            for proc in procs.values():
                _kill(proc)
            details = "\n".join(f"--- {n} log ---\n{_tail(logs[n])}" for n in procs)
            pytest.fail("multi-worker scenario failed: " + "; ".join(problems) + "\n" + details)
    finally:
        for proc in procs.values():
            _kill(proc)
    return outs


def _load(path: Path):
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files if k != "meta"}
        meta = json.loads(str(data["meta"]))
    return arrays, meta


def test_multiworker_qat_matches_single_process(tmp_path):
    outs = _run_scenario(tmp_path)
    single, single_meta = _load(outs["single"])
    assert single_meta["replicas"] == 1
    for worker in ("worker0", "worker1"):
        arrays, meta = _load(outs[worker])
        assert meta["mode"] == "worker" and meta["task"] == int(worker[-1])
        assert meta["workers"] == 2 and meta["replicas"] == 2
        assert sorted(arrays) == sorted(single)
        for config in CONFIGS:
            ref, got = single_meta["configs"][config], meta["configs"][config]
            assert got["paths"] == ref["paths"] and got["quantizers"] == ref["quantizers"]
            assert any(p.endswith("quantizer/min") for p in ref["paths"])
            assert len(ref["quantizers"]) >= 6
            # every variable: weights, BN statistics, quantizer state (min/max, steps)
            for i, path in enumerate(ref["paths"]):
                key = f"{config}/var{i:03d}"
                np.testing.assert_allclose(arrays[key], single[key], rtol=1e-5, atol=1e-6,
                                           err_msg=f"{worker} {config}: {path}")
                if path.endswith("/steps"):
                    assert int(arrays[key]) == STEPS  # counted once per global step
            # every quantizer's effective range (what inference and export use)
            for i, name in enumerate(ref["quantizers"]):
                for end in ("min", "max"):
                    key = f"{config}/range{i:03d}_{end}"
                    np.testing.assert_allclose(arrays[key], single[key], rtol=1e-5, atol=1e-6,
                                               err_msg=f"{worker} {config}: {name} {end}")
            # accuracy: the training metrics (summed across workers by Keras) and the test set
            for metric in ("accuracy", "loss"):
                np.testing.assert_allclose(got["history"][metric], ref["history"][metric],
                                           rtol=1e-5, err_msg=f"{worker} {config}: {metric}")
            assert got["test_accuracy"] == ref["test_accuracy"]
