"""Executes every notebook in notebooks/ with nbclient; any cell error fails the test.

The kernel is this interpreter (``sys.executable``: the virtual environment's Python): a
``python3`` kernel spec pointing at it is written to a temporary directory placed first on
``JUPYTER_PATH``, so a ``python3`` kernel installed elsewhere (user or system Jupyter) cannot
be picked up instead. Notebooks run in a temporary working directory, which is also their
``TMPDIR``, so everything they write stays in pytest's temporary directory.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import nbclient  # the "test" extra installs nbclient, nbformat and ipykernel: no skipping
import nbformat
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO_ROOT / "notebooks").glob("*.ipynb"))
CELL_TIMEOUT_S = 600
#: Figures (PNG outputs) each notebook must show at least: the workflow's plots.
MIN_FIGURES = {"01_qat_quickstart": 2, "02_ptq_adaround": 1, "03_analyze_and_verify": 3}


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory):
    """Environment variables under which a ``python3`` kernel is ``sys.executable``."""
    root = tmp_path_factory.mktemp("jupyter")
    spec_dir = root / "kernels" / "python3"
    spec_dir.mkdir(parents=True)
    spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "Python 3 (tfquant tests)", "language": "python"}
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    paths = [str(root)] + ([os.environ["JUPYTER_PATH"]] if os.environ.get("JUPYTER_PATH")
                           else [])
    python_path = [str(REPO_ROOT)] + ([os.environ["PYTHONPATH"]]
                                      if os.environ.get("PYTHONPATH") else [])
    return {"JUPYTER_PATH": os.pathsep.join(paths),
            "PYTHONPATH": os.pathsep.join(python_path),
            "TF_CPP_MIN_LOG_LEVEL": "2",
            # figures inline, as in Jupyter (an MPLBACKEND=Agg from outside would hide them)
            "MPLBACKEND": "module://matplotlib_inline.backend_inline"}


def _execute(nb, workdir: Path, env: dict, monkeypatch) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("TMPDIR", str(workdir))  # the notebooks' tempfile.mkdtemp() folders
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=CELL_TIMEOUT_S,
                                     resources={"metadata": {"path": str(workdir)}})
    client.execute()


def test_there_are_notebooks():
    names = {p.name for p in NOTEBOOKS}
    assert {"01_qat_quickstart.ipynb", "02_ptq_adaround.ipynb", "03_analyze_and_verify.ipynb",
            "04_migrating_from_tfmot.ipynb"} <= names


def test_kernel_is_this_interpreter(kernel_env, tmp_path, monkeypatch):
    nb = nbformat.v4.new_notebook()
    nb.cells.append(nbformat.v4.new_code_cell(
        "import sys\nprint(sys.prefix)\nprint(sys.executable)"))
    _execute(nb, tmp_path, kernel_env, monkeypatch)
    prefix, executable = nb.cells[0].outputs[0]["text"].split()
    assert prefix == sys.prefix  # the same environment (a venv's prefix is the venv)
    assert os.path.abspath(executable) == os.path.abspath(sys.executable)


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, kernel_env, tmp_path, monkeypatch):
    nb = nbformat.read(path, as_version=4)
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"
    _execute(nb, tmp_path, kernel_env, monkeypatch)
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    errors = [o for o in outputs if o.get("output_type") == "error"]
    assert not errors
    figures = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(figures) >= MIN_FIGURES.get(path.stem, 0), [o.get("data", {}).keys()
                                                           for o in outputs]
    stderr = [o["text"] for o in outputs if o.get("name") == "stderr"]
    assert not [t for t in stderr if "Traceback" in t], stderr
