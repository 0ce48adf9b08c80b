"""docs/python.md's walk-through runs in a real Jupyter kernel (nbclient + ipykernel): ``Pipeline.run()``
and ``Client.ask()`` inside the kernel's running event loop, where ``asyncio.run()`` fails."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_python_api import REPO, demo_dir, python_blocks

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")


def _stream(notebook: object) -> str:
    return "".join(out.get("text", "") for cell in notebook.cells  # type: ignore[attr-defined]
                   for out in cell.get("outputs", []) if out.get("output_type") == "stream")


def test_python_doc_runs_in_a_jupyter_kernel(tmp_path: Path) -> None:
    where = demo_dir(tmp_path)
    cells = [nbformat.v4.new_code_cell(block) for block in python_blocks(REPO / "docs" / "python.md")]
    # the kernel runs an event loop: a cell calling asyncio.run() fails there, run() does not
    cells.insert(0, nbformat.v4.new_code_cell(
        "import asyncio\nprint('loop running:', asyncio.get_running_loop().is_running())"))
    notebook = nbformat.v4.new_notebook(cells=cells)
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    client = nbclient.NotebookClient(notebook, timeout=240, kernel_name="python3",
                                     resources={"metadata": {"path": str(where)}})
    client.execute()
    outputs = _stream(notebook)
    assert "loop running: True" in outputs
    assert "RunResult(status='finished'" in outputs
    assert "jobs in the registry" in outputs
