"""Executes every notebook in notebooks/ top to bottom on flowers-mini; any failing cell fails.

The notebooks read their parameters from VISIONTUNE_* environment variables,
which the kernel inherits from this process.
"""

import glob
import os

import pytest

from conftest import require_module

nbclient = require_module("nbclient")
nbformat = require_module("nbformat")

NOTEBOOKS = os.path.join(os.path.dirname(__file__), "..", "notebooks")


@pytest.mark.slow
@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(NOTEBOOKS, "*.ipynb"))),
                         ids=os.path.basename)
def test_notebook_runs_top_to_bottom(path, monkeypatch, tmp_path, flowers):
    monkeypatch.setenv("VISIONTUNE_DATA", flowers)
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
    monkeypatch.setenv("MPLBACKEND", "agg")  # No windows; `%matplotlib inline` still renders.
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # What the notebooks save goes away after.
    notebook = nbformat.read(path, as_version=4)
    assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code"), \
        f"{path} is stored with outputs; clear them before committing"
    parameters = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(parameters) == 1, f"{path} needs exactly one cell tagged 'parameters'"
    client = nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": NOTEBOOKS}})
    client.execute()  # Raises CellExecutionError, with the cell and traceback, on failure.


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(NOTEBOOKS, "*.ipynb"))),
                         ids=os.path.basename)
def test_notebook_defaults_to_data_a_user_can_get(path):
    """A user who cloned the repository has no ../shared: the default data must be theirs
    to get (tf_flowers, or the embedded digits), and only CI points it at flowers-mini."""
    notebook = nbformat.read(path, as_version=4)
    text = "\n".join(cell.source for cell in notebook.cells)
    assert "shared/datasets" not in text
    parameters = next(c for c in notebook.cells if "parameters" in c.metadata.get("tags", []))
    assert 'os.environ.get("VISIONTUNE_DATA", "tfds:tf_flowers")' in parameters.source
