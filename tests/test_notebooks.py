"""Every notebook: follows the notebook contract, is stored clean, and runs end to end (small run).

Stage-specific assertions on what a notebook produced live beside the stage's unit tests
(test_env.py, test_data_load.py, test_train.py ...), using the same `executed` fixture.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest

from course_lib import COLAB_URL
from course_lib.ops.runner import discover

NOTEBOOKS = discover(Path(__file__).resolve().parent.parent / "notebooks")


def _cells(path):
    return json.loads(path.read_text())["cells"]


def _src(cell) -> str:
    return "".join(cell["source"])


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_follows_the_contract(path):
    cells = _cells(path)
    intro = _src(cells[0])
    assert cells[0]["cell_type"] == "markdown" and intro.startswith("# ")
    assert "What you will learn" in intro and "Time" in intro and "Prerequisites" in intro
    assert COLAB_URL.format(name=path.stem) in intro, "Colab badge must point at this notebook's path"
    setup = _src(cells[1])
    assert cells[1]["cell_type"] == "code" and '"google.colab" in sys.modules' in setup
    tagged = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, "exactly one cell tagged `parameters`"
    for knob in ("MODEL", "RUN_DIR", "SEED", "SMALL_RUN"):
        assert f"{knob} =" in _src(tagged[0]), f"parameters cell lacks {knob}"
    for heading in ("Try it", "Summary", "Troubleshooting"):
        assert any(heading in _src(c) for c in cells if c["cell_type"] == "markdown"), heading


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_papermill_reads_every_parameter(path, caplog):
    """`papermill --help-notebook` lists the knobs; a comment with "=" in it hides one and logs a warning."""
    import logging

    import papermill

    with caplog.at_level(logging.WARNING, logger="papermill"):
        knobs = papermill.inspect_notebook(str(path))
    assert not [r.getMessage() for r in caplog.records if "Unable to parse" in r.getMessage()], (
        f"{path.name}: papermill cannot read a line of the parameters cell; keep '=' out of its comments")
    assert {"MODEL", "RUN_DIR", "SEED", "SMALL_RUN"} <= set(knobs)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_text_has_no_control_characters(path):
    """A "\\beta" written from a Python string without its backslash doubled arrives as a backspace and
    "eta": the LaTeX breaks without an error. Tabs and other control characters have no place in a cell."""
    found = [f"cell {i}: {ch!r} in ...{_src(c)[max(0, k - 20):k + 20]!r}..."
             for i, c in enumerate(_cells(path)) for k, ch in enumerate(_src(c)) if ord(ch) < 32 and ch != "\n"]
    assert not found, f"{path.name}: control characters (write LaTeX in a raw string): " + "; ".join(found[:5])


def _stored(cell) -> str:
    kinds = [o.get("ename", o["output_type"]) if o["output_type"] == "error" else o["output_type"]
             for o in cell.get("outputs", [])]
    return ", ".join(kinds) or f"execution_count {cell.get('execution_count')}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_stored_without_outputs(path):
    """nbstripout decides what a clean notebook is: its strip must leave the stored file unchanged."""
    import nbformat
    from nbstripout import strip_output

    stored = nbformat.read(path, as_version=4)
    clean = strip_output(copy.deepcopy(stored), keep_output=False, keep_count=False, keep_id=True)
    dirty = [f"cell {i} ({_stored(cell)})" for i, (cell, stripped) in enumerate(zip(stored.cells, clean.cells))
             if cell != stripped]
    assert not dirty and stored == clean, (
        f"{path.name} is stored with outputs: {'; '.join(dirty) or 'notebook metadata'}. "
        "Run `nbstripout notebooks/*.ipynb` before committing.")


def _setup_cell_of_the_contract() -> str:
    readme = (NOTEBOOKS[0].parent / "README.md").read_text()
    block = re.search(r"```python\n(   # Setup:.*?)\n   ```", readme, re.S).group(1)
    return "\n".join(line[3:] for line in block.splitlines())


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_setup_cell_is_the_one_in_the_contract(path):
    """Colab installs the tested versions through course_lib.colab; one copy of that cell, everywhere."""
    assert _src(_cells(path)[1]) == _setup_cell_of_the_contract(), (
        f"{path.name}: the setup cell differs from the one in notebooks/README.md; copy it from there")


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_end_to_end(path, executed):
    entry = executed(path.stem)
    assert entry["status"] == "ok", entry.get("error")
    assert entry["figures"], "the notebook recorded no figures"
