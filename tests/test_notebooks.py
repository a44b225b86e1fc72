"""Every notebook: follows the notebook contract, is stored clean, and runs end to end (small run).

Stage-specific assertions on what a notebook produced live beside the stage's unit tests
(test_env.py, test_data.py, test_train.py ...), using the same `executed` fixture.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from course_lib import COLAB_URL
from course_lib.runner import discover

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
def test_notebook_is_stored_without_outputs(path):
    for i, cell in enumerate(_cells(path)):
        if cell["cell_type"] == "code":
            assert not cell["outputs"] and cell["execution_count"] is None, f"cell {i} has stored output"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_end_to_end(path, executed):
    entry = executed(path.stem)
    assert entry["status"] == "ok", entry.get("error")
    assert entry["figures"], "the notebook recorded no figures"
