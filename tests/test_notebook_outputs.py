"""The notebooks are committed executed (outputs and figures, top to bottom, no errors), so that
they read where the code is hosted; `make notebooks` re-executes them at their full budget.
(tests/test_scripts.py executes them again on a small budget.)"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_committed_with_its_outputs(path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code" and c.source.strip()]
    counts = [c.execution_count for c in code]
    hint = f"{path.name}: run `make notebooks` and commit the executed notebook"
    assert counts == list(range(1, len(code) + 1)), hint
    outputs = [o for c in code for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"], hint
    assert any("image/png" in o.get("data", {}) for o in outputs), hint
